"""Evaluation of an alignment: linear-mode-connectivity curves, loss barriers and matching accuracy.

**Interpolation convention**: ``theta(lam) = (1 - lam) * theta_A + lam * theta_B`` for ``lam`` in
``torch.linspace(0, 1, num_lambdas)``, so ``lam = 0`` is A and ``lam = 1`` is B. B is expected to be
*already aligned* to A by the caller (``apply_permutation(theta_B, perm, spec)``, with the direction
of :mod:`gnn_align.permute`); nothing here permutes weights.

**Barriers** are computed from the list of losses of a curve, the lambdas being taken as
``linspace(0, 1, len(losses))``. Two definitions are in use in the literature and both are given,
under explicit names:

* Deep-Align (Navon et al., 2023): ``psi(lam) = L(lam) - ((1 - lam) L(0) + lam L(1))`` (the gap to the
  straight line between the endpoint losses); barrier = ``max psi``, AUC = mean of ``psi``.
* Git Re-Basin (Ainsworth et al., 2023): ``max L(lam) - (L(0) + L(1)) / 2``.

All barriers are clipped at 0. NaN losses propagate (the result is NaN).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.func import functional_call

from .errors import StateDictError, check_keys
from .tasks import check_loss, task_loss


def interpolate(state_a: Mapping[str, torch.Tensor], state_b: Mapping[str, torch.Tensor], lam: float) -> dict:
    """The point ``(1 - lam) * A + lam * B`` of the segment between two state dicts.

    Floating tensors are interpolated; integer tensors (BatchNorm's ``num_batches_tracked``) are
    copied from A. ``lam = 0`` returns A's values and ``lam = 1`` B's, exactly.

    Args:
        state_a: the state dict at ``lam = 0``.
        state_b: the state dict at ``lam = 1``, with exactly the same keys and shapes.
        lam: the interpolation coefficient (not restricted to [0, 1]).

    Returns:
        A new dict (new tensors) with A's keys, in A's order.

    Raises:
        StateDictError: (a ValueError) naming the first key present in only one of the two dicts
            (:func:`~gnn_align.errors.check_keys`), or whose shapes differ.
    """
    check_keys(state_b, state_a, "state_b", "state_a")
    out = {}
    for k, a in state_a.items():
        b = state_b[k]
        if a.shape != b.shape:
            raise StateDictError(f"key '{k}' has shape {tuple(a.shape)} in state_a "
                             f"and {tuple(b.shape)} in state_b")
        # lerp is (1 - lam) a + lam b, computed so that lam = 0 gives a and lam = 1 gives b exactly
        out[k] = torch.lerp(a, b.to(a.dtype), float(lam)) if a.is_floating_point() else a.clone()
    return out


def _bn_modules(module: nn.Module) -> list:
    """(prefix, module) of every BatchNorm that tracks running statistics."""
    return [(name + "." if name else "", m) for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _cumulative_bn_copy(module: nn.Module) -> tuple:
    """A private copy of ``module`` whose BatchNorms average cumulatively (``momentum=None``)."""
    net = copy.deepcopy(module).eval()
    bns = _bn_modules(net)
    for _, m in bns:
        m.momentum = None
    return net, bns


@torch.no_grad()
def _reset_bn_stats(net: nn.Module, bns: list, state: Mapping[str, torch.Tensor], batches: list) -> dict:
    state = dict(state)
    for prefix, _ in bns:
        state[prefix + "running_mean"] = torch.zeros_like(state[prefix + "running_mean"])
        state[prefix + "running_var"] = torch.ones_like(state[prefix + "running_var"])
        if prefix + "num_batches_tracked" in state:
            state[prefix + "num_batches_tracked"] = torch.zeros_like(state[prefix + "num_batches_tracked"])
    net.train()
    for xb in batches:
        functional_call(net, state, (xb,))  # BatchNorm updates the tensors of ``state`` in place
    net.eval()
    return state


def recompute_bn_stats(module: nn.Module, state: Mapping[str, torch.Tensor],
                       batches: Iterable[torch.Tensor]) -> dict:
    """Recompute the BatchNorm running statistics of ``state`` on ``batches``.

    The statistics are reset (mean 0, var 1, ``num_batches_tracked`` 0), then every batch is run in
    train mode with cumulative averaging (``momentum=None``): ``running_mean`` becomes the mean of the
    per-batch means of the BatchNorm's input (the mean over all samples when the batches have equal
    sizes) and ``running_var`` the mean of the per-batch unbiased variances.

    Args:
        module: an instance of the architecture (neither used for its values nor modified).
        state: its state dict (not modified).
        batches: input batches.

    Returns:
        A new state dict: ``state``'s tensors, with new running statistics.
    """
    net, bns = _cumulative_bn_copy(module)
    return _reset_bn_stats(net, bns, state, list(batches))


def input_batches(x: torch.Tensor, limit: int = 512, size: int = 128) -> list:
    """The first ``limit`` inputs of ``x`` (all of them if fewer) in batches of ``size``: the data
    BatchNorm statistics are recomputed on, and activation matching's statistics."""
    return [x[s:s + size] for s in range(0, min(limit, x.shape[0]), size)]


