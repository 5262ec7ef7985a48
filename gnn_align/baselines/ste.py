"""Straight-through estimator re-basin (Git Re-Basin, Ainsworth et al., ICLR 2023, Section 3.3).

A free copy ``W`` of the network's learnable tensors is trained; every step projects it onto B's
permutation orbit by weight matching (``pi = argmax_pi <W, pi . theta_B>``, warm-started from the
previous step's ``pi``) and takes the task loss of the midpoint ``(theta_A + pi . theta_B) / 2`` on a
data batch, with the projection's gradient passed straight through to ``W``
(``pi . theta_B + W - stop_grad(W)``). The answer is the projection of the final ``W``. BatchNorm
layers normalise with the batch's statistics (:func:`gnn_align.losses.state_task_loss`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import torch
from torch import nn

from ..losses import state_task_loss
from ..metrics import interpolate
from ..permute import apply_permutation, identity_permutation
from ..spec import PermutationSpec
from .weight_matching import MatchResult, weight_matching

#: default steps, learning rate (relative to each tensor's RMS) and batch size, tuned on digits-mlp validation pairs
STE_STEPS, STE_LR, STE_BATCH = 60, 0.05, 256


def ste_rebasin(module: nn.Module, state_a: Mapping, state_b: Mapping, spec: PermutationSpec, x: torch.Tensor,
                y: torch.Tensor, *, loss: str = "ce", steps: int = STE_STEPS, batch_size: int = STE_BATCH,
                lr: float = STE_LR,
                lam: float | None = 0.5, init: Mapping | None = None, budget: float | None = None,
                generator: torch.Generator | None = None) -> MatchResult:
    """Align B to A with the straight-through estimator.

    Args:
        module: the architecture (see :func:`gnn_align.losses.state_task_loss`).
        x, y: training data; each step draws a batch of ``batch_size`` from ``generator``.
        steps: at most this many steps (Adam, learning rate ``lr`` relative to each tensor's RMS).
        lam: the interpolation point of the loss (``None``: uniform in [0, 1], drawn every step).
        init: where the first projection's weight matching starts (default the identity). ``W``
            always starts at ``theta_A``: started on B's orbit (at ``init . theta_B``) its projection
            barely moves (digits-mlp validation pairs: 0.061 against 0.049, 16 pairs).
        budget: stop after this many seconds (checked after every step); ``None``: run all steps.
        generator: source of the batches and of weight matching's group order.

    Returns:
        :class:`MatchResult` with the final projection; ``objective`` holds every step's batch loss and
        ``iterations`` the steps taken.
    """
    t0 = time.perf_counter()
    keys = spec.learnable_keys()
    scale = {k: float(state_a[k].detach().pow(2).mean().sqrt()) or 1.0 for k in keys}
    # W is stored divided by each tensor's RMS, so one learning rate suits every layer
    free = {k: (state_a[k].detach() / scale[k]).clone().requires_grad_() for k in keys}
    opt = torch.optim.Adam(free.values(), lr=lr)
    perm = dict(init) if init is not None else identity_permutation(spec)
    history = []
    for _ in range(steps):
        w = {k: v.detach() * scale[k] for k, v in free.items()}
        perm = weight_matching(w, state_b, spec, init=perm, generator=generator, max_sweeps=5).perm
        proj = apply_permutation(state_b, perm, spec)
        ste = dict(proj)
        for k in keys:
            ste[k] = proj[k] + (free[k] - free[k].detach()) * scale[k]
        idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=generator)
        t = float(torch.rand((), generator=generator)) if lam is None else lam
        value = state_task_loss(module, interpolate(state_a, ste, t), x[idx], y[idx], loss)
        history.append(float(value.detach()))
        opt.zero_grad()
        value.backward()
        opt.step()
        if budget is not None and time.perf_counter() - t0 > budget:
            break
    w = {k: v.detach() * scale[k] for k, v in free.items()}
    perm = weight_matching(w, state_b, spec, init=perm, generator=generator, max_sweeps=5).perm  # the last step's W
    return MatchResult(perm, objective=history, iterations=len(history))
