"""Issue 22, item 1: the learned aligner reads any kernel size and any flatten head. A kernel (or
flattened feature map) longer than the aligner's ``edge_dim`` is pooled, within each edge and with its
sum kept, to the largest layout that fits (``to_graph(..., fit="pool")``); the default ``to_graph``
keeps its exact round trip, a pooled graph is for reading only, and ``align`` warns instead of
refusing."""

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

import gnn_align as ga
from gnn_align.graph import kernel_layout, pool_matrix, pooled_layout, pooling_plan, relabel
from gnn_align.pretrained import load_pretrained
from gnn_align.testing import assert_perm_equivariant, default_atol

from .conftest import FAMILIES, make_family

BIG = Path(__file__).resolve().parents[1] / "benchmarks" / "hostile_inputs" / "big_models.py"
REFUSAL = "edges of at most"  # the refusal these models met before issue 22


def _big():
    spec = importlib.util.spec_from_file_location("big_models", BIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SmallVGG(nn.Module):
    """VGG-like: two 3x3 conv layers (BatchNorm, ReLU, a max pool) whose last map, 7x7, is flattened into
    a Linear classifier."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.classifier = nn.Sequential(nn.Linear(width * 49, 16), nn.ReLU(), nn.Linear(16, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def _stem7():
    """ResNet-18-like: torchvision's 7x7 stride-2 stem, max pool and BasicBlocks (benchmarks' local copy)."""
    return _big().ResNet((1, 1, 1, 1), 10, widths=(4, 8, 8, 8))


def _pair(factory, seed: int = 0):
    torch.manual_seed(seed)
    a = factory().eval()
    torch.manual_seed(seed + 1)
    return a, factory().eval()


def _randomize_bn(net: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return net


def test_pool_matrix_keeps_the_kernel_sum_and_a_constant_input_response():
    """Pooling by area splits every input value among the output cells it overlaps: each column of the map sums to 1,
    so a 7x7 kernel's 3x3 pooling has its sum, and a 7x7 conv and its pooled 3x3 give the same response to a
    spatially constant input (away from the padding)."""
    for layout, target in [((7, 7), (3, 3)), ((5, 5), (3, 3)), ((49,), (10,)), ((11,), (10,)), ((3, 7), (3, 3))]:
        m = pool_matrix(layout, target)
        assert m.shape == (target[0] * (target[1] if len(target) > 1 else 1), torch.tensor(layout).prod())
        assert torch.allclose(m.sum(0), torch.ones(m.shape[1], dtype=torch.float64))
    w = torch.randn(4, 3, 7, 7)
    pooled = (w.reshape(12, 49) @ pool_matrix((7, 7), (3, 3)).T).reshape(4, 3, 3, 3)
    assert torch.allclose(pooled.sum((2, 3)), w.sum((2, 3)))
    x = torch.full((1, 3, 15, 15), 0.7)
    big, small = nn.functional.conv2d(x, w)[..., 4, 4], nn.functional.conv2d(x, pooled)[..., 6, 6]
    assert torch.allclose(big, small)
    # 7x7 -> 3x3 is symmetric: a centred kernel stays centred
    assert torch.allclose(pool_matrix((7, 7), (3, 3)), pool_matrix((7, 7), (3, 3)).flip(0).flip(1))


def test_layouts_of_kernels_and_flatten_heads():
    """The layout of an edge: a conv kernel's spatial shape, a flattened 2-D map as a square, a flattened 1-D map as a
    line; pooled to 3x3 (2-D) or edge_dim values (1-D) when longer than edge_dim, else kept."""
    x = torch.randn(2, 3, 14, 14)
    net = SmallVGG()
    st = ga.spec_from_module(net, x).structure
    layouts = {ly.weight: kernel_layout(st, ly) for ly in st.layers}
    assert layouts == {"features.0.weight": (3, 3), "features.4.weight": (3, 3), "classifier.0.weight": (7, 7),
                       "classifier.2.weight": (1,)}
    net1d, x1d = make_family("cnn1d_flatten")
    st1d = ga.spec_from_module(net1d, x1d).structure
    assert [kernel_layout(st1d, ly) for ly in st1d.layers] == [(5,), (5,), (8,)]
    assert pooled_layout((7, 7), 10) == (3, 3) and pooled_layout((3, 3), 10) == (3, 3)
    assert pooled_layout((49,), 10) == (10,) and pooled_layout((5, 5), 9) == (3, 3)
    assert pooled_layout((7, 7), 8) == (1, 1)
    assert pooling_plan(ga.spec_from_module(net, x), 10) == {"classifier.0.weight": ((7, 7), (3, 3))}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_pool_leaves_networks_that_fit_as_they_were(name):
    """On a network whose kernels all fit edge_dim, fit='pool' draws the same graph as the default (and from_graph
    still inverts it)."""
    net, x = make_family(name)
    spec = ga.spec_from_module(net, x)
    state = net.state_dict()
    exact, pooled = ga.to_graph(state, spec, edge_dim=10), ga.to_graph(state, spec, edge_dim=10, fit="pool")
    assert pooled.pooled == []
    assert torch.equal(exact.edge_attr, pooled.edge_attr) and torch.equal(exact.kernel_cols, pooled.kernel_cols)
    assert all(torch.equal(v, state[k]) for k, v in ga.from_graph(pooled, spec).items())


def test_default_to_graph_still_refuses_long_kernels_and_from_graph_refuses_a_pooled_graph():
    """The exact path is untouched: to_graph refuses edge_dim below the longest kernel; a pooled graph has no exact
    inverse and from_graph says so in one line."""
    net = _stem7().eval()
    spec = ga.spec_from_module(net, torch.randn(2, 3, 16, 16))
    state = net.state_dict()
    with pytest.raises(ga.StateDictError, match="shorter than the longest kernel"):
        ga.to_graph(state, spec, edge_dim=10)
    g = ga.to_graph(state, spec, edge_dim=10, fit="pool")
    assert g.edge_attr.shape[1] == 10 and g.pooled == ["conv1.weight 7x7 -> 3x3"]
    with pytest.raises(ga.StateDictError, match="fit='pool' \\(conv1.weight 7x7 -> 3x3\\).*reading only") as e:
        ga.from_graph(g, spec)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="fit must be"):
        ga.to_graph(state, spec, fit="crop")
    # the exact round trip of the same network
    assert all(torch.equal(v, state[k]) for k, v in ga.from_graph(ga.to_graph(state, spec), spec).items())


@pytest.mark.parametrize("factory", [_stem7, SmallVGG], ids=["stem7x7", "vgg_flatten7x7"])
def test_pooled_graphs_are_permutation_equivariant(factory):
    """Pooling acts within each edge, so it commutes with relabelling neurons: the pooled graph of the permuted network
    is the relabelled pooled graph, and the shipped aligner's encoder is equivariant on it."""
    net = _randomize_bn(factory().eval(), 0)
    spec = ga.spec_from_module(net, torch.randn(2, 3, 14, 14))
    state = net.state_dict()
    perm = ga.random_permutation(spec, torch.Generator().manual_seed(1))
    # float64 and the shipped tolerance: pooling is a matrix product, whose summation order (and so its last
    # bit) may differ between the permuted and the unpermuted layout on some CPUs
    state64 = {k: v.double() if v.is_floating_point() else v for k, v in state.items()}
    lhs = ga.to_graph(ga.apply_permutation(state64, perm, spec), spec, edge_dim=10, fit="pool")
    rhs = relabel(ga.to_graph(state64, spec, edge_dim=10, fit="pool"), perm)
    tol = default_atol(torch.float64)
    assert lhs.edge_attr.dtype == torch.float64
    torch.testing.assert_close(lhs.edge_attr, rhs.edge_attr, rtol=0, atol=tol)
    torch.testing.assert_close(lhs.x, rhs.x, rtol=0, atol=tol)
    wrong = relabel(ga.to_graph(state64, spec, edge_dim=10, fit="pool"), ga.identity_permutation(spec))
    assert (lhs.edge_attr.shape != wrong.edge_attr.shape
            or (lhs.edge_attr - wrong.edge_attr).abs().max() > 1e3 * tol)  # negative control: not relabelled
    aligner = load_pretrained()
    graph = aligner.graph({k: v.float() for k, v in state.items()}, spec)
    assert_perm_equivariant(aligner.encoder, graph, spec, atol=1e-4)


