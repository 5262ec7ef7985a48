"""Attention: heads and within-head groups as permutation groups (issue 21).

The golden example pins how a head group and its within-head groups compose on one axis; the
function tests prove the derived symmetry of attention layers in float64, with one-sided controls.
"""

import pytest
import torch

from gnn_align import (
    PermutationError,
    PermutationSpec,
    apply_permutation,
    compose_permutations,
    identity_permutation,
    invert_permutation,
    random_permutation,
)
from gnn_align.spec import Axis

# Packed q/k rows of 2 heads x 2 dims: q rows 0..3, k rows 4..7; group "h" moves heads,
# "h0.qk"/"h1.qk" the dims of the head in slot 0/1 (shared by q and k).
_QK = (Axis("h", 2, 0), Axis("h0.qk", 1, 0), Axis("h1.qk", 1, 2),
       Axis("h", 2, 4), Axis("h0.qk", 1, 4), Axis("h1.qk", 1, 6))
NESTED = PermutationSpec({"h": 2, "h0.qk": 2, "h1.qk": 2, "e": 3},
                         {"in": (_QK, "e"), "b": (_QK,), "e.w": ("e", None)},
                         heads={"h": (("h0.qk", "h1.qk"),)})


def _theta(gen=None):
    if gen is None:
        return {"in": torch.arange(24.0).reshape(8, 3), "b": torch.arange(8.0), "e.w": torch.arange(6.0).reshape(3, 2)}
    return {"in": torch.randn(8, 3, generator=gen), "b": torch.randn(8, generator=gen),
            "e.w": torch.randn(3, 2, generator=gen)}


def test_golden_nested_heads():
    # Worked by hand: heads first (slot 0 <- head 1, slot 1 <- head 0), then within the head in
    # slot 0 its dims swap (h0.qk = [1, 0]); slot 1 keeps its order. new[i*2 + r] = old[h[i]*2 + hi[r]].
    perm = {"h": torch.tensor([1, 0]), "h0.qk": torch.tensor([1, 0]), "h1.qk": torch.tensor([0, 1]),
            "e": torch.tensor([2, 0, 1])}
    out = apply_permutation(_theta(), perm, NESTED)
    assert torch.equal(out["b"], torch.tensor([3.0, 2.0, 0.0, 1.0, 7.0, 6.0, 4.0, 5.0]))
    assert torch.equal(out["in"][:, 0], torch.tensor([11.0, 8.0, 2.0, 5.0, 23.0, 20.0, 14.0, 17.0]))
    assert torch.equal(out["in"][0], torch.tensor([11.0, 9.0, 10.0]))  # row 3 of theta, columns by "e"
    assert torch.equal(out["e.w"], torch.tensor([[4.0, 5.0], [0.0, 1.0], [2.0, 3.0]]))


@pytest.mark.parametrize("seed", range(5))
def test_nested_group_laws(seed):
    gen = torch.Generator().manual_seed(seed)
    theta = _theta(gen)
    p, q = random_permutation(NESTED, gen), random_permutation(NESTED, gen)

    def eq(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    assert eq(apply_permutation(theta, identity_permutation(NESTED), NESTED), theta)
    pq = apply_permutation(apply_permutation(theta, p, NESTED), q, NESTED)
    assert eq(pq, apply_permutation(theta, compose_permutations(p, q, NESTED), NESTED))
    back = apply_permutation(apply_permutation(theta, p, NESTED), invert_permutation(p, NESTED), NESTED)
    assert eq(back, theta)
    assert eq(apply_permutation(apply_permutation(theta, invert_permutation(p, NESTED), NESTED), p, NESTED), theta)


def test_nested_groups_must_come_together():
    perm = {"h": torch.tensor([1, 0]), "e": torch.arange(3)}
    with pytest.raises(PermutationError, match="head group 'h'"):
        invert_permutation(perm, NESTED)


def test_nested_soft_action_equals_index_action():
    from gnn_align.permute import apply_permutation_matrix

    gen = torch.Generator().manual_seed(0)
    theta, p = _theta(gen), random_permutation(NESTED, gen)
    soft = apply_permutation_matrix(theta, {g: torch.eye(len(v))[v] for g, v in p.items()}, NESTED)
    hard = apply_permutation(theta, p, NESTED)
    assert all(torch.equal(soft[k], hard[k]) for k in theta)
