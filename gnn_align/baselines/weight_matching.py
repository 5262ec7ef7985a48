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

Attention heads (``spec.heads``): a within-head group is an ordinary step on the rows of its head
slot. A head group's step solves the head group and all its within-head groups at once, exactly:
for every pair (A's head ``i``, B's head ``j``) the best within-head permutations (one assignment
per family), then the assignment of B's heads to A's slots by those pairs' values.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..errors import GNNAlignError, StateDictError
from ..ot import hungarian, hungarian_heads
from ..partial import check_narrower, extract_subnetwork
from ..permute import identity_permutation, permute_tensor
from ..spec import PermutationSpec, axis_pieces

#: seconds after which weight matching shows its progress bar (on stderr), when not asked otherwise
PROGRESS_AFTER = 3.0


@dataclass
class MatchResult:
    """A permutation plus how it was found. ``perm`` aligns B to A (apply it to B; for a partial
    match, :func:`~gnn_align.partial.extract_subnetwork` of B is B aligned to A)."""

    perm: dict
    objective: list = field(default_factory=list)  # after each sweep (weight matching)
    iterations: int = 0
    trace: list = field(default_factory=list)  # (iteration, permutation) snapshots along the way
    seconds: list = field(default_factory=list)  # weight matching: seconds since the start, after each sweep
    stopped: str | None = None  # weight matching: "max_sweeps" or "time_limit" when a cap ended it before converging


def _flat(t: torch.Tensor, axis: int, n: int, piece=None) -> torch.Tensor:
    """(n, rest): row i holds every entry of neuron i along ``axis`` (block entries included); for an
    axis piece (:class:`~gnn_align.spec.Axis` given), of that piece's entries only."""
    t = t.movedim(axis, 0)
    if piece is not None:
        t = t[piece.start:piece.start + n * piece.block]
    return t.reshape(n, -1).to(torch.float64)


def _groups_of(axes: tuple) -> set:
    return {a.group for entry in axes for a in axis_pieces(entry)}


def _sum_modules(parts: Mapping) -> torch.Tensor:
    """Weight matching's score of a within-head family: the sum of its modules' inner products."""
    return sum(parts.values())