@pytest.mark.parametrize("factory", [_stem7, SmallVGG], ids=["stem7x7", "vgg_flatten7x7"])
@pytest.mark.parametrize("method", ["gnn", "gnn+wm"])
def test_align_gnn_reads_7x7_kernels_and_flatten_heads_with_a_warning(factory, method):
    """A 7x7 stem and a 7x7 map flattened into a Linear were refused by the learned aligner; now align(..., 'gnn') and
    'gnn+wm' warn (naming what was pooled) and return a function-preserving alignment (align checks it)."""
    a, b = _pair(lambda: _randomize_bn(factory(), 0))
    x = torch.randn(4, 3, 14, 14)
    with pytest.warns(UserWarning, match=r"were pooled for reading.*7x7 -> 3x3") as rec:
        res = ga.align(a, b, method, example_input=x)
    assert not any(REFUSAL in str(w.message) for w in rec)
    assert res.max_abs_diff <= 1e-9 and set(res.perm) == set(res.spec.group_sizes)
    if method == "gnn+wm":
        assert res.info["kept"] in ("gnn", "gnn+wm")


@pytest.mark.parametrize("factory", [_stem7, SmallVGG], ids=["stem7x7", "vgg_flatten7x7"])
def test_gnn_recovers_a_planted_permutation_through_pooled_kernels(factory):
    """B = A with its neurons relabelled: the shipped aligner, reading pooled kernels, finds the relabelling (the
    pooled graphs of A and B are relabellings of one another)."""
    net = _randomize_bn(factory().eval(), 0)
    spec = ga.spec_from_module(net, torch.randn(2, 3, 14, 14))
    pi = ga.random_permutation(spec, torch.Generator().manual_seed(5))
    b = ga.apply_permutation(net.state_dict(), pi, spec)
    with pytest.warns(UserWarning, match="pooled"):
        res = ga.align(net, b, "gnn", example_input=torch.randn(4, 3, 14, 14))
    target = ga.invert_permutation(pi)
    assert all(torch.equal(res.perm[g], target[g]) for g in spec.group_sizes)
