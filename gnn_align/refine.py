"""Refinement that never makes an alignment worse, and ``auto``: the best alignment the data can pick.

**Score.** An alignment of B to A is scored by the task loss of the midpoint
``(theta_A + pi . theta_B) / 2`` (:func:`midpoint_loss`): the loss barrier is largest near the
middle of the segment, and the midpoint costs one evaluation. BatchNorm running statistics of the
midpoint are recomputed on the scoring inputs first, as the benchmark does for every interpolated
network.

**Keep the better.** A refiner (weight matching, Sinkhorn re-basin, STE) started from a prediction X
returns X itself unless the refined answer passes the refiner's own acceptance test (weight
matching: its objective, :func:`~gnn_align.baselines.matching_objective`, did not decrease) and,
when inputs and targets are given, scores no worse than X (:func:`keep_better`). Which one was kept
is recorded in :attr:`Outcome.kept`.

**auto** (:func:`auto_align`): hold out a slice of the data, run the cheap candidates on the rest
(``gnn``, ``wm``, ``am``, ``gnn+wm``), score each on the held-out slice, refine the best with short
Sinkhorn re-basins (60 steps at learning rate 0.3 each, one with the loss drawn along the whole path and
one at the midpoint alone), and return the best of all, with every candidate's score and time. By default
that is the whole plan, and its answer does not depend on the machine's speed or load; given a time
``budget``, ``auto`` instead refines until the budget is spent, from the next starts too.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from .metrics import input_batches, interpolate, recompute_bn_stats
from .permute import apply_permutation
from .spec import PermutationSpec
from .tasks import task_loss

#: the largest held-out slice ``auto`` scores on, and the fraction of the data it takes
SCORE_LIMIT, SCORE_FRACTION = 1024, 0.2
#: default budget of ``auto``: ``None``, the fixed plan (the best candidate refined once by each refiner, no
#: clock), or seconds for candidates and refinement together
AUTO_BUDGET: float | None = None


@dataclass
class Outcome:
    """What a refining or choosing method did: ``kept`` names the answer returned; ``scores`` and
    ``seconds`` hold each candidate's midpoint loss (when data was given) and time."""

    kept: str
    scores: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> dict:
        return {"kept": self.kept, "scores": self.scores, "seconds": self.seconds} | (
            {"note": self.note} if self.note else {})


def has_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` holds a BatchNorm layer (of any dimension)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


@torch.no_grad()
def midpoint_loss(module: nn.Module, spec: PermutationSpec, state_a: Mapping, state_b: Mapping, perm: Mapping,
                  x: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> float:
    """Task loss on ``(x, y)`` of ``(theta_A + perm . theta_B) / 2`` in eval mode, its BatchNorm
    statistics first recomputed on (up to 512 of) ``x`` (:func:`~gnn_align.metrics.recompute_bn_stats`)."""
    mid = interpolate(state_a, apply_permutation(state_b, perm, spec), 0.5)
    if has_batchnorm(module):
        mid = recompute_bn_stats(module, mid, input_batches(x))
    was = module.training
    module.eval()
    try:
        out = torch.func.functional_call(module, mid, (x,))
    finally:
        module.train(was)
    return float(task_loss(out[None], y[None], loss)[0])


def split_scoring(x: torch.Tensor, y: torch.Tensor) -> tuple:
    """``(x_fit, y_fit, x_score, y_score)``: the last ``SCORE_FRACTION`` of the data (at most
    ``SCORE_LIMIT`` examples) is held out for scoring; with fewer than 10 examples both are all of it."""
    n = x.shape[0]
    hold = min(SCORE_LIMIT, int(n * SCORE_FRACTION))
    if n < 10 or hold < 1:
        return x, y, x, y
    return x[:-hold], y[:-hold], x[-hold:], y[-hold:]


def keep_better(base: tuple, refined: tuple, score: Callable | None, own_test: Callable | None = None) -> tuple:
    """Return ``(perm, Outcome)``: the refined ``(name, perm, seconds)`` unless it fails ``own_test(base_perm,
    refined_perm)`` (the refiner's acceptance test) or, with a ``score`` (lower is better), scores
    worse than ``base``; then the base."""
    (bname, bperm, bsec), (rname, rperm, rsec) = base, refined
    out = Outcome(rname, seconds={bname: bsec, rname: rsec})
    if own_test is not None and not own_test(bperm, rperm):
        out.kept, out.note = bname, f"{rname} failed its own acceptance test"
        return bperm, out
    if score is not None:
        out.scores = {bname: score(bperm), rname: score(rperm)}
        if out.scores[rname] > out.scores[bname]:
            out.kept = bname
    return (rperm if out.kept == rname else bperm), out


def auto_align(candidates: Mapping, refine: Callable | Mapping, score: Callable, budget: float | None = AUTO_BUDGET,
               refiner: str = "sinkhorn", starts: Mapping | None = None) -> tuple:
    """The best of ``candidates``, then refined, by ``score`` (lower is better).

    Args:
        candidates: name -> ``fn(init or None) -> perm``, run in order; a candidate whose name is
            ``"X+Y"`` gets X's answer as ``init`` (skipped when X failed or was not run).
        refine: ``fn(init_perm, seconds_left) -> perm``; its answer from start ``S`` is named
            ``"S+REFINER"``. Without a budget it runs from the best candidate only, with ``seconds_left``
            ``None``. With one, from the best candidate when time is left, then from the next best ones
            and from ``starts`` in turn until the budget is spent, the last one cut short by it (a
            larger budget buys more starts; a refinement cut short is still scored). Or a mapping
            ``REFINER -> fn``: from each start, each in turn.
        score: ``fn(perm) -> float`` on held-out data.
        budget: ``None`` (the fixed plan above) or seconds for everything; candidates run in full,
            refinement gets what is left.
        starts: name -> permutation, further starting points refined after the candidates (e.g.
            the identity, from which plain Sinkhorn re-basin starts); not themselves answers.

    Returns:
        ``(perm, Outcome)``; the Outcome names the winner and
        holds every candidate's score and seconds.
    """
    t0 = time.perf_counter()
    perms, out = {}, Outcome("")
    for name, fn in candidates.items():
        base = name.split("+")[0] if "+" in name else None
        if base is not None and base not in perms:
            continue
        t = time.perf_counter()
        perms[name] = fn(perms[base] if base else None)
        out.seconds[name] = time.perf_counter() - t
        out.scores[name] = score(perms[name])
    inits = {n: perms[n] for n in sorted(out.scores, key=out.scores.get)} | dict(starts or {})
    if budget is None:
        inits = dict(itertools.islice(inits.items(), 1))
    refiners = refine if isinstance(refine, Mapping) else {refiner: refine}
    for (start, init), (rname, fn) in itertools.product(inits.items(), refiners.items()):
        left = None if budget is None else budget - (time.perf_counter() - t0)
        if left is not None and left <= 0:
            break
        name = f"{start}+{rname}"
        t = time.perf_counter()
        perms[name] = fn(init, left)
        out.seconds[name] = time.perf_counter() - t
        out.scores[name] = score(perms[name])
    out.kept = min(out.scores, key=out.scores.get)
    return perms[out.kept], out
