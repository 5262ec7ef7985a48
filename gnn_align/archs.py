"""The architecture families gnn_align works with, defined once (tests, zoos, losses use these).

Widths and depths are constructor arguments; nothing here bakes in a weight shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class Sine(nn.Module):
    """``sin(w0 * x)``, the SIREN activation."""

    def __init__(self, w0: float = 30.0):
        super().__init__()
        self.w0 = float(w0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"


#: activation name -> module class: the one table of activation names in gnn_align (the architectures'
#: ``activation`` argument, :func:`activation_name`, the names :class:`~gnn_align.nn.ProbePass` runs)
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh,
                                           "sigmoid": nn.Sigmoid, "leaky_relu": nn.LeakyReLU, "sine": Sine}
#: module class -> activation name, the reverse of :data:`ACTIVATIONS`
ACTIVATION_NAMES: dict[type[nn.Module], str] = {cls: name for name, cls in ACTIVATIONS.items()}
#: the names the architectures other than SIREN take (``sine`` needs SIREN's initialisation)
_ARCH_ACTIVATIONS = sorted(set(ACTIVATIONS) - {"sine"})


def activation_name(module: nn.Module) -> str | None:
    """The :data:`ACTIVATIONS` name of an activation module, or ``None`` for any other module.

    A module of any class named ``Sine`` is ``sine`` (SIREN code often defines its own).
    """
    cls = type(module)
    return ACTIVATION_NAMES.get(cls, "sine" if cls.__name__ == Sine.__name__ else None)


def _act(name: str) -> nn.Module:
    if name not in _ARCH_ACTIVATIONS:
        raise ValueError(f"unknown activation '{name}'; choose from {_ARCH_ACTIVATIONS}"
                         + (" (use SIREN for 'sine')" if name == "sine" else ""))
    return ACTIVATIONS[name]()


def _conv(dim: int):
    if dim not in (1, 2):
        raise ValueError(f"dim must be 1 or 2, got {dim}")
    return (nn.Conv1d, nn.BatchNorm1d) if dim == 1 else (nn.Conv2d, nn.BatchNorm2d)


class MLP(nn.Sequential):
    """``Linear -> [LayerNorm] -> act`` per hidden layer, then a Linear head.

    Args:
        in_features: input size.
        hidden: widths of the hidden layers (may be empty).
        out_features: output size.
        activation: one of relu, gelu, silu, tanh, sigmoid, leaky_relu.
        layernorm: put a LayerNorm after every hidden Linear.
        dropout: dropout probability after every hidden activation (0: no Dropout module).
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int,
                 activation: str = "relu", layernorm: bool = False, dropout: float = 0.0):
        layers: list = []
        d = in_features
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if layernorm:
                layers.append(nn.LayerNorm(h))
            layers.append(_act(activation))
            if dropout:
                layers.append(nn.Dropout(dropout))
            d = h
        layers.append(nn.Linear(d, out_features))
        super().__init__(*layers)