def _head_step(state_a: Mapping, state_b: Mapping, spec: PermutationSpec, head: str, perm: dict,
               learn: set, combine: Callable = _sum_modules) -> tuple:
    """The best head assignment and within-head permutations of ``head``, every other group held:
    ``(gain, {group: permutation})`` with ``gain`` the objective's increase (0: nothing better).
    ``combine`` makes a family's (n, n, d, d) scores from its modules' (``{module name: scores}``)."""
    fams = spec.heads[head]
    n, d = spec.group_sizes[head], [spec.group_sizes[fam[0]] for fam in fams]
    own = {head, *(g for fam in fams for g in fam)}
    rest = {g: p for g, p in perm.items() if g not in own}
    parts = [{} for _ in d]  # [fam][module][i, j, r, s]: A head i x B head j, dimension r x s
    for k, ax, a in spec.pieces(head):
        if k not in learn:
            continue
        f = next((f for f, fam in enumerate(fams)
                  if any(p.start == a.start for _, _, p in [t for t in spec.pieces(fam[0]) if t[:2] == (k, ax)])), None)
        if f is None:
            raise GNNAlignError(f"head group '{head}' acts on '{k}' where none of its within-head groups does")
        fa = _flat(state_a[k], ax, n * d[f], a._replace(block=1)).reshape(n, d[f], -1)
        moved_b = permute_tensor(state_b[k], spec.axes[k], rest)
        fb = _flat(moved_b, ax, n * d[f], a._replace(block=1)).reshape(n, d[f], -1)
        mod = k.rsplit(".", 1)[0]
        parts[f][mod] = parts[f].get(mod, 0) + torch.einsum("irx,jsx->ijrs", fa, fb)
    pair = [combine(p) if p else torch.zeros(n, n, di, di, dtype=torch.float64) for p, di in zip(parts, d, strict=True)]
    new, inner, best = hungarian_heads(pair)
    now = sum(float(pair[f][i, int(perm[head][i])][torch.arange(d[f]), perm[fam[i]]].sum())
              for f, fam in enumerate(fams) for i in range(n))
    out = {head: new}
    for f, fam in enumerate(fams):
        out.update({g: inner[f][i] for i, g in enumerate(fam)})
    return float(best[torch.arange(n), new].sum()) - now, out


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

    Raises:
        PermutationError, StateDictError: (from :func:`~gnn_align.partial.extract_subnetwork`) a
            match or state that does not fit the specs; a learnable tensor of B that, matched, has
            not the shape of A's (naming the key and both shapes).
    """
    spec_a, spec_b = (None, spec) if spec_b is None else (spec, spec_b)
    extract_subnetwork(state_b, perm, spec_b, spec_a, keys=())  # checks the match against the specs
    return _Objective(state_a, state_b, spec, spec_b)(perm)


class _Objective:
    """:func:`matching_objective` tensor by tensor; with group versions, each tensor's share is kept
    until a group acting on it changes (the sum, over the same shares in the same order, is the same)."""

    def __init__(self, state_a: Mapping, state_b: Mapping, spec: PermutationSpec, spec_b: PermutationSpec):
        self.state_a, self.state_b, self.axes_b = state_a, state_b, spec_b.axes
        self.keys = spec.learnable_keys()
        self.groups = {k: sorted(_groups_of(spec_b.axes[k])) for k in self.keys}
        self.partial = spec_b.group_sizes != spec.group_sizes
        self.shares: dict = {}  # key -> (versions it read, <A, B'>, |B|^2 - |B'|^2 or None)

    def __call__(self, perm: Mapping, version: Mapping | None = None) -> float:
        for k in self.keys:
            seen = None if version is None else tuple(version[g] for g in self.groups[k])
            if seen is not None and k in self.shares and self.shares[k][0] == seen:
                continue
            a, b = self.state_a[k], self.state_b[k]
            pb = permute_tensor(b, self.axes_b[k], perm).contiguous()
            if pb.shape != a.shape:
                raise StateDictError(f"key '{k}': A has shape {tuple(a.shape)}, B matched to it {tuple(pb.shape)}")
            left = b.double().square().sum() - pb.double().square().sum() if self.partial else None
            self.shares[k] = (seen, (a.double() * pb.double()).sum(), left)
        obj = float(sum(self.shares[k][1] for k in self.keys))
        if self.partial:
            obj += 0.5 * float(sum(self.shares[k][2] for k in self.keys))
        return obj


class _Costs:
    """The assignment problems of weight matching, with each term kept until an input changes.

    Group ``g``'s cost is a sum of one term per learnable tensor axis it acts on: A's rows against
    B's, with B's other axes in the current match of their groups. A term is recomputed only when
    one of those other groups changed its match since (``version``); when none did, the cost, and
    so the step's answer, is the one of the last time, which changed nothing then.
    """

    def __init__(self, state_a: Mapping, state_b: Mapping, spec: PermutationSpec, spec_b: PermutationSpec,
                 version: dict):
        self.state_a, self.state_b, self.spec, self.spec_b, self.version = state_a, state_b, spec, spec_b, version
        learn = set(spec.learnable_keys())
        self.acts = {g: [(k, ax, a) for k, ax, a in spec.pieces(g) if k in learn] for g in spec.group_sizes}
        # the other groups each term reads (B's other axes, or pieces, of its tensor)
        self.deps = {g: [sorted(_groups_of(spec_b.axes[k]) - {g}) for k, _, _ in self.acts[g]]
                     for g in spec.group_sizes}
        self.terms: dict = {}  # (group, index into acts[group]) -> (versions it read, product, norm term)
        self.solved: set = set()
        self.flat_a: dict = {}  # (key, axis, piece) -> A's tensor as (neurons, rest), float64

    def cost(self, g: str, perm: Mapping) -> torch.Tensor | None:
        """Group ``g``'s cost (``n_a x n_b``, float64) under ``perm``; None when no term's input changed
        since the last cost of ``g``."""
        n, m = self.spec.group_sizes[g], self.spec_b.group_sizes[g]
        stale = g not in self.solved
        for i, (k, ax, a) in enumerate(self.acts[g]):
            seen = tuple(self.version[h] for h in self.deps[g][i])
            if (g, i) in self.terms and self.terms[(g, i)][0] == seen:
                continue
            piece = None if self.spec.axes[k][ax] == a else a
            fb = _flat(permute_tensor(self.state_b[k], self.spec_b.axes[k], perm, skip=g), ax, m, piece)
            norm = 0.5 * fb.square().sum(1) if m > n else None  # the matched columns' own norm
            if (k, ax, piece) not in self.flat_a:  # A never moves: its rows are laid out once
                self.flat_a[(k, ax, piece)] = _flat(self.state_a[k], ax, n, piece)
            self.terms[(g, i)] = (seen, self.flat_a[(k, ax, piece)] @ fb.T, norm)
            stale = True
        if not stale:
            return None
        self.solved.add(g)
        cost = torch.zeros(n, m, dtype=torch.float64)
        for i in range(len(self.acts[g])):
            _, prod, norm = self.terms[(g, i)]
            cost += prod
            if norm is not None:
                cost -= norm
        return cost


def weight_matching(state_a: Mapping, state_b: Mapping, spec: PermutationSpec, *,
                    spec_b: PermutationSpec | None = None, init: Mapping | None = None,
                    generator: torch.Generator | None = None, max_sweeps: int = 100,
                    time_limit: float | None = None, progress: bool | None = None,
                    max_iter: int | None = None) -> MatchResult:
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
        max_sweeps: bound on the number of sweeps.
        time_limit: seconds after which no further assignment is started (checked before each
            group's step, so the last step may run past it; a sweep cut short still leaves a
            permutation at least as good as the one before it). ``None``: no limit.
        progress: a progress bar on stderr (sweep, assignments solved, groups changed, objective,
            elapsed seconds): ``None`` (default) shows it once the matching has run
            :data:`PROGRESS_AFTER` seconds, ``True`` from the start, ``False`` never.
        max_iter: the former name of ``max_sweeps`` (wins when given).

    Returns:
        :class:`MatchResult` whose ``objective`` (one entry per sweep, starting with the initial
        permutation's; :func:`matching_objective`) never decreases; ``trace`` holds the
        permutation and ``seconds`` the time since the start after every sweep (a sweep cut short
        by ``time_limit`` included); ``stopped`` is ``"max_sweeps"`` or ``"time_limit"`` when that
        cap ended the matching before a sweep changed nothing, else ``None``.

    A group's assignment is solved again only when the match of a group it reads changed since
    its last step (otherwise the step would repeat the last answer), so the last sweep, which
    changes nothing, costs little. For that, every group's cost terms (one ``n_a x n_b`` float64
    matrix per tensor axis it acts on) are kept until the end. Memory: besides these, a float64
    copy of A's learnable tensors and of their layouts along each group axis but the first (for a
    float32 model, up to about 4 times its size), made once instead of in every step.

    Shapes:
        ``perm[g]``: ``(n_a(g),)``, distinct indices into B's ``n_b(g)`` neurons.

    Raises:
        GNNAlignError: (from :func:`~gnn_align.partial.check_narrower`) specs that are not a
            narrower copy of one another, naming the group or key.
    """
    if spec_b is not None:
        check_narrower(spec, spec_b)
        if spec.heads and spec_b.group_sizes != spec.group_sizes:
            raise GNNAlignError("partial matching of attention heads is not supported yet")
    spec_b = spec if spec_b is None else spec_b
    perm = {g: p.clone() for g, p in (init or identity_permutation(spec)).items()}
    for g in spec.group_sizes:
        perm.setdefault(g, torch.arange(spec.group_sizes[g]))
    groups = list(spec.group_sizes)
    extract_subnetwork(state_b, perm, spec_b, spec, keys=())  # checks the start against the specs
    version = dict.fromkeys(groups, 0)  # how often each group's match changed
    # A's learnable tensors in float64 once (exact for float32 and 16-bit values): A never moves, so no
    # step converts them again (B is permuted in its own dtype, then converted, as it moves)
    a64 = {k: state_a[k].to(torch.float64) for k in spec.learnable_keys()}
    objective, costs = _Objective(a64, state_b, spec, spec_b), _Costs(a64, state_b, spec, spec_b, version)
    max_sweeps = max_sweeps if max_iter is None else max_iter
    t0 = time.perf_counter()
    result = MatchResult(perm, [objective(perm, version)])
    result.trace.append((0, {g: p.clone() for g, p in perm.items()}))
    result.seconds.append(time.perf_counter() - t0)
    bar = tqdm(desc="weight matching", disable=progress is False, leave=False, file=sys.stderr,
               delay=0 if progress else PROGRESS_AFTER,
               bar_format="{desc}: {n} assignments solved [{elapsed}{postfix}]")
    out_of_time = lambda: time_limit is not None and time.perf_counter() - t0 >= time_limit
    try:
        for it in range(max_sweeps):
            changed = 0
            order = torch.randperm(len(groups), generator=generator).tolist()
            if out_of_time():
                result.stopped = "time_limit"
                break
            for gi in order:
                if out_of_time():
                    result.stopped = "time_limit"
                    break
                g = groups[gi]
                if g in spec.heads:  # the head group and its within-head groups at once
                    gain, step = _head_step(state_a, state_b, spec, g, perm, set(spec.learnable_keys()))
                    bar.update()
                    moved = [h for h, p in step.items() if not torch.equal(perm[h], p)]
                    if moved and gain > 1e-12 * max(1.0, abs(result.objective[-1])):
                        for h in moved:
                            perm[h] = step[h]
                            version[h] += 1
                        changed += 1
                    continue
                cost = costs.cost(g, perm)
                if cost is None:  # no input changed since the last step of g: it would change nothing
                    continue
                new = hungarian(cost)
                bar.update()
                rows = torch.arange(spec.group_sizes[g])
                if cost[rows, new].sum() > cost[rows, perm[g]].sum() + 1e-12 * cost.abs().max():
                    perm[g] = new
                    version[g] += 1
                    changed += 1
            result.iterations = it + 1
            result.objective.append(objective(perm, version))
            result.trace.append((it + 1, {g: p.clone() for g, p in perm.items()}))
            result.seconds.append(time.perf_counter() - t0)
            bar.set_postfix_str(f"sweep {it + 1}, {changed} of {len(groups)} groups changed, objective "
                                f"{result.objective[-1]:.6g}", refresh=False)
            if result.stopped or not changed:
                break
        else:
            result.stopped = "max_sweeps"
    finally:
        bar.close()
    return result
