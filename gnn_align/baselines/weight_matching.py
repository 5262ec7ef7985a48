"""Weight matching (Git Re-Basin, Ainsworth et al., ICLR 2023), on any :class:`PermutationSpec`.

Maximises ``sum_k <theta_A[k], (pi . theta_B)[k]>`` (equivalently minimises ``||theta_A - pi .
theta_B||^2``) over the learnable tensors by coordinate descent: one linear assignment per group, in
a random order, with every other group held fixed, until a full sweep changes nothing.

Partial matching (A narrower than B in some groups, ``spec_b`` given): the result maps each neuron
of A to a distinct neuron of B (see :mod:`gnn_align.partial`), each group's step is a rectangular
assignment, and ``pi . theta_B`` is B's matched sub-network (:func:`~gnn_align.partial.extract_subnetwork`).
Its norm then depends on the match, so maximising the inner product alone would favour B's largest
neurons; the objective becomes ``<A, B'> + ||B||^2 / 2 - ||B'||^2 / 2 = (||A||^2 + ||B||^2 - ||A -
B'||^2) / 2`` for ``B' = pi . theta_B``, which minimises the distance and equals the inner product
when the widths agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..ot import hungarian
from ..partial import check_narrower, extract_subnetwork
from ..permute import identity_permutation
from ..spec import PermutationSpec


@dataclass
class MatchResult:
    """A permutation plus how it was found. ``perm`` aligns B to A (apply it to B; for a partial
    match, :func:`~gnn_align.partial.extract_subnetwork` of B is B aligned to A)."""

    perm: dict
    objective: list = field(default_factory=list)  # after each sweep (weight matching)
    iterations: int = 0
    trace: list = field(default_factory=list)  # (iteration, permutation) snapshots along the way


def _flat(t: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """(n, rest): row i holds every entry of neuron i along ``axis`` (block entries included)."""
    return t.movedim(axis, 0).reshape(n, -1).to(torch.float64)


def matching_objective(state_a: Mapping, state_b: Mapping, perm: Mapping, spec: PermutationSpec,
                       spec_b: PermutationSpec | None = None) -> float:
    """``sum_k <A[k], (perm . B)[k]>`` over the spec's learnable tensors; for a partial match
    (B wider than A in some group), plus half the squared norm of B's entries left out of the
    matched sub-network (see the module docstring).

    Args:
        state_a, state_b: the two networks' tensors.
        perm: the permutation (or partial match, one index of B per neuron of A) aligning B to A.
        spec: A's spec (and B's when ``spec_b`` is None).
        spec_b: B's spec when B is wider than A.
    """
    keys = spec.learnable_keys()
    pb = extract_subnetwork(state_b, perm, spec) if spec_b is None else \
        extract_subnetwork(state_b, perm, spec_b, spec)  # checks every group's match against A
    obj = float(sum((state_a[k].double() * pb[k].double()).sum() for k in keys))
    if spec_b is not None and spec_b.group_sizes != spec.group_sizes:
        obj += 0.5 * float(sum(state_b[k].double().square().sum() - pb[k].double().square().sum() for k in keys))
    return obj


def weight_matching(state_a: Mapping, state_b: Mapping, spec: PermutationSpec, *,
                    spec_b: PermutationSpec | None = None, init: Mapping | None = None,
                    generator: torch.Generator | None = None, max_iter: int = 100) -> MatchResult:
    """Align B to A by weight matching.

    Args:
        state_a, state_b: state dicts of one architecture (or B a wider copy of A, with ``spec_b``).
        spec: their :class:`PermutationSpec` (A's when ``spec_b`` is given).
        spec_b: B's spec for partial matching: same groups, keys and axes as ``spec``, no group
            narrower than A's (:func:`~gnn_align.partial.check_narrower`). The result is then an
            injective map per group, each step a rectangular Hungarian assignment.
        init: starting permutation or partial match (e.g. a learned prediction to refine);
            default the identity (A's neuron ``i`` opposite B's neuron ``i``).
        generator: source of the random group order of every sweep.
        max_iter: bound on the number of sweeps.

    Returns:
        :class:`MatchResult` whose ``objective`` (one entry per sweep, starting with the initial
        permutation's; :func:`matching_objective`) never decreases; ``trace`` holds the
        permutation after every sweep.

    Shapes:
        ``perm[g]``: ``(n_a(g),)``, distinct indices into B's ``n_b(g)`` neurons.

    Raises:
        GNNAlignError: (from :func:`~gnn_align.partial.check_narrower`) specs that are not a
            narrower copy of one another, naming the group or key.
    """
    if spec_b is not None:
        check_narrower(spec, spec_b)
    spec_b = spec if spec_b is None else spec_b
    perm = {g: p.clone() for g, p in (init or identity_permutation(spec)).items()}
    for g in spec.group_sizes:
        perm.setdefault(g, torch.arange(spec.group_sizes[g]))
    learn = set(spec.learnable_keys())
    acts = {g: [(k, ax) for k, ax, _ in spec.acts_on(g) if k in learn] for g in spec.group_sizes}
    groups = list(spec.group_sizes)
    result = MatchResult(perm, [matching_objective(state_a, state_b, perm, spec, spec_b)])
    result.trace.append((0, {g: p.clone() for g, p in perm.items()}))
    for it in range(max_iter):
        changed = False
        order = torch.randperm(len(groups), generator=generator).tolist()
        for gi in order:
            g = groups[gi]
            n, m = spec.group_sizes[g], spec_b.group_sizes[g]
            others = {h: p for h, p in perm.items() if h != g}
            pb = extract_subnetwork(state_b, others, spec_b)  # other groups cut to their match
            cost = torch.zeros(n, m, dtype=torch.float64)
            for k, ax in acts[g]:
                fb = _flat(pb[k], ax, m)
                cost += _flat(state_a[k], ax, n) @ fb.T
                if m > n:  # the matched columns' own norm: see matching_objective
                    cost -= 0.5 * fb.square().sum(1)
            new = hungarian(cost)
            rows = torch.arange(n)
            if cost[rows, new].sum() > cost[rows, perm[g]].sum() + 1e-12 * cost.abs().max():
                perm[g], changed = new, True
        result.iterations = it + 1
        result.objective.append(matching_objective(state_a, state_b, perm, spec, spec_b))
        result.trace.append((it + 1, {g: p.clone() for g, p in perm.items()}))
        if not changed:
            break
    return result
