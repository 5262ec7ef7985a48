"""Alignment methods by name: what the benchmark, the warm-start study and :func:`gnn_align.align` run.

A method (:class:`Method`) is a function of a :class:`PairContext` (the architecture, the two state
dicts, their spec and, for data-driven methods, training inputs and targets) returning the
permutation that aligns B to A, in the convention of :mod:`gnn_align.permute`, with the data it uses.
:data:`METHODS`, the base registry, is read-only; a learned aligner's methods join it in the new
table :func:`method_table` returns.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch

from .baselines import activation_matching, matching_objective, sinkhorn_rebasin, ste_rebasin, weight_matching
from .baselines.ste import STE_BATCH, STE_STEPS
from .metrics import input_batches
from .permute import identity_permutation
from .refine import AUTO_BUDGET, SCORE_LIMIT, auto_align, keep_better, midpoint_loss, split_scoring


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
    budget: float | None = AUTO_BUDGET  # seconds ``auto`` may spend; None: its fixed plan
    info: dict = field(default_factory=dict)  # what a refining or choosing method did (Outcome.as_dict())
    #: caps of weight matching wherever it runs (``wm``, ``gnn+wm``, ``auto``'s candidates): ``max_sweeps``,
    #: ``time_limit`` (seconds), passed to :func:`~gnn_align.baselines.weight_matching`
    wm_limits: dict = field(default_factory=dict)

    def need(self, method: str, targets: bool = False) -> None:
        """Raise a ValueError naming ``method`` when the inputs (and ``targets``) it needs are missing."""
        if self.x_train is None or targets and self.y_train is None:
            what = "inputs and targets, data=(x, y)" if targets else "inputs, data=x or (x, y)"
            raise ValueError(f"method '{method}' needs training data ({what})")


def _am_batches(ctx: PairContext) -> list:
    ctx.need("am")
    return input_batches(ctx.x_train)


def _wm(c: PairContext, init: dict | None = None) -> dict:
    """Weight matching under ``c.wm_limits``; its sweeps (and, when a cap ended it before it converged,
    ``stopped``: ``"max_sweeps"`` or ``"time_limit"``) go to ``c.info``."""
    res = weight_matching(c.state_a, c.state_b, c.spec, init=init, generator=c.generator, **c.wm_limits)
    c.info["wm_sweeps"] = res.iterations
    if res.stopped:
        c.info["stopped"] = res.stopped
    return res.perm


#: optimisation steps and learning rate of Sinkhorn re-basin, from the identity (``sinkhorn``) or from a
#: prediction; the rate chosen on validation pairs of digits-mlp, digits-cnn and digits-resnet
#: (benchmarks/refine/sinkhorn-settings: 0.2 against 0.1 lowered the barrier on CNNs and ResNets by 3-13%,
#: and moved it by +1% / +4.5% on MLPs)
SINKHORN_STEPS, SINKHORN_LR = 300, 0.2
#: logit scale of a warm start: Sinkhorn re-basin's logits start at this times the predicted permutation
WARM_START_SCALE = 2.0
_SINKHORN_DATA = f"train split, {SINKHORN_STEPS} steps of batches of 256"


#: ``auto``'s refinement: a short Sinkhorn re-basin from the best candidate (tuned on validation pairs of
#: digits-mlp and digits-cnn: 60 steps at 0.3 beat 60 steps of STE re-basin on both)
AUTO_REFINE_STEPS, AUTO_REFINE_LR = 60, 0.3
#: from this many seconds left for it, ``auto`` refines by the full Sinkhorn re-basin of ``gnn+sinkhorn``
#: (:data:`SINKHORN_STEPS` at :data:`SINKHORN_LR`, still stopped when the budget is spent)
AUTO_LONG_REFINE = 3.0


#: ``auto``'s refiners, run from each start in turn: Sinkhorn re-basin with the loss's interpolation point
#: drawn from ``U(0, 1)``, then at the midpoint alone (better on some families, worse on others:
#: :func:`~gnn_align.baselines.sinkhorn_rebasin`'s ``lam_range``; the held-out score picks per pair)
AUTO_REFINE_LAMS = {"sinkhorn": (0.0, 1.0), "sinkhorn-mid": (0.5, 0.5)}


def auto_refine_schedule(seconds_left: float | None) -> dict:
    """Steps and learning rate of ``auto``'s Sinkhorn refinement with ``seconds_left``: the short schedule
    (:data:`AUTO_REFINE_STEPS` at :data:`AUTO_REFINE_LR`) without a clock (``None``) or under
    :data:`AUTO_LONG_REFINE` seconds, the full one of ``gnn+sinkhorn`` from there (a larger ``budget`` buys
    what the slowest refinement reaches)."""
    if seconds_left is None or seconds_left < AUTO_LONG_REFINE:
        return {"steps": AUTO_REFINE_STEPS, "lr": AUTO_REFINE_LR}
    return {"steps": SINKHORN_STEPS, "lr": SINKHORN_LR}


def _sinkhorn(c: PairContext, init: dict | None = None, init_scale: float = 1.0, steps: int = SINKHORN_STEPS,
              lr: float = SINKHORN_LR, budget: float | None = None, lam_range: tuple = (0.0, 1.0)) -> dict:
    c.need("sinkhorn", targets=True)
    return sinkhorn_rebasin(c.module, c.state_a, c.state_b, c.spec, c.x_train, c.y_train, loss=c.loss,
                            steps=steps, lr=lr, init=init, init_scale=init_scale, generator=c.generator,
                            budget=budget, lam_range=lam_range).perm


_STE_DATA = f"train split, {STE_STEPS} steps of batches of {STE_BATCH}"


def _ste(c: PairContext, init: dict | None = None, budget: float | None = None) -> dict:
    c.need("ste", targets=True)
    return ste_rebasin(c.module, c.state_a, c.state_b, c.spec, c.x_train, c.y_train, loss=c.loss, init=init,
                       budget=budget, generator=c.generator).perm


def _am(c: PairContext) -> dict:
    return activation_matching(c.module, c.state_a, c.state_b, c.spec, _am_batches(c)).perm


def _scorer(c: PairContext) -> Callable | None:
    """Midpoint loss on (up to SCORE_LIMIT of) the context's data; None without inputs and targets."""
    if c.x_train is None or c.y_train is None:
        return None
    x, y = c.x_train[:SCORE_LIMIT], c.y_train[:SCORE_LIMIT]
    return lambda perm: midpoint_loss(c.module, c.spec, c.state_a, c.state_b, perm, x, y, c.loss)