def accuracy(module: nn.Module, state: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 1024) -> float:
    """Classification accuracy of the architecture ``module`` holding ``state`` (eval mode; neither
    ``module``'s values nor its mode are changed)."""
    was = module.training
    module.eval()
    try:
        return _evaluate(module, dict(state), x, y, "ce", batch_size)[1]
    finally:
        module.train(was)


@torch.no_grad()
def _evaluate(net: nn.Module, state: dict, x: torch.Tensor, y: torch.Tensor, loss: str,
              batch_size: int) -> tuple:
    n = x.shape[0]
    tot, correct = 0.0, 0
    for s in range(0, n, batch_size):
        xb, yb = x[s:s + batch_size], y[s:s + batch_size]
        out = functional_call(net, state, (xb,))
        tot += float(task_loss(out[None], yb[None], loss)[0]) * xb.shape[0]
        if loss == "ce":
            correct += int((out.argmax(-1) == yb).sum())
    return tot / n, correct / n


class _Line:
    """The networks on the straight line from ``state_a`` to ``state_b``: ``line(lam)`` is the state at
    ``lam``, its BatchNorm statistics recomputed on ``reset_bn`` when given, for ``line.net`` (a private
    copy of ``module``, eval mode)."""

    def __init__(self, module: nn.Module, state_a: Mapping, state_b: Mapping,
                 reset_bn: Iterable[torch.Tensor] | None):
        self.net, self.bns = _cumulative_bn_copy(module)
        self.state_a, self.state_b = state_a, state_b
        self.batches = None if reset_bn is None else list(reset_bn)

    def __call__(self, lam: float) -> dict:
        state = interpolate(self.state_a, self.state_b, lam)
        if self.batches is not None and self.bns:
            state = _reset_bn_stats(self.net, self.bns, state, self.batches)
        return state


