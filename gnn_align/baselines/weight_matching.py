"""Weight matching (Git Re-Basin, Ainsworth et al., ICLR 2023), on any :class:`PermutationSpec`.

Maximises ``sum_k <theta_A[k], (pi . theta_B)[k]>`` (equivalently minimises ``||theta_A - pi .
theta_B||^2``) over the learnable tensors by coordinate descent: one linear assignment per group, in
a random order, with every other group held fixed, until a full sweep changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

from ..ot import hungarian
from ..permute import apply_permutation, identity_permutation
from ..spec import PermutationSpec


@dataclass
class MatchResult:
    """A permutation plus how it was found. ``perm`` aligns B to A (apply it to B)."""

    perm: dict
    objective: list = field(default_factory=list)  # after each sweep (weight matching)
    iterations: int = 0
    trace: list = field(default_factory=list)  # (iteration, permutation) snapshots along the way


def _flat(t: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """(n, rest): row i holds every entry of neuron i along ``axis`` (block entries included)."""
    return t.movedim(axis, 0).reshape(n, -1).to(torch.float64)


def matching_objective(state_a: Mapping, state_b: Mapping, perm: Mapping, spec: PermutationSpec) -> float:
    """``sum_k <A[k], (perm . B)[k]>`` over the spec's learnable tensors."""
    pb = apply_permutation(state_b, perm, spec)
    return float(sum((state_a[k].double() * pb[k].double()).sum() for k in spec.learnable_keys()))


def weight_matching(state_a: Mapping, state_b: Mapping, spec: PermutationSpec, *, init: Mapping | None = None,
                    generator: torch.Generator | None = None, max_iter: int = 100) -> MatchResult:
    """Align B to A by weight matching.

    Args:
        state_a, state_b: state dicts of one architecture.
        spec: their :class:`PermutationSpec`.
        init: starting permutation (e.g. a learned prediction to refine); default the identity.
        generator: source of the random group order of every sweep.
        max_iter: bound on the number of sweeps.

    Returns:
        :class:`MatchResult` whose ``objective`` (one entry per sweep, starting with the initial
        permutation's) never decreases; ``trace`` holds the permutation after every sweep.
    """
    perm = {g: p.clone() for g, p in (init or identity_permutation(spec)).items()}
    for g in spec.group_sizes:
        perm.setdefault(g, torch.arange(spec.group_sizes[g]))
    learn = set(spec.learnable_keys())
    acts = {g: [(k, ax) for k, ax, _ in spec.acts_on(g) if k in learn] for g in spec.group_sizes}
    groups = list(spec.group_sizes)
    result = MatchResult(perm, [matching_objective(state_a, state_b, perm, spec)])
    result.trace.append((0, {g: p.clone() for g, p in perm.items()}))
    for it in range(max_iter):
        changed = False
        order = torch.randperm(len(groups), generator=generator).tolist()
        for gi in order:
            g, n = groups[gi], spec.group_sizes[groups[gi]]
            others = {h: p for h, p in perm.items() if h != g}
            pb = apply_permutation(state_b, others, spec)
            cost = torch.zeros(n, n, dtype=torch.float64)
            for k, ax in acts[g]:
                cost += _flat(state_a[k], ax, n) @ _flat(pb[k], ax, n).T
            new = hungarian(cost)
            rows = torch.arange(n)
            if cost[rows, new].sum() > cost[rows, perm[g]].sum() + 1e-12 * cost.abs().max():
                perm[g], changed = new, True
        result.iterations = it + 1
        result.objective.append(matching_objective(state_a, state_b, perm, spec))
        result.trace.append((it + 1, {g: p.clone() for g, p in perm.items()}))
        if not changed:
            break
    return result
