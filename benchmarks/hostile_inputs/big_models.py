"""torchvision's ``resnet18`` and ``vgg11_bn`` for issue 18's item 19, without needing torchvision.

:func:`build` returns torchvision's own constructor when torchvision imports, else the local copies
below, which follow torchvision's definitions (``torchvision/models/resnet.py`` and ``vgg.py``):
same modules, names, forward passes (``torch.flatten(x, 1)``, ``out += identity``) and random
initialisation (Kaiming-normal convolutions, BatchNorm at 1/0, VGG's Linear layers N(0, 0.01)), so
the state dicts have the same keys and shapes.
"""

from __future__ import annotations

import torch
from torch import nn

#: VGG configuration "A" (vgg11): output channels of each 3x3 convolution, "M" a 2x2 max pool
VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: two 3x3 conv + BN, identity or 1x1 conv + BN shortcut."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNet(nn.Module):
    """torchvision's ResNet with BasicBlocks: ``layers`` blocks per stage of ``widths`` channels
    (torchvision's 64, 128, 256, 512 by default; smaller for tests)."""

    def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 1000, widths=(64, 128, 256, 512)):
        super().__init__()
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


class VGG(nn.Module):
    """torchvision's VGG: ``features`` (ending in ``channels``), 7x7 adaptive average pool, 3-layer
    classifier of ``hidden`` units with dropout (torchvision's 512 and 4096 by default)."""

    def __init__(self, features: nn.Module, num_classes: int = 1000, dropout: float = 0.5, channels: int = 512,
                 hidden: int = 4096):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(channels * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        x = torch.flatten(x, 1)
        return self.classifier(x)


def vgg_features(cfg=VGG11_CFG, batch_norm: bool = True) -> nn.Sequential:
    """The ``make_layers`` of torchvision: 3x3 conv (+ BN) + ReLU per number, 2x2 max pool per "M"."""
    layers: list = []
    channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        layers.append(nn.Conv2d(channels, v, kernel_size=3, padding=1))
        layers += [nn.BatchNorm2d(v), nn.ReLU(inplace=True)] if batch_norm else [nn.ReLU(inplace=True)]
        channels = v
    return nn.Sequential(*layers)


def local_resnet18(num_classes: int = 10) -> ResNet:
    """The local copy of ``torchvision.models.resnet18(num_classes=...)`` (random init)."""
    return ResNet((2, 2, 2, 2), num_classes)


def local_vgg11_bn(num_classes: int = 10) -> VGG:
    """The local copy of ``torchvision.models.vgg11_bn(num_classes=...)`` (random init)."""
    return VGG(vgg_features(VGG11_CFG, batch_norm=True), num_classes)


LOCAL = {"resnet18": local_resnet18, "vgg11_bn": local_vgg11_bn}


def build(name: str, num_classes: int = 10) -> tuple:
    """``(model, source)``: torchvision's ``name`` (random init) when torchvision imports, else the
    local copy; ``source`` says which (``"torchvision X.Y"`` or ``"local copy (torchvision missing)"``).

    Raises:
        KeyError: ``name`` is not ``resnet18`` or ``vgg11_bn``.
    """
    if name not in LOCAL:
        raise KeyError(f"unknown model '{name}'; choose from {', '.join(LOCAL)}")
    try:
        import torchvision
    except ImportError:
        return LOCAL[name](num_classes), "local copy (torchvision missing)"
    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes), \
        f"torchvision {torchvision.__version__}"