def refined(name: str, base: Callable, refiner: Callable, own_test: Callable | None = None) -> Callable:
    """The method ``name`` = ``refiner(ctx, init=base(ctx))``, returning the base's answer instead when the
    refined one fails ``own_test`` or, with data, has a higher midpoint loss (:func:`~gnn_align.refine.keep_better`).
    What was kept goes to ``ctx.info``."""
    def method(c: PairContext) -> dict:
        t0 = time.perf_counter()
        start = base(c)
        t1 = time.perf_counter()
        perm = refiner(c, init=start)
        b = name.split("+")[0]
        perm, out = keep_better((b, start, t1 - t0), (name, perm, time.perf_counter() - t1), _scorer(c), own_test)
        c.info.update(out.as_dict())
        return perm

    return method


def _wm_accepts(c: PairContext) -> Callable:
    return lambda before, after: (matching_objective(c.state_a, c.state_b, after, c.spec)
                                  >= matching_objective(c.state_a, c.state_b, before, c.spec))


def _auto_refine(c: PairContext, init: dict, left: float | None, lam_range: tuple) -> dict:
    return _sinkhorn(c, init=init, init_scale=WARM_START_SCALE, budget=left, lam_range=lam_range,
                     **auto_refine_schedule(left))


def auto_method(gnn: Callable | None) -> Callable:
    """``auto``: with inputs and targets, the best of gnn (when ``gnn`` is given), wm, am and gnn+wm by
    the midpoint loss on a held-out slice (:func:`~gnn_align.refine.split_scoring`), refined by
    Sinkhorn re-basins (:data:`AUTO_REFINE_LAMS`) from the best candidate (with ``ctx.budget`` seconds, until
    they are spent, also from the next ones and from the identity: :func:`~gnn_align.refine.auto_align`);
    without data, ``gnn`` (or ``wm``) with a one-line warning."""
    def method(c: PairContext) -> dict:
        if c.x_train is None or c.y_train is None:
            fallback = "gnn" if gnn is not None else "wm"
            warnings.warn(f"auto: no data (inputs and targets) given, using {fallback}", stacklevel=2)
            c.info.update(kept=fallback, note="no data")
            return gnn(c) if gnn is not None else _wm(c)
        xf, yf, xs, ys = split_scoring(c.x_train, c.y_train)
        fit = dataclasses.replace(c, x_train=xf, y_train=yf, info={})
        cands = {} if gnn is None else {"gnn": lambda _: gnn(fit)}
        cands |= {"wm": lambda _: _wm(fit), "am": lambda _: _am(fit)}
        if gnn is not None:
            cands["gnn+wm"] = lambda init: _wm(fit, init=init)
        score = lambda perm: midpoint_loss(c.module, c.spec, c.state_a, c.state_b, perm, xs, ys, c.loss)
        refine = {name: functools.partial(_auto_refine, fit, lam_range=lams) for name, lams in AUTO_REFINE_LAMS.items()}
        perm, out = auto_align(cands, refine, score, c.budget, starts={"naive": identity_permutation(c.spec)})
        c.info.update(out.as_dict())
        if "stopped" in fit.info:  # a cap ended one of the weight matching candidates
            c.info["stopped"] = fit.info["stopped"]
        return perm

    return method


