"""gnn_align.align / merge: every method, recovery of planted permutations, the function check,
BatchNorm handling, bad models, and the pretrained aligner's coverage warning."""

import warnings

import pytest
import torch

import gnn_align as ga
from gnn_align import apply_permutation, invert_permutation, random_permutation, spec_from_module
from gnn_align.api import ALIGN_METHODS, average_states
from gnn_align.archs import CNN, MLP, ResNet
from gnn_align.errors import StateDictError
from gnn_align.metrics import exact_recovery
from gnn_align.pretrained import available, coverage_problems, load_pretrained, signature


def _planted(net, x, seed=0):
    spec = spec_from_module(net, x)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    perm = random_permutation(spec, torch.Generator().manual_seed(seed))
    return spec, state, apply_permutation(state, perm, spec), perm


@pytest.mark.parametrize("method", ["wm", "am", "sinkhorn"])
def test_align_recovers_planted_permutation(method):
    """``wm`` and ``am`` recover a planted permutation exactly; sinkhorn (which lowers the interpolated
    task loss, not a distance) must return a valid permutation that keeps B's function."""
    torch.manual_seed(0)
    net = MLP(6, [5, 4], 3).double().eval()
    x = torch.randn(64, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (64,))
    _spec, a, b, perm = _planted(net, x)
    res = ga.align(a, b, method, module=net, data=(x, y))
    assert all(torch.equal(p.sort().values, torch.arange(len(p))) for p in res.perm.values())
    assert res.max_abs_diff <= 1e-12 and res.seconds >= 0 and res.method == method
    assert torch.equal(res.model().state_dict()["0.weight"], res.state["0.weight"])
    if method != "sinkhorn":
        assert exact_recovery(res.perm, invert_permutation(perm))
        assert all(torch.equal(res.state[k], a[k]) for k in a)


def test_align_gnn_methods_with_the_pretrained_aligner():
    net = MLP(8, [6, 6], 3).float().eval()
    x = torch.randn(32, 8, dtype=torch.float32)
    spec, a, b, perm = _planted(net, x)
    y = torch.randint(0, 3, (32,))
    for method in ("gnn", "gnn+wm", "gnn+sinkhorn"):
        res = ga.align(net, b, method, module=net, data=(x, y))
        assert set(res.perm) == set(spec.group_sizes)
        assert res.max_abs_diff <= 1e-4
    assert exact_recovery(ga.align(a, b, "gnn+wm", module=net).perm, invert_permutation(perm))
    dbl = ga.align(net.double(), {k: v.double() for k, v in b.items()}, "gnn")  # float64 models, float32 aligner
    assert dbl.max_abs_diff <= 1e-12


def test_align_needs_data_for_data_methods_and_knows_its_methods():
    net = MLP(4, [3], 2).eval()
    with pytest.raises(ValueError, match="'am' needs training data"):
        ga.align(net, net, "am")
    with pytest.raises(ValueError, match="'sinkhorn' needs training data \\(inputs and targets"):
        ga.align(net, net, "sinkhorn", data=torch.randn(8, 4))
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        ga.align(net, net, "nope")
    with pytest.raises(TypeError, match="module="):
        ga.align(net.state_dict(), net.state_dict(), "wm")
    assert set(ALIGN_METHODS) == {"auto", "gnn", "wm", "am", "sinkhorn", "ste", "gnn+wm", "gnn+sinkhorn", "gnn+ste"}
    with pytest.raises(ValueError, match="'ste' needs training data \\(inputs and targets"):
        ga.align(net, net, "ste", data=torch.randn(8, 4))


def test_align_rejects_bad_models_naming_the_key():
    net = MLP(4, [3], 2).eval()
    other = MLP(4, [5], 2).eval()
    with pytest.raises(StateDictError,
                       match=r"model 1: key '0.weight' has shape \(5, 4\), the architecture expects \(3, 4\)"):
        ga.align(net, other, "wm")
    bad = {k: v.clone() for k, v in net.state_dict().items()}
    bad["2.bias"][0] = float("nan")
    with pytest.raises(StateDictError, match="model 1: key '2.bias' contains NaN"):
        ga.align(net, bad, "wm")
    missing = dict(net.state_dict())
    missing.pop("2.bias")
    with pytest.raises(StateDictError, match="missing key '2.bias'"):
        ga.align(net, missing, "wm")


