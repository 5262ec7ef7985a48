"""Shared fixtures: one tiny network per architecture family, in float64, and tiny zoos built once
per test session (shared helpers that are not fixtures are in ``tests/helpers.py``)."""

import os

import pytest
import torch
from torch import nn

from datasets.build import build
from datasets.recipes import get_recipe
from gnn_align.archs import CNN, MLP, SIREN, ResidualMLP, ResNet

# One torch thread in the test process and in the subprocesses it starts (unless OMP_NUM_THREADS says
# otherwise): the tests use tiny networks, for which a second thread gains nothing, and on a busy
# 2-core machine two threads per process oversubscribe the cores (tests/test_zoo_build.py alone took
# 4 min with torch's default of 2 threads and 15 s with 1).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def _randomize_norms(module: nn.Module, gen: torch.Generator) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
    return module


# name -> (factory, input shape without batch)
FAMILIES = {
    "mlp": (lambda: MLP(5, [4, 6], 3), (5,)),
    "mlp_layernorm": (lambda: MLP(5, [4, 6], 3, layernorm=True, activation="gelu"), (5,)),
    "cnn2d_gap": (lambda: CNN(2, [3, 4], 3, dim=2), (2, 6, 6)),
    "cnn1d_flatten": (lambda: CNN(1, [3, 4], 3, dim=1, kernel_size=5, head="flatten", input_size=8), (1, 8)),
    "residual_mlp": (lambda: ResidualMLP(5, 4, 2, 3, hidden=6), (5,)),
    "resnet2d_bn": (lambda: ResNet(2, 3, [3, 5], 3, dim=2), (2, 8, 8)),
    "resnet1d_bn": (lambda: ResNet(1, 3, [3, 4], 3, dim=1), (1, 8)),
    "siren": (lambda: SIREN(1, [4, 5], 1, w0=3.0), (1,)),
}


@pytest.fixture(autouse=True)
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def make_family(name: str, seed: int = 0):
    """(module in eval mode, example input of batch 7), deterministic in ``seed``."""
    factory, shape = FAMILIES[name]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    module = _randomize_norms(factory(), gen).eval()
    return module, torch.randn((7,) + shape, generator=gen)


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    module, x = make_family(request.param)
    return request.param, module, x


@pytest.fixture(scope="session")
def tiny_zoos(tmp_path_factory):
    """``tiny_zoos(name, splits)``: the folder of recipe ``name``'s tiny version built with ``splits``,
    built once per session and shared by every test that asks for it, so tests must only read it."""
    cache = {}

    def get(name: str, splits: dict):
        key = (name, tuple(sorted(splits.items())))
        if key not in cache:
            recipe = dict(get_recipe(name, tiny=True), splits=dict(splits))
            cache[key] = build(recipe, tmp_path_factory.mktemp(f"zoo-{name}"), progress=False)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def tiny_mlp_test_zoo(tiny_zoos):
    """The tiny digits-mlp zoo with every network in the test split (pairs to benchmark)."""
    return tiny_zoos("digits-mlp", {"test": 1.0})


@pytest.fixture(scope="session")
def tiny_mlp_train_zoo(tiny_zoos):
    """``(root, name)`` of the tiny digits-mlp zoo split half train, half val (what train.py reads)."""
    zoo = tiny_zoos("digits-mlp", {"train": 0.5, "val": 0.5})
    return zoo.parent, zoo.name