class CNN(nn.Sequential):
    """1-D or 2-D convolutions (``conv -> act``), then global average pooling or flatten, then Linear.

    Args:
        in_channels: input channels.
        channels: output channels of each conv layer.
        num_classes: output size.
        dim: 1 (inputs ``(N, C, L)``) or 2 (``(N, C, H, W)``).
        kernel_size: odd kernel size (padding keeps the spatial size unless a stride is > 1).
        stride: stride of every conv, or one stride per conv layer.
        head: ``"gap"`` (global average pooling) or ``"flatten"`` (needs ``input_size``).
        input_size: spatial size of the input (L, or H = W), for the flatten head.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], num_classes: int, dim: int = 2,
                 kernel_size: int = 3, stride: int | Sequence[int] = 1, head: str = "gap",
                 input_size: int | None = None, activation: str = "relu"):
        conv, _ = _conv(dim)
        layers: list = []
        c, size = in_channels, input_size
        strides = [stride] * len(channels) if isinstance(stride, int) else list(stride)
        if len(strides) != len(channels):
            raise ValueError(f"got {len(strides)} strides for {len(channels)} conv layers")
        for ch, s in zip(channels, strides, strict=True):
            layers += [conv(c, ch, kernel_size, stride=s, padding=kernel_size // 2), _act(activation)]
            c = ch
            if size is not None:
                size = (size + 2 * (kernel_size // 2) - kernel_size) // s + 1
        if head == "gap":
            pool = nn.AdaptiveAvgPool1d(1) if dim == 1 else nn.AdaptiveAvgPool2d(1)
            layers += [pool, nn.Flatten(), nn.Linear(c, num_classes)]
        elif head == "flatten":
            if size is None:
                raise ValueError("head='flatten' needs input_size")
            layers += [nn.Flatten(), nn.Linear(c * size ** dim, num_classes)]
        else:
            raise ValueError(f"head must be 'gap' or 'flatten', got {head!r}")
        super().__init__(*layers)


class ResidualMLP(nn.Module):
    """``h = Linear(x)``; ``num_blocks`` times ``h = h + Linear(act(Linear(act(h))))``; Linear head.

    All blocks share one residual stream, so their outputs form one permutation group.
    """

    def __init__(self, in_features: int, width: int, num_blocks: int, out_features: int,
                 hidden: int | None = None, activation: str = "relu"):
        super().__init__()
        hidden = width if hidden is None else hidden
        self.stem = nn.Linear(in_features, width)
        self.blocks = nn.ModuleList(nn.Sequential(_act(activation), nn.Linear(width, hidden),
                                                  _act(activation), nn.Linear(hidden, width))
                                    for _ in range(num_blocks))
        self.act = _act(activation)
        self.head = nn.Linear(width, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(self.act(h))


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``; the shortcut is the identity, or a
    1x1 conv + BatchNorm (projection) when channels or stride change."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, dim: int = 2):
        super().__init__()
        conv, bn = _conv(dim)
        self.conv1, self.bn1 = conv(c_in, c_out, 3, stride=stride, padding=1, bias=False), bn(c_out)
        self.conv2, self.bn2 = conv(c_out, c_out, 3, padding=1, bias=False), bn(c_out)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(conv(c_in, c_out, 1, stride=stride, bias=False), bn(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet(nn.Module):
    """Residual CNN with BatchNorm: stem ``conv-bn-relu``, one :class:`BasicBlock` per entry of
    ``channels`` (stride 2 where the width changes), global average pooling, Linear head."""

    def __init__(self, in_channels: int, stem_channels: int, channels: Sequence[int], num_classes: int,
                 dim: int = 2):
        super().__init__()
        conv, bn = _conv(dim)
        self.stem = nn.Sequential(conv(in_channels, stem_channels, 3, padding=1, bias=False),
                                  bn(stem_channels), nn.ReLU())
        blocks, c = [], stem_channels
        for ch in channels:
            blocks.append(BasicBlock(c, ch, stride=1 if ch == c else 2, dim=dim))
            c = ch
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool1d(1) if dim == 1 else nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class SIREN(nn.Sequential):
    """Sinusoidal representation network (Sitzmann et al., 2020): ``Linear -> Sine`` per hidden
    layer, linear output, with SIREN's initialisation (first layer U(-1/n, 1/n), others
    U(-sqrt(6/n)/w0, sqrt(6/n)/w0))."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, w0: float = 30.0):
        layers: list = []
        d = in_features
        for h in hidden:
            layers += [nn.Linear(d, h), Sine(w0)]
            d = h
        layers.append(nn.Linear(d, out_features))
        super().__init__(*layers)
        self.w0 = float(w0)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        linears = [m for m in self if isinstance(m, nn.Linear)]
        for i, m in enumerate(linears):
            n = m.in_features
            bound = 1.0 / n if i == 0 else math.sqrt(6.0 / n) / self.w0
            m.weight.uniform_(-bound, bound, generator=generator)
            m.bias.uniform_(-1.0 / math.sqrt(n), 1.0 / math.sqrt(n), generator=generator)