def test_function_check_fails_loudly_when_the_symmetry_is_wrong(monkeypatch):
    """Negative control: a method returning a permutation that the spec does not describe (here, a
    permuted output layer, by editing B behind the group action) must be caught."""
    net = MLP(4, [3], 2).double().eval()
    from gnn_align import api

    def broken(state, perm, spec):  # permutes the output neurons too, which changes the function
        out = apply_permutation(state, perm, spec)
        out["2.weight"], out["2.bias"] = out["2.weight"].flip(0), out["2.bias"].flip(0)
        return out

    monkeypatch.setattr(api, "apply_permutation", broken)
    torch.nn.init.normal_(net[2].weight)
    with pytest.raises(ga.GNNAlignError, match="changed its function"):
        ga.align(net, net, "wm")


def test_merge_averages_aligned_models_and_handles_batchnorm():
    torch.manual_seed(0)
    net = MLP(6, [5], 3).double().eval()
    x = torch.randn(16, 6, dtype=torch.float64)
    _spec, a, b, _ = _planted(net, x)
    res = ga.merge([a, b], method="wm", module=net)
    # a planted copy aligns back exactly, so the merge is A itself
    assert all(torch.allclose(res.state[k], a[k], atol=1e-12) for k in a)
    assert average_states([a, b], [1.0, 0.0])["0.weight"].equal(a["0.weight"])
    with pytest.raises(ValueError, match="non-negative"):
        average_states([a, b], [1.0])
    with pytest.raises(ValueError, match="at least 2"):
        ga.merge([a], module=net)
    rn = ResNet(1, 3, [3, 4], 3, dim=2).double().eval()
    xi = torch.randn(40, 1, 6, 6, dtype=torch.float64)
    _, ra, rb, _ = _planted(rn, xi)
    with pytest.warns(UserWarning, match="no data was given"):
        stale = ga.merge([ra, rb], method="wm", module=rn, example_input=xi)
    assert not stale.bn_reset
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh = ga.merge([ra, rb], method="wm", module=rn, data=xi)
    assert fresh.bn_reset
    key = next(k for k in fresh.state if k.endswith("running_mean"))
    assert not torch.allclose(fresh.state[key], stale.state[key])


def test_pretrained_aligner_ships_and_warns_outside_its_training_zoo():
    assert "mixed" in available()
    al = load_pretrained()
    trained = al.meta["trained_on"]
    assert trained["activation"] == ["relu"] and trained["residual"]
    net = MLP(64, [64, 64], 10).eval()
    spec = spec_from_module(net, torch.randn(2, 64))
    assert coverage_problems(trained, signature(spec, net)) == []
    wide = MLP(64, [1024], 10, activation="tanh").eval()
    problems = coverage_problems(trained, signature(spec_from_module(wide, torch.randn(2, 64)), wide))
    assert any("1024 neurons" in p for p in problems) and any("tanh" in p for p in problems)
    with pytest.warns(UserWarning, match="outside what the aligner was trained on.*gnn\\+wm"):
        ga.align(wide, wide, "gnn")
    k7 = CNN(1, [4, 4], 3, dim=2, kernel_size=7).eval()  # 49-value kernels: pooled to 3x3 for reading, with a warning
    with pytest.warns(UserWarning, match=r"were pooled.*0\.weight, 2\.weight 7x7 -> 3x3"):
        assert ga.align(k7, k7, "gnn").max_abs_diff == 0.0


def test_align_refuses_a_graph_too_large_for_the_encoder_before_running_it(monkeypatch):
    from gnn_align.memory import estimate

    net = MLP(8, [6, 6], 3).float().eval()
    ran = []
    monkeypatch.setattr(estimate, "available_memory_mb", lambda: 1.0)  # 1 MB free
    monkeypatch.setattr(type(load_pretrained()), "predict", lambda *a, **k: ran.append(1))
    with pytest.raises(ga.GNNAlignError, match=r"MLP: .* edges need ~\d+ MB for the aligner, 1 MB available.*wm"):
        ga.align(net, net.state_dict(), "gnn")
    assert not ran
    assert ga.align(net, net.state_dict(), "wm").max_abs_diff == 0.0  # weight matching needs no estimate


@pytest.mark.parametrize("name", available())
def test_every_shipped_aligner_recovers_a_planted_permutation_alone(name):
    """``gnn`` with each shipped aligner (``--aligner NAME``) returns π⁻¹ for B = π·A, on an MLP and a CNN."""
    torch.manual_seed(0)
    al = load_pretrained(name)
    for net, x in ((MLP(64, [32, 32], 10).eval(), torch.randn(4, 64)),
                   (CNN(1, [8, 16], 10, dim=2).eval(), torch.randn(4, 1, 8, 8))):
        _spec, a, b, perm = _planted(net, x)
        res = ga.align(a, b, "gnn", aligner=al, module=net)
        assert exact_recovery(res.perm, invert_permutation(perm)), name