@dataclass(frozen=True)
class Method:
    """An alignment method of the registry.

    Attributes:
        name: its name (``wm``, ``gnn+sinkhorn``, ...).
        fn: ``fn(PairContext) -> permutation`` aligning B to A.
        needs: the data it uses, in words (``none``, ``train split, first 512 inputs``, ...; what the
            benchmark's ``data used`` column says).
    """

    name: str
    fn: Callable = field(repr=False)
    needs: str = "none"

    def __call__(self, ctx: PairContext) -> dict:
        return self.fn(ctx)


#: the base registry, read-only: method name -> :class:`Method`; a learned aligner's methods come from
#: :func:`method_table`
METHODS: Mapping[str, Method] = MappingProxyType({m.name: m for m in (
    Method("naive", lambda c: identity_permutation(c.spec)),
    Method("wm", _wm),
    Method("am", _am, "train split, first 512 inputs"),
    Method("sinkhorn", _sinkhorn, _SINKHORN_DATA),
    Method("ste", _ste, _STE_DATA),
    Method("auto", auto_method(None), "train split: 80% to fit, 20% (≤ 1024) to choose"),
)})


def aligner_methods(aligner, name: str = "gnn") -> dict:
    """Methods of a trained :class:`~gnn_align.aligner.GNNAligner`: ``name`` (its prediction);
    ``name+wm``, ``name+sinkhorn`` and ``name+ste`` (the prediction as the optimiser's starting
    permutation, kept when the refinement does worse; the time includes the prediction); and
    ``auto`` (:func:`auto_method`), as ``{method name: Method}``. ``aligner`` is used only when a
    method runs."""
    def gnn(c: PairContext) -> dict:
        return aligner.align(c.state_a, c.state_b, c.spec)

    sink = lambda c, init: _sinkhorn(c, init=init, init_scale=WARM_START_SCALE)
    keep = " (train split, when given, to keep the better)"
    return {m.name: m for m in (
        Method(name, gnn),
        Method(f"{name}+wm", lambda c: refined(f"{name}+wm", gnn, _wm, _wm_accepts(c))(c), "none" + keep),
        Method(f"{name}+sinkhorn", refined(f"{name}+sinkhorn", gnn, sink), _SINKHORN_DATA + keep),
        Method(f"{name}+ste", refined(f"{name}+ste", gnn, _ste), _STE_DATA + keep),
        Method("auto", auto_method(gnn), METHODS["auto"].needs),
    )}


def method_table(aligner=None, name: str = "gnn", base: Mapping[str, Method] = METHODS) -> Mapping[str, Method]:
    """A new read-only table of methods: ``base`` (default the registry :data:`METHODS`) and, with
    ``aligner``, its :func:`aligner_methods` under ``name`` (its ``auto`` replacing the base's). A second
    aligner joins a table with ``method_table(other, "other", base=table)``; nothing is ever registered."""
    return MappingProxyType(dict(base) | (aligner_methods(aligner, name) if aligner is not None else {}))


def lookup(table: Mapping[str, Method], name: str) -> Method:
    """``table[name]``, where ``auto@SECONDS`` is ``auto`` with a budget of ``SECONDS`` (how a benchmark
    compares budgets in one table).

    Raises:
        KeyError: ``name`` is not in ``table`` (nor ``auto@`` a positive number).
    """
    base, at, seconds = name.partition("@")
    if not at:
        return table[name]
    try:
        budget = float(seconds)
    except ValueError:
        budget = -1.0
    if base != "auto" or base not in table or not budget > 0:
        raise KeyError(name)
    auto = table[base]
    return Method(name, lambda c: auto(dataclasses.replace(c, budget=budget)), auto.needs)


def has_method(table: Mapping[str, Method], name: str) -> bool:
    """Whether :func:`lookup` finds ``name`` in ``table``."""
    try:
        lookup(table, name)
    except KeyError:
        return False
    return True


def method_names(name: str = "gnn") -> tuple:
    """The names of :func:`method_table` with an aligner named ``name``, in order."""
    return tuple(dict(METHODS) | aligner_methods(None, name))