class TransformerBlock(nn.Module):
    """One encoder block of :class:`Transformer`: multi-head self-attention and a ReLU MLP, each with a
    residual connection; pre-LN (``x + f(LN(x))``) or post-LN (``LN(x + f(x))``).

    Written by hand (q/k/v/output Linears, heads by ``unflatten``), so it is vmap-friendly and traced
    by :func:`gnn_align.spec_from_module` with its heads as permutation groups.
    """

    def __init__(self, d_model: int, heads: int, mlp: int, norm_first: bool = True):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} is not a multiple of heads={heads}")
        self.heads, self.head_dim, self.norm_first = heads, d_model // heads, bool(norm_first)
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.q, self.k, self.v, self.o = (nn.Linear(d_model, d_model) for _ in range(4))
        self.fc1, self.act, self.fc2 = nn.Linear(d_model, mlp), nn.ReLU(), nn.Linear(mlp, d_model)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)

    def attention(self, y: torch.Tensor) -> torch.Tensor:
        """``softmax(q kᵀ / √d) v`` per head, heads concatenated, then the output projection; y (B, T, d_model)."""
        q, k, v = self._split(self.q(y)), self._split(self.k(y)), self._split(self.v(y))
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        return self.o((a @ v).transpose(1, 2).reshape(y.shape[0], y.shape[1], -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = x + self.attention(self.ln1(x))
            return x + self.fc2(self.act(self.fc1(self.ln2(x))))
        x = self.ln1(x + self.attention(x))
        return self.ln2(x + self.fc2(self.act(self.fc1(x))))


class Transformer(nn.Module):
    """A small encoder-only transformer classifier on token sequences ``(N, tokens, in_features)``.

    Token embedding (Linear), a learned positional embedding ``pos`` (1, tokens, d_model) added to the
    tokens, ``blocks`` :class:`TransformerBlock` s, a final LayerNorm (pre-LN only), the mean over
    tokens and a Linear head. No ``nn.MultiheadAttention``: it trains under ``torch.func.vmap``.

    Args:
        in_features: features per input token.
        tokens: sequence length (the positional embedding's length).
        d_model: width of the residual stream.
        heads: attention heads (``d_model`` must be a multiple).
        blocks: number of encoder blocks.
        mlp: hidden width of each block's MLP.
        num_classes: output size.
        norm_first: pre-LN blocks (and a final LayerNorm) if true, post-LN blocks otherwise.
    """

    def __init__(self, in_features: int, tokens: int, d_model: int, heads: int, blocks: int, mlp: int,
                 num_classes: int, norm_first: bool = True):
        super().__init__()
        self.embed = nn.Linear(in_features, d_model)
        self.pos = nn.Parameter(torch.zeros(1, tokens, d_model))
        self.blocks = nn.ModuleList(TransformerBlock(d_model, heads, mlp, norm_first) for _ in range(blocks))
        self.norm = nn.LayerNorm(d_model) if norm_first else nn.Identity()
        self.head = nn.Linear(d_model, num_classes)
        self.reset_pos()

    @torch.no_grad()
    def reset_pos(self, generator: torch.Generator | None = None, std: float = 0.02) -> None:
        """Draw the positional embedding from N(0, std²)."""
        self.pos.normal_(0.0, std, generator=generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(1))


FAMILIES = {"mlp": MLP, "cnn": CNN, "residual_mlp": ResidualMLP, "resnet": ResNet, "siren": SIREN,
            "transformer": Transformer}


def build_arch(config: dict) -> nn.Module:
    """Instantiate an architecture from a plain config ``{"family": name, **constructor kwargs}``.

    Raises:
        ValueError: naming an unknown family or a bad keyword.
    """
    config = dict(config)
    family = config.pop("family", None)
    if family not in FAMILIES:
        raise ValueError(f"unknown architecture family {family!r}; choose from {sorted(FAMILIES)}")
    try:
        return FAMILIES[family](**config)
    except TypeError as e:
        raise ValueError(f"bad arguments for architecture family '{family}': {e}") from None


@torch.no_grad()
def reset_parameters(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise every parameter of ``module`` from ``generator`` (PyTorch's default schemes:
    Kaiming-uniform weights and fan-in-uniform biases for Linear/Conv; ones/zeros for norms; SIREN's
    own scheme for :class:`SIREN`; N(0, 0.02²) for a :class:`Transformer`'s positional embedding), and
    reset BatchNorm running statistics. Deterministic in the
    generator's state, independent of the global RNG."""
    if isinstance(module, SIREN):
        module.reset_parameters(generator)
        return module
    for m in module.modules():
        if isinstance(m, Transformer):
            m.reset_pos(generator)
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                m.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
            if getattr(m, "weight", None) is not None:
                m.weight.fill_(1.0)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
    return module
