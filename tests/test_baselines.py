"""Baselines: weight matching, activation matching, Sinkhorn re-basin."""

import importlib
import itertools

import pytest
import torch

from gnn_align import apply_permutation, invert_permutation, random_permutation, spec_from_module
from gnn_align.baselines import (
    CorrelationStats,
    activation_matching,
    matching_objective,
    sinkhorn_rebasin,
    weight_matching,
)

sinkhorn_module = importlib.import_module("gnn_align.baselines.sinkhorn_rebasin")  # the package exports the function
from gnn_align.testing import output_change

from .conftest import make_family


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _planted(name, seed=0):
    module, x = make_family(name, seed)
    spec = spec_from_module(module, x)
    a = _state(module)
    pi = random_permutation(spec, torch.Generator().manual_seed(seed + 100))
    return module, x, spec, a, apply_permutation(a, pi, spec), pi


def _same(p, q):
    return set(p) == set(q) and all(torch.equal(p[g], q[g]) for g in p)


@pytest.mark.parametrize("name", ["mlp", "cnn2d_gap", "cnn1d_flatten"])
def test_weight_matching_recovers_planted_permutation(name):
    _module, _x, spec, a, b, pi = _planted(name)
    res = weight_matching(a, b, spec, generator=torch.Generator().manual_seed(0))
    assert _same(res.perm, invert_permutation(pi))
    aligned = apply_permutation(b, res.perm, spec)
    assert all(torch.equal(aligned[k], a[k]) for k in a)  # so the barrier is exactly 0


@pytest.mark.parametrize("name", ["mlp", "resnet2d_bn", "residual_mlp", "mlp_layernorm"])
def test_weight_matching_objective_never_decreases(name):
    module, x = make_family(name, 0)
    other, _ = make_family(name, 1)
    spec = spec_from_module(module, x)
    a, b = _state(module), _state(other)
    res = weight_matching(a, b, spec, generator=torch.Generator().manual_seed(0))
    obj = res.objective
    assert len(obj) == res.iterations + 1 >= 2
    assert all(later >= earlier - 1e-9 for earlier, later in itertools.pairwise(obj))
    assert obj[-1] == pytest.approx(matching_objective(a, b, res.perm, spec))
    assert obj[-1] > obj[0]  # found something better than the identity
    # the result is a symmetry of B: aligned B computes what B computes
    assert output_change(other, apply_permutation(b, res.perm, spec), x) <= 1e-10


def test_weight_matching_started_at_the_answer_stops_after_one_sweep():
    _module, _x, spec, a, b, pi = _planted("mlp")
    res = weight_matching(a, b, spec, init=invert_permutation(pi), generator=torch.Generator().manual_seed(0))
    assert res.iterations == 1 and _same(res.perm, invert_permutation(pi))


@pytest.mark.parametrize("name", ["mlp", "resnet2d_bn", "cnn1d_flatten"])
def test_activation_matching_recovers_planted_permutation(name):
    module, x, spec, a, b, pi = _planted(name)
    batches = [torch.randn((16,) + x.shape[1:], generator=torch.Generator().manual_seed(i)) for i in range(4)]
    res = activation_matching(module, a, b, spec, batches)
    assert _same(res.perm, invert_permutation(pi))


def test_streamed_correlation_equals_all_at_once():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(200, 5, generator=gen)
    b = a @ torch.randn(5, 5, generator=gen) + 0.1 * torch.randn(200, 5, generator=gen)
    streamed = CorrelationStats(5)
    for s in range(0, 200, 37):
        streamed.update(a[s:s + 37], b[s:s + 37])
    once = CorrelationStats(5)
    once.update(a, b)
    assert torch.allclose(streamed.correlation(), once.correlation(), atol=1e-12)
    expected = torch.corrcoef(torch.cat([a, b], 1).T)[:5, 5:]
    assert torch.allclose(once.correlation(), expected, atol=1e-10)


@pytest.mark.parametrize("name", ["mlp", "cnn2d_gap"])
@pytest.mark.parametrize("straight_through", [False, True])
def test_sinkhorn_rebasin_started_at_the_true_permutation_stays_there(name, straight_through):
    module, x, spec, a, b, pi = _planted(name)
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(0))
    res = sinkhorn_rebasin(module, a, b, spec, x, y, steps=30, init=invert_permutation(pi), init_scale=5.0,
                           straight_through=straight_through, generator=torch.Generator().manual_seed(0))
    assert _same(res.perm, invert_permutation(pi))


def test_sinkhorn_rebasin_lowers_the_midpoint_loss():
    module, x = make_family("mlp", 0)
    other, _ = make_family("mlp", 1)
    spec = spec_from_module(module, x)
    a, b = _state(module), _state(other)
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(256, 5, generator=gen)
    ys = module(xs).argmax(1)  # A's own predictions: a task both networks can be judged on

    def mid_loss(perm):
        pb = apply_permutation(b, perm, spec)
        mixed = {k: 0.5 * (a[k] + pb[k]) for k in a}
        return float(torch.nn.functional.cross_entropy(torch.func.functional_call(module, mixed, (xs,)), ys))

    res = sinkhorn_rebasin(module, a, b, spec, xs, ys, steps=60, lr=0.1, generator=gen)
    assert mid_loss(res.perm) < mid_loss({g: torch.arange(n) for g, n in spec.group_sizes.items()})


def test_sinkhorn_rebasin_draws_the_interpolation_point_from_lam_range(monkeypatch):
    module, x = make_family("mlp", 0)
    other, _ = make_family("mlp", 1)
    spec = spec_from_module(module, x)
    y = torch.randint(0, 3, (x.shape[0],), generator=torch.Generator().manual_seed(0))
    seen = []
    real = sinkhorn_module.interpolation_task_loss

    def recording(*args):
        seen.append(args[-2])  # lam
        return real(*args)

    monkeypatch.setattr(sinkhorn_module, "interpolation_task_loss", recording)
    for lam_range, distinct in (((0.0, 1.0), 12), ((0.2, 0.3), 12), ((0.5, 0.5), 1)):
        seen.clear()
        kw = {} if lam_range == (0.0, 1.0) else {"lam_range": lam_range}  # U(0, 1): the default
        sinkhorn_rebasin(module, _state(module), _state(other), spec, x, y, steps=12,
                         generator=torch.Generator().manual_seed(0), **kw)
        assert len(seen) == 12 and all(lam_range[0] <= lam <= lam_range[1] for lam in seen)
        assert len(set(seen)) == distinct