@torch.no_grad()
def interpolation_curve(module: nn.Module, state_a: Mapping[str, torch.Tensor],
                        state_b: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                        loss: str = "ce", num_lambdas: int = 25,
                        reset_bn: Iterable[torch.Tensor] | None = None, batch_size: int = 1024) -> dict:
    """Task loss (and accuracy) along the straight line from ``state_a`` to ``state_b``.

    Every network ``theta(lam) = (1 - lam) theta_A + lam theta_B`` is evaluated in eval mode with
    ``torch.func.functional_call`` on a private copy of ``module``: ``module`` itself (its parameters,
    buffers and train/eval flag) is neither used for its values nor modified.

    Args:
        module: an instance of the architecture of both state dicts.
        state_a: the network at ``lam = 0``.
        state_b: the network at ``lam = 1``, already aligned to A by the caller.
        x: (N, *input) evaluation inputs.
        y: (N,) class labels for ``loss="ce"``, or (N, *output) targets for ``loss="mse"``.
        loss: ``"ce"`` (mean cross-entropy, plus accuracy) or ``"mse"`` (mean squared error over all
            output entries), as in :func:`gnn_align.tasks.task_loss`.
        num_lambdas: number of equally spaced points on [0, 1], endpoints included (>= 2).
        reset_bn: input batches (e.g. a few training batches). If given, the BatchNorm running
            statistics of every interpolated network, endpoints included, are first recomputed: reset
            (mean 0, var 1, count 0), then accumulated over these batches in train mode as a cumulative
            average (``momentum=None``; see :func:`recompute_bn_stats`). Without it the running
            statistics are interpolated like every other tensor.
        batch_size: evaluation batch size.

    Returns:
        ``{"lambdas": [float], "loss": [float], "acc": [float] (only for "ce"), "bn_reset": bool}``.

    Raises:
        ValueError: unknown loss, ``num_lambdas < 2``, or mismatching state dicts.
    """
    check_loss(loss)
    if num_lambdas < 2:
        raise ValueError(f"num_lambdas must be at least 2, got {num_lambdas}")
    interpolate(state_a, state_b, 0.0)  # validate keys and shapes once, before any work
    at = _Line(module, state_a, state_b, reset_bn)
    lambdas = torch.linspace(0, 1, num_lambdas, dtype=torch.float64).tolist()
    losses, accs = [], []
    for lam in lambdas:
        value, acc = _evaluate(at.net, at(lam), x, y, loss, batch_size)
        losses.append(value)
        accs.append(acc)
    res = {"lambdas": lambdas, "loss": losses}
    if loss == "ce":
        res["acc"] = accs
    res["bn_reset"] = at.batches is not None
    return res


@torch.no_grad()
def midpoint_disagreement(module: nn.Module, state_a: Mapping[str, torch.Tensor],
                          state_b: Mapping[str, torch.Tensor], x: torch.Tensor, loss: str = "ce",
                          reset_bn: Iterable[torch.Tensor] | None = None, batch_size: int = 1024) -> float:
    """How far the midpoint ``(theta_A + theta_B) / 2`` departs from the ensemble of A and B on inputs
    ``x``; needs no labels. Where the barrier is low the midpoint behaves like the ensemble.

    ``ce``: mean over ``x`` of ``KL(p_ens || p_mid)`` with ``p_ens = (softmax f_A + softmax f_B) / 2``;
    ``mse``: root-mean-square of ``f_mid - (f_A + f_B) / 2``. 0 for a network and itself (B aligned
    to A by the caller, as in :func:`interpolation_curve`, whose ``reset_bn`` it shares).

    Shapes:
        x: (N, *input).
    """
    check_loss(loss)
    at = _Line(module, state_a, state_b, reset_bn)
    fa, fb, fm = (torch.cat([functional_call(at.net, state, (xb,)) for xb in x.split(batch_size)]).double()
                  for state in map(at, (0.0, 1.0, 0.5)))
    if loss == "mse":
        return float(((fm - (fa + fb) / 2) ** 2).mean().sqrt())
    ens = (fa.softmax(-1) + fb.softmax(-1)) / 2
    return float((ens * (ens.clamp_min(1e-300).log() - fm.log_softmax(-1))).sum(-1).mean())


def _values(values) -> torch.Tensor:
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if v.numel() < 2:
        raise ValueError(f"a curve needs at least 2 points, got {v.numel()}")
    return v


def _psi(losses) -> torch.Tensor:
    """Deep-Align's ``psi(lam) = L(lam) - ((1 - lam) L(0) + lam L(1))`` on ``linspace(0, 1, n)``."""
    v = _values(losses)
    lam = torch.linspace(0, 1, v.numel(), dtype=torch.float64)
    return v - ((1 - lam) * v[0] + lam * v[-1])


def barrier(losses) -> float:
    """Deep-Align's loss barrier: ``max_lam psi(lam)``, clipped at 0 (lambdas = ``linspace(0, 1, n)``)."""
    return float(_psi(losses).max().clamp(min=0))


