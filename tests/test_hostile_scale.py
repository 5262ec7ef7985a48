"""Issue 18, item 19: torchvision-sized models. Small copies of torchvision's VGG and ResNet
(benchmarks/hostile_inputs/big_models.py) are traced and aligned; weight matching shows its
progress once it runs long and solves a group's assignment again only when its inputs changed;
with torchvision installed, its own resnet18 aligns (skipped where torchvision is missing)."""

import importlib
import importlib.util
from pathlib import Path

import pytest
import torch

import gnn_align as ga
from gnn_align.archs import MLP
from gnn_align.baselines import weight_matching
from gnn_align.ot import hungarian
from gnn_align.spec import Axis

from .conftest import FAMILIES, make_family

BIG = Path(__file__).resolve().parents[1] / "benchmarks" / "hostile_inputs" / "big_models.py"
WM = importlib.import_module("gnn_align.baselines.weight_matching")  # the module (the package exports the function)


@pytest.fixture(scope="module")
def big():
    spec = importlib.util.spec_from_file_location("big_models", BIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pair(factory, seed=0):
    torch.manual_seed(seed)
    a = factory().eval()
    torch.manual_seed(seed + 1)
    return a, factory().eval()


def test_item19_torchvision_style_vgg_and_resnet_are_traced_and_aligned(big):
    """Small copies of torchvision's VGG (7x7 adaptive average pool of a 1x1 map, torch.flatten, dropout) and ResNet
    (BasicBlocks with `out += identity`, 1x1 downsample) get a spec (the classifier reads 49 entries per channel) and
    align with wm without changing B's function."""
    x = torch.randn(4, 3, 16, 16)
    vgg = lambda: big.VGG(big.vgg_features((8, "M", 16, "M", 16, "M", 16, "M")), 10, channels=16, hidden=32)
    a, b = _pair(vgg)
    spec = ga.spec_from_module(a, x)
    assert spec.axes["classifier.0.weight"] == (Axis("classifier.0"), Axis("features.12", 49))
    assert list(spec.group_sizes.values()) == [8, 16, 16, 16, 32, 32]
    res = ga.align(a, b, "wm", example_input=x)
    assert res.max_abs_diff <= 1e-9 and any(not torch.equal(p, torch.arange(len(p))) for p in res.perm.values())
    a, b = _pair(lambda: big.ResNet((2, 1, 1, 1), 10, widths=(4, 8, 8, 16)))
    spec = ga.spec_from_module(a, x)
    # stem with stage 1's skips; per block its conv1; per later stage its skips
    assert len(spec.group_sizes) == 1 + 2 + 2 + 2 + 2
    assert Axis("layer2.0.conv2") in spec.axes["layer2.0.downsample.0.weight"]
    assert ga.align(a, b, "wm", example_input=x).max_abs_diff <= 1e-9


def test_item19_weight_matching_shows_progress_when_it_runs_long(monkeypatch, capsys):
    """align(..., "wm") prints nothing when weight matching ends within PROGRESS_AFTER seconds; past that (here set to
    0) a progress bar names weight matching on stderr; progress=False never shows one, progress=True always."""
    a, x = make_family("resnet2d_bn", 0)
    b, _ = make_family("resnet2d_bn", 1)
    quiet = ga.align(a, b, "wm", example_input=x)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(WM, "PROGRESS_AFTER", 0.0, raising=False)
    shown = ga.align(a, b, "wm", example_input=x)
    out = capsys.readouterr()
    assert "weight matching" in out.err and "assignments" in out.err and out.out == ""
    assert all(torch.equal(shown.perm[g], p) for g, p in quiet.perm.items())
    spec, sa, sb = shown.spec, a.state_dict(), b.state_dict()
    weight_matching(sa, sb, spec, progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(WM, "PROGRESS_AFTER", 1e9, raising=False)
    weight_matching(sa, sb, spec, progress=True)
    assert "weight matching" in capsys.readouterr().err


def _every_group_every_sweep(a, b, spec, generator):
    """Weight matching as it was: every group's assignment solved again in every sweep."""
    perm, groups, learn = ga.identity_permutation(spec), list(spec.group_sizes), set(spec.learnable_keys())
    flat = lambda t, ax, n: t.movedim(ax, 0).reshape(n, -1).to(torch.float64)
    for it in range(100):
        changed = False
        for gi in torch.randperm(len(groups), generator=generator).tolist():
            g, n = groups[gi], spec.group_sizes[groups[gi]]
            pb = ga.apply_permutation(b, {h: p for h, p in perm.items() if h != g}, spec)
            cost = torch.zeros(n, n, dtype=torch.float64)
            for k, ax, _ in spec.acts_on(g):
                if k in learn:
                    cost += flat(a[k], ax, n) @ flat(pb[k], ax, n).T
            new, rows = hungarian(cost), torch.arange(n)
            if cost[rows, new].sum() > cost[rows, perm[g]].sum() + 1e-12 * cost.abs().max():
                perm[g], changed = new, True
        if not changed:
            return perm, it + 1
    return perm, 100


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_item19_weight_matching_solves_an_assignment_again_only_when_its_inputs_changed(name, monkeypatch):
    """Weight matching returns what solving every group in every sweep returns (same permutation, same sweeps) while
    solving fewer assignments: a group none of whose neighbours changed is not solved again (a one-hidden-layer MLP:
    once, not once per sweep)."""
    a, x = make_family(name, 0)
    b, _ = make_family(name, 1)
    spec = ga.spec_from_module(a, x)
    sa, sb = a.state_dict(), b.state_dict()
    calls = []
    monkeypatch.setattr(WM, "hungarian", lambda cost: calls.append(cost.shape) or hungarian(cost))
    res = weight_matching(sa, sb, spec, generator=torch.Generator().manual_seed(3))
    want, sweeps = _every_group_every_sweep(sa, sb, spec, torch.Generator().manual_seed(3))
    assert res.iterations == sweeps >= 2 and all(torch.equal(res.perm[g], p) for g, p in want.items())
    assert len(calls) < len(spec.group_sizes) * sweeps


def test_item19_one_hidden_layer_is_solved_once(monkeypatch):
    """On a one-hidden-layer MLP, weight matching solves the one assignment once (it reads no other group), not once per
    sweep."""
    calls = []
    monkeypatch.setattr(WM, "hungarian", lambda cost: calls.append(cost.shape) or hungarian(cost))
    net = MLP(5, [8], 3)
    sa = net.state_dict()
    sb = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) for k, v in sa.items()}
    res = weight_matching(sa, sb, ga.spec_from_module(net, torch.randn(3, 5)))
    assert res.iterations == 2 and len(calls) == 1 and res.objective[1] > res.objective[0]


@pytest.mark.slow
def test_item19_torchvision_resnet18_aligns(big):
    """With torchvision installed: the local copies have its resnet18/vgg11_bn state-dict keys and shapes, and weight
    matching aligns two random resnet18 (10 classes) without changing B's function. Skipped where torchvision is
    missing."""
    tv = pytest.importorskip("torchvision")
    for name in ("resnet18", "vgg11_bn"):
        theirs = getattr(tv.models, name)(weights=None, num_classes=10).state_dict()
        ours = big.LOCAL[name](10).state_dict()
        assert [(k, v.shape) for k, v in theirs.items()] == [(k, v.shape) for k, v in ours.items()]
    a, b = _pair(lambda: tv.models.resnet18(weights=None, num_classes=10).float())
    res = ga.align(a.state_dict(), b.state_dict(), "wm", module=a)
    assert res.max_abs_diff <= 1e-4 and len(res.spec.group_sizes) == 12
