"""Interpolation curves, barrier definitions and matching accuracy (float64 via conftest)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gnn_align import apply_permutation, invert_permutation, random_permutation, spec_from_module
from gnn_align.archs import MLP
from gnn_align.metrics import (
    accuracy_barrier,
    auc,
    barrier,
    barrier_rebasin,
    curve_metrics,
    exact_recovery,
    interpolate,
    interpolation_curve,
    matching_accuracy,
    midpoint_disagreement,
    recompute_bn_stats,
)
from tests.conftest import make_family

TOL = {"rtol": 1e-12, "atol": 1e-12}


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _direct_loss(module, state, x, y, loss="ce"):
    net = copy.deepcopy(module)
    net.load_state_dict(state)
    with torch.no_grad():
        out = net.eval()(x)
    if loss == "ce":
        return F.cross_entropy(out, y).item(), (out.argmax(-1) == y).double().mean().item()
    return ((out - y) ** 2).mean().item(), None


# ---------------------------------------------------------------- barriers on hand-computed curves

def test_barriers_hand_computed():
    # lambdas 0, .25, .5, .75, 1; line (1-lam)*1 + lam*3 = [1, 1.5, 2, 2.5, 3]
    losses = [1.0, 3.0, 2.0, 2.5, 3.0]
    # psi = L - line = [0, 1.5, 0, 0, 0] -> barrier 1.5, AUC = mean = 1.5 / 5 = 0.3
    assert barrier(losses) == pytest.approx(1.5, abs=1e-12)
    assert auc(losses) == pytest.approx(0.3, abs=1e-12)
    # Re-Basin: max L - (L0 + L1) / 2 = 3 - 2 = 1
    assert barrier_rebasin(losses) == pytest.approx(1.0, abs=1e-12)
    # tensors work too
    assert barrier(torch.tensor(losses)) == pytest.approx(1.5, abs=1e-12)


def test_barriers_linear_curve_and_rebasin_endpoint_gap():
    losses = [1.0, 1.5, 2.0, 2.5, 3.0]  # exactly the line: psi = 0 everywhere
    assert barrier(losses) == 0.0 and auc(losses) == 0.0
    assert barrier_rebasin(losses) == pytest.approx(1.0, abs=1e-12)  # 3 - (1 + 3) / 2: endpoint gap


def test_barriers_clip_convex_below_curve():
    losses = [2.0, 1.0, 0.5, 1.0, 2.0]  # line = 2; psi = [0, -1, -1.5, -1, 0], mean -0.7 -> clipped
    assert barrier(losses) == 0.0
    assert auc(losses) == 0.0
    assert barrier_rebasin(losses) == 0.0  # max L = 2 = (2 + 2) / 2


def test_accuracy_barrier_hand_computed():
    # line (1-lam)*0.9 + lam*0.7 = [0.9, 0.85, 0.8, 0.75, 0.7]; line - acc = [0, 0.35, 0.2, -0.05, 0]
    assert accuracy_barrier([0.9, 0.5, 0.6, 0.8, 0.7]) == pytest.approx(0.35, abs=1e-12)
    # above the line everywhere (line 0.5, acc >= 0.5) -> 0
    assert accuracy_barrier([0.5, 0.8, 0.9, 0.8, 0.5]) == 0.0


def test_curve_metrics_and_validation():
    curve = {"lambdas": torch.linspace(0, 1, 5).tolist(), "loss": [1.0, 3.0, 2.0, 2.5, 3.0],
             "acc": [0.9, 0.5, 0.6, 0.8, 0.7], "bn_reset": False}
    m = curve_metrics(curve)
    assert m == pytest.approx({"barrier_deepalign": 1.5, "auc_deepalign": 0.3, "barrier_rebasin": 1.0,
                               "acc_barrier": 0.35, "loss_a": 1.0, "loss_b": 3.0, "loss_mid": 2.0})
    m4 = curve_metrics({"lambdas": torch.linspace(0, 1, 4).tolist(), "loss": [1.0, 2.0, 2.0, 1.0]})
    assert "loss_mid" not in m4 and "acc_barrier" not in m4  # 0.5 not sampled; mse curve
    with pytest.raises(ValueError, match="linspace"):
        curve_metrics({"lambdas": [0.0, 0.3, 1.0], "loss": [1.0, 2.0, 1.0]})
    with pytest.raises(ValueError, match="at least 2"):
        barrier([1.0])


# ---------------------------------------------------------------- interpolate

def test_interpolate_values_integers_and_endpoints():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(7)}
    b = {"w": torch.tensor([3.0, -2.0]), "n": torch.tensor(3)}
    mid = interpolate(a, b, 0.25)
    torch.testing.assert_close(mid["w"], 0.75 * a["w"] + 0.25 * b["w"], **TOL)
    assert mid["n"].dtype == torch.long and mid["n"].item() == 7
    assert torch.equal(interpolate(a, b, 0.0)["w"], a["w"])
    assert torch.equal(interpolate(a, b, 1.0)["w"], b["w"])
    mid["n"] += 1  # new tensors: the inputs are untouched
    assert a["n"].item() == 7


def test_interpolate_mismatch_errors():
    a = {"w": torch.zeros(2), "v": torch.zeros(3)}
    with pytest.raises(ValueError, match="'v'"):
        interpolate(a, {"w": torch.zeros(2)}, 0.5)
    with pytest.raises(ValueError, match="'u'"):
        interpolate(a, {**a, "u": torch.zeros(1)}, 0.5)
    with pytest.raises(ValueError, match="'v'.*shape"):
        interpolate(a, {"w": torch.zeros(2), "v": torch.zeros(4)}, 0.5)


# ---------------------------------------------------------------- interpolation curves

@pytest.mark.parametrize("name", ["mlp", "resnet2d_bn"])
@pytest.mark.parametrize("reset", [False, True])
def test_self_interpolation_has_no_barrier(name, reset):
    module, x = make_family(name)
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    a = _state(module)
    before = _state(module)
    reset_bn = [x[:4], x[3:]] if reset else None
    curve = interpolation_curve(module, a, a, x, y, num_lambdas=7, reset_bn=reset_bn)
    assert curve["bn_reset"] is reset and len(curve["loss"]) == len(curve["acc"]) == 7
    assert curve["lambdas"] == pytest.approx(torch.linspace(0, 1, 7).tolist())
    torch.testing.assert_close(torch.tensor(curve["loss"]), torch.full((7,), curve["loss"][0]), **TOL)
    m = curve_metrics(curve)
    assert m["barrier_deepalign"] <= 1e-12 and m["auc_deepalign"] <= 1e-12
    assert m["barrier_rebasin"] <= 1e-12 and m["acc_barrier"] <= 1e-12
    # the module is not modified (values nor mode)
    assert not module.training
    for k, v in module.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", ["mlp", "resnet2d_bn"])
def test_curve_endpoints_match_direct_evaluation(name):
    module, x = make_family(name)
    other, _ = make_family(name, seed=1)
    a, b = _state(module), _state(other)
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    curve = interpolation_curve(module, a, b, x, y, num_lambdas=5, batch_size=3)  # 3 + 3 + 1 samples
    for i, state in ((0, a), (-1, b)):
        loss, acc = _direct_loss(module, state, x, y)
        assert curve["loss"][i] == pytest.approx(loss, rel=1e-12)
        assert curve["acc"][i] == pytest.approx(acc, abs=1e-12)
    assert curve["loss"][0] != pytest.approx(curve["loss"][-1])
    # the batch size does not matter
    whole = interpolation_curve(module, a, b, x, y, num_lambdas=5)
    torch.testing.assert_close(torch.tensor(whole["loss"]), torch.tensor(curve["loss"]), **TOL)
    # mse: (N, C) targets, mean over all entries, no accuracy
    t = torch.randn(x.shape[0], 3, generator=torch.Generator().manual_seed(2))
    mse = interpolation_curve(module, a, b, x, t, loss="mse", num_lambdas=3, batch_size=4)
    assert "acc" not in mse
    assert mse["loss"][0] == pytest.approx(_direct_loss(module, a, x, t, "mse")[0], rel=1e-12)
    assert mse["loss"][-1] == pytest.approx(_direct_loss(module, b, x, t, "mse")[0], rel=1e-12)


def test_curve_endpoints_with_bn_reset_match_manual_recomputation():
    module, x = make_family("resnet2d_bn")
    other, _ = make_family("resnet2d_bn", seed=1)
    a, b = _state(module), _state(other)
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    batches = [x[:3], x[3:6]]
    curve = interpolation_curve(module, a, b, x, y, num_lambdas=3, reset_bn=batches)
    for i, state in ((0, a), (-1, b)):
        net = copy.deepcopy(module)
        net.load_state_dict(state)
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        net.train()
        with torch.no_grad():
            for xb in batches:
                net(xb)
        assert curve["loss"][i] == pytest.approx(_direct_loss(module, net.state_dict(), x, y)[0], rel=1e-10)
    assert curve["loss"][0] != pytest.approx(_direct_loss(module, a, x, y)[0])  # the reset did something


def test_curve_argument_errors():
    module, x = make_family("mlp")
    a = _state(module)
    y = torch.zeros(x.shape[0], dtype=torch.long)
    with pytest.raises(ValueError, match="loss"):
        interpolation_curve(module, a, a, x, y, loss="hinge")
    with pytest.raises(ValueError, match="num_lambdas"):
        interpolation_curve(module, a, a, x, y, num_lambdas=1)
    with pytest.raises(ValueError, match="'0.bias'"):
        interpolation_curve(module, a, {k: v for k, v in a.items() if k != "0.bias"}, x, y)


# ---------------------------------------------------------------- permutations: function vs. curve

@pytest.mark.parametrize("name", ["mlp", "resnet2d_bn"])
def test_permuted_copy_keeps_endpoint_loss(name):
    module, x = make_family(name)
    a = _state(module)
    spec = spec_from_module(module, x)
    perm = random_permutation(spec, torch.Generator().manual_seed(3))
    b = apply_permutation(a, perm, spec)
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(1))
    curve = interpolation_curve(module, a, b, x, y, num_lambdas=3)
    assert curve["loss"][-1] == pytest.approx(curve["loss"][0], rel=1e-10)
    assert curve["loss"][1] != pytest.approx(curve["loss"][0], rel=1e-6)  # the midpoint is another network
    # aligning back (the inverse permutation) restores a flat curve
    back = apply_permutation(b, invert_permutation(perm), spec)
    assert barrier(interpolation_curve(module, a, back, x, y, num_lambdas=3)["loss"]) <= 1e-12


def test_naive_interpolation_with_permuted_copy_has_a_barrier():
    torch.manual_seed(0)
    module = MLP(8, [32, 32], 4).eval()
    x = torch.randn(256, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = module(x).argmax(-1)  # labels A fits perfectly: its loss is low, a broken network's is not
    a = _state(module)
    spec = spec_from_module(module, x)
    b = apply_permutation(a, random_permutation(spec, torch.Generator().manual_seed(2)), spec)
    curve = interpolation_curve(module, a, b, x, y, num_lambdas=9)
    m = curve_metrics(curve)
    assert curve["acc"][0] == curve["acc"][-1] == 1.0
    assert m["barrier_deepalign"] > 1e-2 and m["auc_deepalign"] > 1e-3
    assert m["barrier_rebasin"] == pytest.approx(m["barrier_deepalign"], rel=1e-9)  # equal endpoint losses
    assert m["acc_barrier"] > 0.0


def test_midpoint_disagreement_hand_computed():
    """One linear layer: the midpoint's logits are the average of A's and B's, so the value is
    KL((softmax f_A + softmax f_B) / 2 || softmax((f_A + f_B) / 2)), computed here directly; mse: 0."""
    module = nn.Linear(3, 4)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    a = {"weight": torch.randn(4, 3, generator=gen), "bias": torch.randn(4, generator=gen)}
    b = {"weight": torch.randn(4, 3, generator=gen), "bias": torch.randn(4, generator=gen)}
    fa, fb = x @ a["weight"].T + a["bias"], x @ b["weight"].T + b["bias"]
    ens = (fa.softmax(-1) + fb.softmax(-1)) / 2
    want = (ens * (ens.log() - ((fa + fb) / 2).log_softmax(-1))).sum(-1).mean()
    assert midpoint_disagreement(module, a, b, x) == pytest.approx(float(want), rel=1e-12)
    assert float(want) > 1e-3  # the case is not trivial
    assert midpoint_disagreement(module, a, b, x, loss="mse") == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="unknown loss"):
        midpoint_disagreement(module, a, b, x, loss="l1")


@pytest.mark.parametrize("name", ["mlp", "resnet2d_bn"])
def test_midpoint_disagreement_zero_after_alignment_positive_before(name):
    """A network and its permuted copy: 0 once the copy is aligned back (B's statistics reset on data for
    BatchNorm), clearly positive when it is not (the naive midpoint is a broken network)."""
    module, x = make_family(name)
    a = _state(module)
    spec = spec_from_module(module, x)
    perm = random_permutation(spec, torch.Generator().manual_seed(3))
    b = apply_permutation(a, perm, spec)
    reset = [x[:4], x[4:]]
    for loss in ("ce", "mse"):
        aligned = apply_permutation(b, invert_permutation(perm, spec), spec)
        assert midpoint_disagreement(module, a, aligned, x, loss, reset_bn=reset) == pytest.approx(0.0, abs=1e-9)
        assert midpoint_disagreement(module, a, b, x, loss, reset_bn=reset) > 1e-4


# ---------------------------------------------------------------- BatchNorm reset

def test_bn_reset_running_stats_are_batch_statistics():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    state = _state(module)
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)]  # equal sizes
    h = [xb @ state["0.weight"].T + state["0.bias"] for xb in batches]  # pre-BN activations
    mean = torch.cat(h).mean(0)  # = mean of the two batch means (equal batch sizes)
    var = (h[0].var(0, unbiased=True) + h[1].var(0, unbiased=True)) / 2  # cumulative average
    new = recompute_bn_stats(module, state, batches)
    torch.testing.assert_close(new["1.running_mean"], mean, **TOL)
    torch.testing.assert_close(new["1.running_var"], var, **TOL)
    assert new["1.num_batches_tracked"].item() == 2
    assert torch.equal(state["1.running_mean"], torch.zeros(4))  # input state untouched
    # through the curve: the loss at lam = 0 is that of A with these statistics, by hand
    x = torch.randn(6, 3, generator=gen)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    hx = x @ state["0.weight"].T + state["0.bias"]
    z = (hx - mean) / torch.sqrt(var + 1e-5) * state["1.weight"] + state["1.bias"]
    expected = F.cross_entropy(z @ state["2.weight"].T + state["2.bias"], y).item()
    curve = interpolation_curve(module, state, state, x, y, num_lambdas=2, reset_bn=batches)
    assert curve["loss"][0] == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- matching accuracy

def test_matching_accuracy_and_exact_recovery():
    target = {"a": torch.tensor([0, 1, 2, 3]), "b": torch.tensor([1, 0])}
    perm = {"a": torch.tensor([0, 1, 3, 2]), "b": torch.tensor([1, 0]), "extra": torch.tensor([0])}
    assert matching_accuracy(perm, target) == pytest.approx(4 / 6)  # 2 of 4 in a, 2 of 2 in b
    assert not exact_recovery(perm, target)
    assert matching_accuracy(target, target) == 1.0 and exact_recovery(target, target)
    assert matching_accuracy({"a": torch.tensor([1, 2, 3, 0]), "b": torch.tensor([0, 1])}, target) == 0.0
    with pytest.raises(ValueError, match="'b'"):
        matching_accuracy({"a": target["a"]}, target)
    with pytest.raises(ValueError, match="'a'.*3"):
        exact_recovery({"a": torch.tensor([0, 1, 2]), "b": target["b"]}, target)
