"""Hostile inputs to the core library (issue 18): each test names its item and fails on the code before the fix."""

import warnings

import pytest
import torch
from torch import nn

import gnn_align as ga
from gnn_align.api import ALIGN_METHODS, average_states
from gnn_align.archs import MLP
from gnn_align.errors import GNNAlignError, StateDictError, UnsupportedLayerError

from .conftest import make_family


def _one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3 = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
        self.l2.weight = self.l1.weight

    def forward(self, x):
        return self.l3(torch.relu(self.l2(torch.relu(self.l1(x)))))


def test_item01_tied_weights_are_refused():
    """A tensor shared by two layers raises UnsupportedLayerError naming both keys (no spec permuting it twice)."""
    with pytest.raises(UnsupportedLayerError) as err:
        ga.spec_from_module(_Tied(), torch.randn(3, 4))
    msg = _one_line(err)
    assert "'l1.weight'" in msg and "'l2.weight'" in msg and "tied" in msg
    shared = nn.Linear(4, 4)
    twice = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), shared, nn.ReLU(), nn.Linear(4, 2))
    twice.alias = shared  # one module registered under two names
    with pytest.raises(UnsupportedLayerError, match="'2.weight'.*'alias.weight'"):
        ga.spec_from_module(twice, torch.randn(3, 4))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "x", None])
def test_item03_merge_weights_must_be_finite_numbers(bad):
    """``merge`` / ``average_states`` with a NaN, Inf or non-number weight raise a one-line ValueError naming it."""
    a, _ = make_family("mlp", 0)
    b, _ = make_family("mlp", 1)
    with pytest.raises(ValueError) as err:
        average_states([a.state_dict(), b.state_dict()], [bad, 1.0])
    assert "weight 0" in _one_line(err) and repr(bad) in str(err.value)
    with pytest.raises(ValueError, match="weight 1"):
        ga.merge([a, b], weights=[1.0, bad], method="wm")


def test_item04_apply_permutation_refuses_wrong_shapes():
    """apply_permutation raises StateDictError naming the key and both shapes instead of cropping a tensor."""
    net, x = make_family("mlp")
    spec = ga.spec_from_module(net, x)
    state = dict(net.state_dict())
    perm = ga.identity_permutation(spec)
    for shape in [(4, 6), (5, 5), (4,)]:
        bad = dict(state, **{"0.weight": torch.randn(shape)})
        with pytest.raises(StateDictError) as err:
            ga.apply_permutation(bad, perm, spec)
        msg = _one_line(err)
        assert "'0.weight'" in msg and str(shape) in msg and "(4, 5)" in msg
    bare = ga.PermutationSpec(spec.group_sizes, spec.axes)  # no structure: the permuted axes still must fit
    with pytest.raises(StateDictError, match=r"'2.weight'.*\(6, 5\).*\(6, 4\)"):
        ga.apply_permutation(dict(state, **{"2.weight": torch.randn(6, 5)}), perm, bare)
    with pytest.raises(StateDictError, match="'2.bias'"):
        ga.apply_permutation({k: v for k, v in state.items() if k != "2.bias"}, perm, spec)


def test_item07_function_check_tolerance_follows_the_dtype_it_ran_in():
    """float64 weights in a float32 architecture, and float32 data for a float64 model, align."""
    a, _ = make_family("mlp", 0)
    b, _ = make_family("mlp", 1)
    sa, sb = a.state_dict(), b.state_dict()
    res = ga.align(sa, sb, "wm", module=MLP(5, [4, 6], 3).float())  # the CLI's case: float64 files
    assert res.max_abs_diff <= 1e-4 and res.state["0.weight"].dtype == torch.float64
    x = torch.randn(32, 5, dtype=torch.float32)
    res = ga.align(a, b.float(), "am", data=x)  # mixed: float64 A, float32 B and data
    assert res.max_abs_diff <= 1e-9 and res.state["0.weight"].dtype == torch.float32
    merged = ga.merge([a, b], method="wm", example_input=x)
    assert merged.state["0.weight"].dtype == torch.float64


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex128])
def test_item08_non_float_tensors_are_named_with_their_dtype(dtype):
    """Integer, bool or complex tensors where the architecture has floats raise a one-line error naming key and
    dtype."""
    a, _ = make_family("mlp", 0)
    b, _ = make_family("mlp", 1)
    cast = {k: v.to(dtype) for k, v in a.state_dict().items()}
    with pytest.raises(StateDictError) as err:
        ga.align(cast, cast, "wm", module=a)
    assert "model 0: key '0.weight'" in _one_line(err) and str(dtype) in str(err.value)
    one = dict(b.state_dict(), **{"2.bias": b.state_dict()["2.bias"].to(dtype)})
    with pytest.raises(StateDictError, match=f"model 1: key '2.bias' .*{dtype}"):
        ga.align(a, one, "wm")
    bn, x = make_family("resnet1d_bn")  # BatchNorm's integer num_batches_tracked is legitimate
    assert ga.align(bn, bn, "wm", example_input=x).max_abs_diff == 0