def auc(losses) -> float:
    """Deep-Align's area under the barrier curve: the plain mean of ``psi`` over the n equally spaced
    points, endpoints included (where ``psi = 0``), clipped at 0. The trapezoid rule would give
    ``n / (n - 1)`` times this value."""
    return float(_psi(losses).mean().clamp(min=0))


def barrier_rebasin(losses) -> float:
    """Git Re-Basin's loss barrier: ``max_lam L(lam) - (L(0) + L(1)) / 2``, clipped at 0.

    Unlike :func:`barrier`, this is at least ``|L(0) - L(1)| / 2`` (reached at an endpoint), so it is
    positive even for a perfectly linear curve between endpoints of different loss.
    """
    v = _values(losses)
    return float((v.max() - 0.5 * (v[0] + v[-1])).clamp(min=0))


def accuracy_barrier(accs) -> float:
    """The accuracy drop below the straight line: ``max_lam ((1 - lam) acc(0) + lam acc(1)) - acc(lam)``,
    clipped at 0 (lambdas = ``linspace(0, 1, n)``)."""
    return float((-_psi(accs)).max().clamp(min=0))


def curve_metrics(curve: Mapping) -> dict:
    """Every metric that applies to a curve from :func:`interpolation_curve`.

    Returns:
        ``{"barrier_deepalign", "auc_deepalign", "barrier_rebasin", "acc_barrier" (when the curve has
        accuracies), "loss_a", "loss_b", "loss_mid" (L(0.5), when 0.5 is one of the lambdas)}``.

    Raises:
        ValueError: when the curve's lambdas are not ``linspace(0, 1, n)``.
    """
    losses = list(curve["loss"])
    lambdas = curve.get("lambdas")
    if lambdas is not None:
        expected = torch.linspace(0, 1, len(losses), dtype=torch.float64).tolist()
        if len(lambdas) != len(losses) or any(abs(a - b) > 1e-9 for a, b in zip(lambdas, expected, strict=True)):
            raise ValueError("curve lambdas must be linspace(0, 1, n) with one loss per lambda")
    else:
        lambdas = torch.linspace(0, 1, len(losses), dtype=torch.float64).tolist()
    res = {"barrier_deepalign": barrier(losses), "auc_deepalign": auc(losses),
           "barrier_rebasin": barrier_rebasin(losses)}
    if curve.get("acc") is not None:
        res["acc_barrier"] = accuracy_barrier(curve["acc"])
    res["loss_a"], res["loss_b"] = float(losses[0]), float(losses[-1])
    mid = [i for i, lam in enumerate(lambdas) if math.isclose(lam, 0.5, abs_tol=1e-9)]
    if mid:
        res["loss_mid"] = float(losses[mid[0]])
    return res


def _checked_pairs(perm: Mapping, target: Mapping) -> list:
    pairs = []
    for g, t in target.items():
        if g not in perm:
            raise ValueError(f"group '{g}' of the target is missing from the permutation")
        p, t = torch.as_tensor(perm[g]).reshape(-1), torch.as_tensor(t).reshape(-1)
        if p.numel() != t.numel():
            raise ValueError(f"group '{g}' has {p.numel()} entries in the permutation "
                             f"and {t.numel()} in the target")
        pairs.append((p, t.to(p.device)))
    return pairs


def matching_accuracy(perm: Mapping, target: Mapping) -> float:
    """Fraction of neurons, over all groups of ``target``, with ``perm[g][i] == target[g][i]``.

    Groups of ``perm`` that are not in ``target`` are ignored.

    Raises:
        ValueError: a target group missing from ``perm``, a size mismatch, or a target with no neurons.
    """
    pairs = _checked_pairs(perm, target)
    total = sum(t.numel() for _, t in pairs)
    if total == 0:
        raise ValueError("the target has no neurons")
    return sum(int((p == t).sum()) for p, t in pairs) / total


def exact_recovery(perm: Mapping, target: Mapping) -> bool:
    """Whether ``perm`` equals ``target`` on every group of ``target`` (vacuously true if it has none).

    Raises:
        ValueError: a target group missing from ``perm``, or a size mismatch.
    """
    return all(bool((p == t).all()) for p, t in _checked_pairs(perm, target))
