"""The group action: golden example, group laws, argument checks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gnn_align import (
    PermutationError,
    PermutationSpec,
    StateDictError,
    apply_permutation,
    compose_permutations,
    identity_permutation,
    invert_permutation,
    random_permutation,
)

# A 2 -> 3 -> 1 MLP whose 3 hidden neurons form group "h".
SPEC = PermutationSpec({"h": 3}, {"0.weight": ("h", None), "0.bias": ("h",),
                                  "2.weight": (None, "h"), "2.bias": (None,)})
THETA = {
    "0.weight": torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]),
    "0.bias": torch.tensor([10.0, 11.0, 12.0]),
    "2.weight": torch.tensor([[20.0, 21.0, 22.0]]),
    "2.bias": torch.tensor([30.0]),
}


def test_golden_example():
    # perm[i] = j: neuron j of the permuted network moves to slot i. Worked by hand:
    # slot 0 <- neuron 2, slot 1 <- neuron 0, slot 2 <- neuron 1.
    out = apply_permutation(THETA, {"h": torch.tensor([2, 0, 1])}, SPEC)
    assert torch.equal(out["0.weight"], torch.tensor([[5.0, 6.0], [1.0, 2.0], [3.0, 4.0]]))
    assert torch.equal(out["0.bias"], torch.tensor([12.0, 10.0, 11.0]))
    assert torch.equal(out["2.weight"], torch.tensor([[22.0, 20.0, 21.0]]))
    assert torch.equal(out["2.bias"], THETA["2.bias"])
    assert torch.equal(THETA["0.bias"], torch.tensor([10.0, 11.0, 12.0]))  # input untouched


def test_golden_block_axis():
    # A flattened 2-channel x 2-position map feeding one output: channel c owns entries 2c, 2c+1.
    spec = PermutationSpec({"c": 2}, {"w": (None, ("c", 2))})
    out = apply_permutation({"w": torch.tensor([[1.0, 2.0, 3.0, 4.0]])}, {"c": torch.tensor([1, 0])}, spec)
    assert torch.equal(out["w"], torch.tensor([[3.0, 4.0, 1.0, 2.0]]))


def _equal(a, b):
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


BIG = PermutationSpec({"a": 6, "b": 4}, {"w1": ("a", None), "w2": ("b", "a"), "w3": (None, ("b", 3))})


def _theta(gen):
    return {"w1": torch.randn(6, 2, generator=gen), "w2": torch.randn(4, 6, generator=gen),
            "w3": torch.randn(2, 12, generator=gen)}


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_group_laws(seed):
    gen = torch.Generator().manual_seed(seed)
    theta = _theta(gen)
    p, q = random_permutation(BIG, gen), random_permutation(BIG, gen)
    e = identity_permutation(BIG)
    assert _equal(apply_permutation(theta, e, BIG), theta)
    assert _equal(apply_permutation(apply_permutation(theta, p, BIG), invert_permutation(p), BIG), theta)
    assert _equal(apply_permutation(apply_permutation(theta, invert_permutation(p), BIG), p, BIG), theta)
    assert _equal(apply_permutation(apply_permutation(theta, p, BIG), q, BIG),
                  apply_permutation(theta, compose_permutations(p, q), BIG))
    for g in BIG.group_sizes:
        assert torch.equal(compose_permutations(p, invert_permutation(p))[g], e[g])
        assert torch.equal(compose_permutations(e, p)[g], p[g])


def test_random_permutation_is_seeded():
    a = random_permutation(BIG, torch.Generator().manual_seed(3))
    b = random_permutation(BIG, torch.Generator().manual_seed(3))
    c = random_permutation(BIG, torch.Generator().manual_seed(4))
    assert all(torch.equal(a[g], b[g]) for g in a)
    assert not all(torch.equal(a[g], c[g]) for g in a)


@pytest.mark.parametrize("perm, msg", [
    ({"x": torch.arange(3)}, "unknown permutation group 'x'"),
    ({"h": torch.arange(4)}, "group 'h' has 4 entries"),
    ({"h": torch.tensor([0, 0, 1])}, "not a permutation"),
    ({"h": torch.tensor([0.0, 1.0, 2.0])}, "LongTensor"),
])
def test_bad_permutations_are_refused(perm, msg):
    with pytest.raises(PermutationError, match=msg):
        apply_permutation(THETA, perm, SPEC)


def test_mismatched_keys_are_refused():
    bad = dict(THETA)
    del bad["2.bias"]
    with pytest.raises(StateDictError, match="'2.bias'"):
        apply_permutation(bad, identity_permutation(SPEC), SPEC)
    with pytest.raises(StateDictError, match="'extra.w'"):
        apply_permutation({**THETA, "extra.w": torch.ones(1)}, identity_permutation(SPEC), SPEC)


def test_spec_refuses_unknown_group():
    with pytest.raises(StateDictError, match="key 'w' uses unknown permutation group 'nope'"):
        PermutationSpec({"h": 3}, {"w": ("nope",)})


def test_permutation_matrix_action_equals_index_action():
    from gnn_align.permute import apply_permutation_matrix

    gen = torch.Generator().manual_seed(0)
    theta = _theta(gen)
    p = random_permutation(BIG, gen)
    mats = {g: torch.eye(len(v))[v] for g, v in p.items()}  # P[i, p[i]] = 1
    hard = apply_permutation(theta, p, BIG)
    soft = apply_permutation_matrix(theta, mats, BIG)
    assert all(torch.equal(hard[k], soft[k]) for k in theta)
    # linear in the matrix of one group: averaging two permutation matrices averages the actions
    q = random_permutation(BIG, gen)["a"]
    avg = apply_permutation_matrix(theta, {"a": 0.5 * (mats["a"] + torch.eye(6)[q])}, BIG)
    one, other = apply_permutation(theta, {"a": p["a"]}, BIG), apply_permutation(theta, {"a": q}, BIG)
    assert all(torch.allclose(avg[k], 0.5 * (one[k] + other[k]), atol=1e-12) for k in theta)
    with pytest.raises(PermutationError, match="group 'a' must be"):
        apply_permutation_matrix(theta, {"a": torch.eye(3)}, BIG)