@pytest.mark.parametrize("method", ALIGN_METHODS)
def test_item09_network_without_hidden_neurons_gives_empty_alignment(method):
    """A network with no hidden neurons (one nn.Linear) aligns to the empty permutation with every method."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, generator=gen), torch.randint(0, 2, (32,), generator=gen)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    assert ga.spec_from_module(a, x).group_sizes == {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = ga.align(a, b, method, data=(x, y))
        assert res.perm == {} and all(torch.equal(res.state[k], v) for k, v in b.state_dict().items())
        merged = ga.merge([nn.Sequential(nn.Linear(3, 2)) for _ in range(3)], method=method, data=(x, y))
    assert [r.perm for r in merged.alignments] == [{}, {}]


def test_item14_meta_device_models_are_refused_in_one_line():
    """A model on the meta device (no values) raises a one-line error naming the model and key."""
    a, _ = make_family("mlp", 0)
    meta = MLP(5, [4, 6], 3).to("meta")
    with pytest.raises(GNNAlignError) as err:
        ga.align(a, meta, "wm")
    assert "model 1" in _one_line(err) and "meta" in str(err.value) and "'0.weight'" in str(err.value)
    with pytest.raises(GNNAlignError, match="model 0.*meta"):
        ga.merge([meta, a], method="wm", module=a)
    res = ga.align(a.state_dict(), a.state_dict(), "wm", module=meta)  # a meta architecture gets the models' values
    assert res.max_abs_diff == 0 and all(torch.equal(res.state[k], v) for k, v in a.state_dict().items())


@pytest.mark.parametrize("case", ["nan x", "empty x", "inf y", "nan example"])
def test_item14_nan_or_empty_data_is_named(case):
    """NaN/Inf or empty data raise a one-line error naming the data, not 'hungarian scores contain NaN'."""
    a, _ = make_family("mlp", 0)
    b, _ = make_family("mlp", 1)
    x, y = torch.randn(16, 5), torch.randn(16, 3)
    kwargs = {"nan x": {"data": x.index_fill(0, torch.tensor([3]), float("nan"))},
              "empty x": {"data": x[:0]},
              "inf y": {"data": (x, y.index_fill(0, torch.tensor([2]), float("inf")))},
              "nan example": {"example_input": torch.full((4, 5), float("nan"))}}[case]
    with pytest.raises(GNNAlignError) as err:
        ga.align(a, b, "am" if "example" not in case else "wm", loss="mse", **kwargs)
    msg = _one_line(err)
    assert ("data" in msg or "example_input" in msg) and "hungarian" not in msg
    assert ("no samples" if case == "empty x" else "NaN or Inf") in msg


@pytest.mark.parametrize("name, bad, layer, want", [
    ("mlp", (3, 7), "'0' (Linear)", "(batch, 5)"),
    ("cnn2d_gap", (3, 5, 6, 6), "'0' (Conv2d)", "(batch, 2, H, W)"),
])
def test_item14_wrong_example_input_shape_names_layer_and_shapes(name, bad, layer, want, capfd):
    """spec_from_module with an input of the wrong shape raises one line naming the layer and both shapes."""
    net, _ = make_family(name)
    with pytest.raises(GNNAlignError) as err:
        ga.spec_from_module(net, torch.randn(bad))
    msg = _one_line(err)
    assert layer in msg and want in msg and str(bad) in msg
    assert "Traceback" not in capfd.readouterr().err  # no fx traceback printed on the way


def test_item18_results_have_short_reprs():
    """AlignResult and MergeResult print method, group sizes, seconds and max_abs_diff, no tensors."""
    a, _ = make_family("mlp", 0)
    b, _ = make_family("mlp", 1)
    res = ga.align(a, b, "wm")
    text = repr(res)
    assert text.startswith("AlignResult(method='wm', groups={'0': 4, '2': 6}, seconds=") and "max_abs_diff=" in text
    assert "tensor" not in text and len(text) < 200
    merged = ga.merge([a, b, a], method="wm")
    text = repr(merged)
    assert text.startswith("MergeResult(models=3, method='wm', groups={'0': 4, '2': 6}, seconds=")
    assert "max_abs_diff=" in text and "tensor" not in text and len(text) < 200
