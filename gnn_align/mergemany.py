"""Aligning N networks to one shared frame, with no network chosen as the reference.

Two ways, both returning one permutation per network (``apply_permutation(state_k, perms[k], spec)``
is network k in the shared frame):

* :func:`merge_many`: Git Re-Basin's MergeMany (Ainsworth et al., 2023, Alg. 3): coordinate descent
  that aligns each network in turn to the average of all the others (in the frame) — by weight
  matching, or by any matcher such as the learned aligner — until a sweep changes nothing. It starts
  from given permutations (e.g. each network aligned to network 0 by the learned aligner) or the
  identity, and keeps the sweep whose networks lie closest to their average (:func:`spread`).
* :func:`synchronize`: permutation synchronisation of pairwise alignments. Given ``A[i, j]`` aligning
  j to i for every pair, frame permutations ``M`` are cycle-consistent when applying ``A[i, j]`` and
  then ``M[i]`` equals ``M[j]``; each round sets ``M[j]`` to the permutation (Hungarian) that agrees
  with the most votes ``compose(A[i, j], M[i])`` over all ``i != j``. Every pairwise alignment read
  off the frame (``compose(M[j], invert(M[i]))``) is cycle-consistent by construction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from .baselines import weight_matching
from .ot import hungarian
from .permute import apply_permutation, compose_permutations, identity_permutation, invert_permutation
from .spec import PermutationSpec


def frame_average(states: Sequence[Mapping], perms: Sequence[Mapping], spec: PermutationSpec,
                  skip: int | None = None) -> dict:
    """Mean of the networks moved to the frame (network ``skip`` left out), in float64."""
    keep = [k for k in range(len(states)) if k != skip]
    moved = [apply_permutation(states[k], perms[k], spec) for k in keep]
    return {key: sum(m[key].double() for m in moved) / len(moved) if moved[0][key].is_floating_point()
            else moved[0][key].clone() for key in moved[0]}


def _same(p: Mapping, q: Mapping) -> bool:
    return all(torch.equal(p[g], q[g]) for g in p)


def spread(states: Sequence[Mapping], perms: Sequence[Mapping], spec: PermutationSpec) -> float:
    """Mean squared distance of the networks, moved to the frame, to their average (learnable tensors):
    what MergeMany lowers."""
    centre = frame_average(states, perms, spec)
    keys = spec.learnable_keys()
    return sum(float(((apply_permutation(s, p, spec)[k].double() - centre[k]) ** 2).sum())
               for s, p in zip(states, perms, strict=True) for k in keys) / len(states)


def merge_many(states: Sequence[Mapping], spec: PermutationSpec, init: Sequence[Mapping] | None = None,
               match: Callable | None = None, generator: torch.Generator | None = None, max_sweeps: int = 10,
               progress: bool = False) -> tuple:
    """MergeMany coordinate descent (module docstring).

    Args:
        states: N >= 2 state dicts of one architecture.
        spec: their permutation symmetry.
        init: one starting permutation per network (default the identity).
        match: ``match(target, state, init) -> perm`` aligning ``state`` to ``target`` (the average of
            the others); default weight matching started from ``init``. A learned aligner fits here.
        generator: source of the random order of every sweep (and of weight matching's group order).
        max_sweeps: bound on the number of sweeps.
        progress: a progress bar over sweeps.

    Returns:
        ``(perms, sweeps)``: one permutation per network into the shared frame — those of the sweep
        with the lowest :func:`spread` (the initial ones included) — and the number of sweeps run
        (the last one changed nothing unless ``max_sweeps`` was reached).
    """
    if match is None:
        match = lambda target, state, start: weight_matching(target, state, spec, init=start, generator=generator,
                                                             progress=False).perm
    n = len(states)
    perms = [dict(p) for p in init] if init is not None else [identity_permutation(spec) for _ in range(n)]
    best, best_spread = list(perms), spread(states, perms, spec)
    sweeps = 0
    for sweeps in tqdm(range(1, max_sweeps + 1), desc="MergeMany sweeps", disable=not progress):
        changed = False
        for k in torch.randperm(n, generator=generator).tolist():
            new = match(frame_average(states, perms, spec, skip=k), states[k], perms[k])
            changed |= not _same(new, perms[k])
            perms[k] = new
        current = spread(states, perms, spec)
        if current < best_spread:
            best, best_spread = list(perms), current
        if not changed:
            break
    return best, sweeps


def _votes(perms: Sequence[Mapping], group: str, size: int) -> torch.Tensor:
    """(size, size) counts: entry [s, j] = how many of ``perms`` send neuron j to slot s in ``group``."""
    votes = torch.zeros(size, size, dtype=torch.float64)
    for p in perms:
        votes[torch.arange(size), p[group]] += 1.0
    return votes


def synchronize(pairwise: Mapping, n: int, spec: PermutationSpec, max_rounds: int = 20) -> tuple:
    """Cycle-consistent frame permutations from pairwise alignments (module docstring).

    Args:
        pairwise: ``(i, j) -> permutation aligning network j to network i``, for every unordered pair
            in at least one direction (the other is its inverse).
        n: the number of networks.
        spec: their permutation symmetry.
        max_rounds: bound on the rounds of vote-and-decode.

    Returns:
        ``(perms, rounds)``: one permutation per network into the shared frame (network 0's frame
        initially, so ``perms[0]`` starts as the identity), and the rounds run.
    """
    if spec.heads:
        raise ValueError("synchronize does not handle attention head groups yet; use MergeMany (many='mergemany')")
    table = {}
    for (i, j), p in pairwise.items():
        table[i, j], table[j, i] = p, invert_permutation(p, spec)
    missing = [(i, j) for i in range(n) for j in range(n) if i != j and (i, j) not in table]
    if missing:
        raise ValueError(f"synchronize needs an alignment of every pair; missing {missing[0]}")
    perms = [identity_permutation(spec)] + [table[0, j] for j in range(1, n)]
    rounds = 0
    for rounds in range(1, max_rounds + 1):
        changed = False
        for j in range(n):
            votes = [compose_permutations(table[i, j], perms[i], spec) for i in range(n) if i != j] + [perms[j]]
            new = {g: hungarian(_votes(votes, g, size)) for g, size in spec.group_sizes.items()}
            changed |= not _same(new, perms[j])
            perms[j] = new
        if not changed:
            break
    return perms, rounds
