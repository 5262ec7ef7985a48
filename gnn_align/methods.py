"""Alignment methods by name: what the benchmark, the warm-start study and :func:`gnn_align.align` run.

A method is a function of a :class:`PairContext` (the architecture, the two state dicts, their spec
and, for data-driven methods, training inputs and targets) returning the permutation that aligns B
to A, in the convention of :mod:`gnn_align.permute`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .baselines import activation_matching, sinkhorn_rebasin, weight_matching
from .metrics import input_batches
from .permute import identity_permutation


@dataclass
class PairContext:
    """What a method may use to align B to A. ``x_train``/``y_train``: the training split of A's task
    (:func:`~gnn_align.tasks.network_task`; in INR zoos the shared signal's 128 grid points), or
    ``None`` where the caller has no data (then only data-free methods run)."""

    module: torch.nn.Module
    spec: object
    state_a: dict
    state_b: dict
    x_train: torch.Tensor | None
    y_train: torch.Tensor | None
    loss: str
    generator: torch.Generator

    def need(self, method: str, targets: bool = False) -> None:
        """Raise a ValueError naming ``method`` when the inputs (and ``targets``) it needs are missing."""
        if self.x_train is None or targets and self.y_train is None:
            what = "inputs and targets, data=(x, y)" if targets else "inputs, data=x or (x, y)"
            raise ValueError(f"method '{method}' needs training data ({what})")


def _am_batches(ctx: PairContext) -> list:
    ctx.need("am")
    return input_batches(ctx.x_train)


def _wm(c: PairContext, init: dict | None = None) -> dict:
    return weight_matching(c.state_a, c.state_b, c.spec, init=init, generator=c.generator).perm


#: optimisation steps of Sinkhorn re-basin, from the identity (``sinkhorn``) or from a prediction
SINKHORN_STEPS = 300
#: logit scale of a warm start: Sinkhorn re-basin's logits start at this times the predicted permutation
WARM_START_SCALE = 2.0
_SINKHORN_DATA = f"train split, {SINKHORN_STEPS} steps of batches of 256"


def _sinkhorn(c: PairContext, init: dict | None = None, init_scale: float = 1.0) -> dict:
    c.need("sinkhorn", targets=True)
    return sinkhorn_rebasin(c.module, c.state_a, c.state_b, c.spec, c.x_train, c.y_train, loss=c.loss,
                            steps=SINKHORN_STEPS, init=init, init_scale=init_scale, generator=c.generator).perm


#: method name -> (function of a PairContext returning a permutation, data it uses)
METHODS: dict = {
    "naive": (lambda c: identity_permutation(c.spec), "none"),
    "wm": (_wm, "none"),
    "am": (lambda c: activation_matching(c.module, c.state_a, c.state_b, c.spec, _am_batches(c)).perm,
           "train split, first 512 inputs"),
    "sinkhorn": (_sinkhorn, _SINKHORN_DATA),
}


def register_method(name: str, fn: Callable, data: str = "none") -> None:
    """Add an alignment method (``fn(PairContext) -> permutation``) to the benchmark."""
    METHODS[name] = (fn, data)


def aligner_methods(aligner, name: str = "gnn") -> dict:
    """Methods of a trained :class:`~gnn_align.aligner.GNNAligner`: ``name`` (its prediction),
    ``name+wm`` and ``name+sinkhorn`` (the prediction as the optimiser's starting permutation; the
    time includes the prediction), as ``{method: (function, data it uses)}``."""
    def gnn(c: PairContext) -> dict:
        return aligner.align(c.state_a, c.state_b, c.spec)

    return {name: (gnn, "none"), f"{name}+wm": (lambda c: _wm(c, init=gnn(c)), "none"),
            f"{name}+sinkhorn": (lambda c: _sinkhorn(c, init=gnn(c), init_scale=WARM_START_SCALE), _SINKHORN_DATA)}


def register_aligner(aligner, name: str = "gnn") -> list:
    """Register :func:`aligner_methods` of ``aligner`` in :data:`METHODS`; returns the method names."""
    added = aligner_methods(aligner, name)
    METHODS.update(added)
    return list(added)
