"""Align and merge models in one call: :func:`align` and :func:`merge`.

Both take ``nn.Module`` s (or state dicts plus ``module=``, an instance of the architecture), derive
the permutation symmetry with :func:`~gnn_align.spec_from_module`, run a method of
:mod:`gnn_align.methods` and permute with :func:`~gnn_align.apply_permutation`, the one group action.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import GNNAlignError
from .memory import check_aligner_memory, graph_size
from .methods import METHODS, Method, PairContext, method_names, method_table
from .metrics import input_batches, recompute_bn_stats
from .models import check_state
from .models import example_input as guess_input
from .permute import apply_permutation
from .refine import AUTO_BUDGET, has_batchnorm
from .spec import PermutationSpec
from .testing import TOLERANCES
from .trace import spec_from_module

#: the methods :func:`align` and :func:`merge` offer: the registry's and a learned aligner's (:func:`method_names`),
#: less ``naive`` (the benchmark's baseline, the identity)
ALIGN_METHODS = tuple(m for m in method_names() if m != "naive")
#: tolerance of the function check (times max(1, max |B(x)|)) by the dtype it runs in: the one table,
#: :data:`gnn_align.testing.TOLERANCES` (1e-9 float64, 1e-4 float32, 1e-2 16-bit and any other dtype)
CHECK_TOL = TOLERANCES


def _groups(spec: PermutationSpec) -> str:
    sizes = spec.group_sizes
    if len(sizes) <= 6:
        return repr(dict(sizes))
    return f"{len(sizes)} ({min(sizes.values())}..{max(sizes.values())} neurons)"


@dataclass
class AlignResult:
    """The alignment of B to A.

    Attributes:
        perm: group name -> permutation of B's neurons (``apply_permutation(state_b, perm, spec)``
            is B aligned to A).
        state: that aligned state dict of B.
        seconds: wall time of the method (for ``gnn``: graphs, forward pass and Hungarian).
        max_abs_diff: max |B(x) - aligned B(x)| on the example inputs (a permutation must not change
            B's function; :func:`align` raises when it does).
        method, spec: the method and the permutation symmetry used.
        info: for refining methods and ``auto``: which answer was kept, every candidate's midpoint
            loss on held-out data and seconds (:class:`~gnn_align.refine.Outcome`).
    """

    perm: dict
    state: dict
    seconds: float
    max_abs_diff: float
    method: str
    spec: PermutationSpec = field(repr=False)
    module: nn.Module = field(repr=False)
    info: dict = field(default_factory=dict)

    def model(self) -> nn.Module:
        """A copy of the architecture holding B aligned to A (eval mode)."""
        net = copy.deepcopy(self.module).eval()
        net.load_state_dict(self.state)
        return net

    def __repr__(self) -> str:
        kept = f", kept={self.info['kept']!r}" if "kept" in self.info else ""
        return (f"AlignResult(method={self.method!r}, groups={_groups(self.spec)}, seconds={self.seconds:.3g}, "
                f"max_abs_diff={self.max_abs_diff:.3g}{kept})")

    def summary(self) -> dict:
        """JSON-ready figures: method, seconds, max |Δ|, group sizes and :attr:`info`."""
        return {"method": self.method, "seconds": self.seconds, "max_abs_diff": self.max_abs_diff,
                "groups": dict(self.spec.group_sizes)} | ({"info": self.info} if self.info else {})


def _state(model, name: str) -> dict:
    if isinstance(model, nn.Module):
        return {k: v.detach().clone() for k, v in model.state_dict().items()}
    if isinstance(model, Mapping):
        return {k: v.detach().clone() for k, v in model.items()}
    raise TypeError(f"{name}: expected an nn.Module or a state dict, got {type(model).__name__}")


def _split_data(data) -> tuple:
    if data is None:
        return None, None
    if isinstance(data, torch.Tensor):
        x, y = data, None
    elif isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    else:
        raise TypeError("data must be a tensor of inputs or a pair (inputs, targets) of tensors")
    _check_values(x, "data (inputs x)")
    if y is not None:
        _check_values(y, "data (targets y)")
        if len(y) != len(x):
            raise GNNAlignError(f"data: {len(x)} inputs x but {len(y)} targets y")
    return x, y


def _check_values(t: torch.Tensor, name: str) -> None:
    """Raise naming ``name`` when ``t`` has no samples, no values (meta device) or NaN/Inf values."""
    if t.dim() == 0 or t.shape[0] == 0 or t.numel() == 0:
        raise GNNAlignError(f"{name}: no samples (shape {tuple(t.shape)})")
    if t.is_meta:
        raise GNNAlignError(f"{name}: on the meta device (no values)")
    if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
        raise GNNAlignError(f"{name}: contains NaN or Inf values (shape {tuple(t.shape)})")


@torch.no_grad()
def _max_abs_diff(module: nn.Module, before: dict, after: dict, x: torch.Tensor) -> tuple:
    """``(max |f_after(x) - f_before(x)|, max |f_before(x)|, dtype the outputs were computed in)``;
    ``module`` is left holding ``after``."""
    module.load_state_dict(before)
    y0 = module(x)
    module.load_state_dict(after)
    return float((module(x) - y0).abs().max()), float(y0.abs().max()), y0.dtype


def _check_coverage(aligner, spec: PermutationSpec, module: nn.Module) -> None:
    """Warn, in one line, when the aligner reads ``module`` outside what it was trained on: kernels it
    pools to fit its ``edge_dim`` (named), or what :func:`~gnn_align.pretrained.coverage_problems` finds."""
    from .graph import describe_pooling, pooling_plan
    from .pretrained import coverage_problems, signature

    sig = signature(spec, module)
    edge_dim = aligner.config.edge_dim
    plan = pooling_plan(spec.graph_spec, edge_dim)
    problems = []
    if plan:  # what the aligner reads of those layers: the pooled lengths
        problems.append(f"kernels longer than its {edge_dim} values per edge were pooled for reading, "
                        f"kernel sums kept: {describe_pooling(plan)}")
        sig["edge_lens"] = sorted({k for k in sig["edge_lens"] if k <= edge_dim}
                                  | {math.prod(dst) for _, dst in plan.values()})
    trained = getattr(aligner, "meta", {}).get("trained_on")
    problems += coverage_problems(trained, sig) if trained else []
    if problems:
        warnings.warn("this model lies outside what the aligner was trained on (" + "; ".join(problems)
                      + "): its prediction may be poor; consider method='gnn+wm' or 'wm'", stacklevel=3)


class _Prepared:
    """Architecture, states, inputs and spec of models to align (validated once)."""

    def __init__(self, models: Sequence, module: nn.Module | None, data, example_input, seed: int):
        if module is None:
            if not isinstance(models[0], nn.Module):
                raise TypeError("models given as state dicts need module= (an instance of their architecture)")
            module = models[0]
        self.module = copy.deepcopy(module).eval()
        self.states = [_state(m, f"model {k}") for k, m in enumerate(models)]
        for k, s in enumerate(self.states):
            check_state(self.module, s, f"model {k}")
        if any(t.is_meta for t in self.module.state_dict().values()):  # an architecture without values
            device = next((t.device for t in self.states[0].values()), torch.device("cpu"))
            self.module.to_empty(device=device).load_state_dict(self.states[0])
        # everything runs in the architecture's dtype: float data, example inputs and the methods' states
        self.dtype = next((p.dtype for p in self.module.parameters() if p.is_floating_point()),
                          torch.get_default_dtype())
        cast = lambda t: t.to(self.dtype) if t is not None and t.is_floating_point() else t
        x, y = _split_data(data)
        self.x, self.y = cast(x), cast(y)
        self.work = [{k: cast(v) for k, v in s.items()} for s in self.states]
        self.gen = torch.Generator().manual_seed(seed)
        if example_input is None:
            example_input = self.x[:16] if self.x is not None else guess_input(self.module, 16, self.gen)
        else:
            _check_values(example_input, "example_input")
        self.example = cast(example_input)
        self.spec = spec_from_module(self.module, self.example[:8])


def _checked_aligner(prep: _Prepared, aligner):
    """``aligner`` (default the shipped one), once it is known to fit the model."""
    if aligner is None:
        from .pretrained import load_pretrained

        aligner = load_pretrained()  # the shipped name, whatever folders the working directory holds
    _check_coverage(aligner, prep.spec, prep.module)
    # a graph too large for the encoder is refused before anything is allocated
    check_aligner_memory(type(prep.module).__name__, graph_size(prep.spec), aligner.config,
                         float_bytes=next(aligner.parameters()).element_size())
    return aligner


def _gnn_table(prep: _Prepared, aligner) -> dict:
    """:func:`method_table` of ``aligner`` (default the shipped one), once it is known to fit the model."""
    return method_table(_checked_aligner(prep, aligner))


def _wm_limits(max_sweeps: int | None, time_limit: float | None) -> dict:
    """The weight matching caps given (:attr:`~gnn_align.methods.PairContext.wm_limits`), checked."""
    out = {}
    if max_sweeps is not None:
        if isinstance(max_sweeps, bool) or not isinstance(max_sweeps, int) or max_sweeps < 1:
            raise ValueError(f"max_sweeps must be a positive integer, got {max_sweeps!r}")
        out["max_sweeps"] = max_sweeps
    if time_limit is not None:
        if isinstance(time_limit, bool) or not isinstance(time_limit, (int, float)) or not time_limit > 0 \
                or not math.isfinite(time_limit):
            raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
        out["time_limit"] = float(time_limit)
    return out


def _run(prep: _Prepared, a: int, b: int, method: str, aligner, loss: str, atol: float | None,
         budget: float | None = AUTO_BUDGET, wm_limits: dict | None = None) -> AlignResult:
    if method not in ALIGN_METHODS and method not in METHODS:
        raise ValueError(f"unknown method '{method}'; choose from {', '.join(ALIGN_METHODS)}")
    table, note = METHODS, ""
    if not prep.spec.group_sizes:  # no hidden neurons: the empty alignment, whatever the method
        table, note = {method: Method(method, lambda c: {})}, "no hidden neurons to align"
    elif method.startswith("gnn"):
        table = _gnn_table(prep, aligner)
    elif method == "auto":
        try:
            table = _gnn_table(prep, aligner)
        except GNNAlignError as e:  # the aligner cannot read this model: choose among the others
            note = f"gnn left out: {e}"
    sb = prep.states[b]
    ctx = PairContext(prep.module, prep.spec, prep.work[a], prep.work[b], prep.x, prep.y, loss, prep.gen, budget,
                      wm_limits=wm_limits or {})
    t0 = time.perf_counter()
    perm = table[method](ctx)
    seconds = time.perf_counter() - t0
    state = apply_permutation(sb, perm, prep.spec)
    delta, scale, dtype = _max_abs_diff(prep.module, sb, state, prep.example)
    tol = atol if atol is not None else CHECK_TOL.get(dtype, 1e-2) * max(1.0, scale)
    if not delta <= tol:
        raise GNNAlignError(f"permuting B changed its function: max |delta| = {delta:.3e} > {tol:.1e}; the derived "
                            "symmetry does not hold for this model (please report it)")
    info = ctx.info | ({"note": "; ".join(filter(None, [ctx.info.get("note"), note]))} if note else {})
    return AlignResult(perm, state, seconds, delta, method, prep.spec, prep.module, info)


def align(model_a, model_b, method: str = "auto", aligner=None, data=None, *, module: nn.Module | None = None,
          example_input: torch.Tensor | None = None, loss: str = "ce", seed: int = 0,
          atol: float | None = None, budget: float | None = AUTO_BUDGET, max_sweeps: int | None = None,
          time_limit: float | None = None) -> AlignResult:
    """Align B to A: find the permutation of B's hidden neurons that best matches A.

    Args:
        model_a, model_b: two networks of one architecture (``nn.Module`` s, or state dicts with
            ``module=``).
        method: ``gnn`` (a learned aligner, one forward pass), ``wm`` (weight matching), ``am``
            (activation matching; needs inputs), ``sinkhorn`` or ``ste`` (Sinkhorn or straight-through
            re-basin; need inputs and targets), ``gnn+wm``, ``gnn+sinkhorn`` or ``gnn+ste`` (the
            learned prediction refined by the optimiser, kept when the refinement does worse), or
            ``auto`` (with inputs and targets, the best of gnn, wm, am and gnn+wm on held-out data,
            refined; without data, gnn: see :mod:`gnn_align.refine`).
        aligner: a :class:`~gnn_align.aligner.GNNAligner` for the ``gnn`` methods; default the
            pretrained one shipped in the package (which warns on models unlike its training zoo).
        data: training inputs ``x``, or ``(x, y)``: used by ``am`` and ``sinkhorn``, and as example inputs.
        module: the architecture, when the models are state dicts.
        example_input: inputs for the symmetry trace and the function check (default: from ``data``,
            else guessed from the first layer).
        loss: ``ce`` or ``mse``, the task loss of ``sinkhorn``.
        seed: seed of the methods' random choices.
        atol: tolerance of the function check (default by the dtype the check runs in, the
            architecture's: 1e-9 in float64, 1e-4 in float32, 1e-2 in 16 bits, times max(1, max |B(x)|)).
        budget: seconds ``auto`` may spend (its candidates always run; refinement gets what is left);
            ``None`` (default): its fixed plan, the best candidate refined once by each refiner, whose
            answer does not depend on the machine's speed.
        max_sweeps, time_limit: caps of weight matching (``wm``, the refinement of ``gnn+wm``,
            ``auto``'s candidates): at most this many sweeps, no new assignment started after this
            many seconds (default: 100 sweeps, no time limit). ``info["stopped"]`` says
            ``"max_sweeps"`` or ``"time_limit"`` when a cap ended it before it converged, and
            ``info["wm_sweeps"]`` how many sweeps it ran.

    Returns:
        :class:`AlignResult`.

    Models, data and example inputs in another floating dtype than the architecture's are
    computed in the architecture's; the aligned state keeps B's dtypes. A network with no hidden
    neurons gets the empty alignment ``{}`` whatever the method.

    Raises:
        StateDictError: a model that does not fit the architecture (names the key and both shapes),
            holds NaN/Inf, an integer, bool or complex tensor in place of a float, or no values
            (meta device).
        GNNAlignError: data or example inputs that are empty or hold NaN/Inf, or the permuted B
            does not compute what B computes.
    """
    limits = _wm_limits(max_sweeps, time_limit)
    prep = _Prepared([model_a, model_b], module, data, example_input, seed)
    return _run(prep, 0, 1, method, aligner, loss, atol, budget, limits)


@dataclass
class MergeResult:
    """``state``: the weighted average of the models aligned to the reference (BatchNorm statistics
    recomputed when data was given); ``alignments``: one :class:`AlignResult` per other model."""

    state: dict
    alignments: list
    bn_reset: bool
    module: nn.Module = field(repr=False)

    def __repr__(self) -> str:
        first = self.alignments[0]
        seconds = sum(r.seconds for r in self.alignments)
        worst = max(r.max_abs_diff for r in self.alignments)
        models = len(self.alignments) + (0 if "many" in first.info else 1)
        return (f"MergeResult(models={models}, method={first.method!r}, groups={_groups(first.spec)}, "
                f"seconds={seconds:.3g}, max_abs_diff={worst:.3g}, bn_reset={self.bn_reset})")

    def model(self) -> nn.Module:
        net = copy.deepcopy(self.module).eval()
        net.load_state_dict(self.state)
        return net


def _check_weights(weights: Sequence[float] | None, n: int) -> list:
    """``weights`` as n floats summing to 1 (equal by default), or a one-line ValueError naming the bad one."""
    if weights is None:
        return [1.0 / n] * n
    weights = list(weights)
    if len(weights) != n:
        raise ValueError(f"weights must be {n} non-negative numbers with a positive sum, got {len(weights)}")
    out = []
    for i, w in enumerate(weights):
        try:
            f = float(w) if not isinstance(w, (str, bytes, bool)) else math.nan
        except (TypeError, ValueError, RuntimeError):
            f = math.nan
        if not (math.isfinite(f) and f >= 0):
            raise ValueError(f"weight {i} is {w!r}: weights must be finite non-negative numbers")
        out.append(f)
    if sum(out) <= 0:
        raise ValueError(f"weights must be {n} non-negative numbers with a positive sum, got {weights}")
    return [f / sum(out) for f in out]


def average_states(states: Sequence[Mapping], weights: Sequence[float] | None = None) -> dict:
    """Weighted average of state dicts (weights normalised to sum 1; equal by default), in the first
    state's dtypes. Integer tensors (BatchNorm's ``num_batches_tracked``) are taken from the first state.

    Raises:
        ValueError: a weight that is not a finite non-negative number (naming it), the wrong number
            of weights, or weights summing to 0.
    """
    w = _check_weights(weights, len(states))
    return {k: sum(wi * s[k] for wi, s in zip(w, states, strict=True)).to(v.dtype) if v.is_floating_point()
            else v.clone() for k, v in states[0].items()}


#: how :func:`merge` brings N models into one frame
MANY = ("reference", "mergemany", "sync")


def _checked(prep: _Prepared, k: int, perm: dict, method: str, seconds: float, info: dict) -> AlignResult:
    """Model ``k`` moved by ``perm``, after checking that its function did not change."""
    state = apply_permutation(prep.states[k], perm, prep.spec)
    delta, scale, dtype = _max_abs_diff(prep.module, prep.states[k], state, prep.example)
    tol = CHECK_TOL.get(dtype, 1e-2) * max(1.0, scale)
    if not delta <= tol:
        raise GNNAlignError(f"permuting model {k} changed its function: max |delta| = {delta:.3e} > {tol:.1e}")
    return AlignResult(perm, state, seconds, delta, method, prep.spec, prep.module, info)


def _to_frame(prep: _Prepared, method: str, many: str, aligner, loss: str, budget: float | None, progress: bool,
              limits: dict) -> list:
    """One :class:`AlignResult` per model, moving it into a frame shared by all (no reference):
    MergeMany from ``method``'s alignments to model 0, or the synchronisation of all pairwise ones."""
    from .mergemany import merge_many, synchronize

    t0, n = time.perf_counter(), len(prep.states)
    if many == "mergemany":
        init = [{g: torch.arange(s) for g, s in prep.spec.group_sizes.items()}]
        init += [_run(prep, 0, k, method, aligner, loss, None, budget, limits).perm
                 for k in tqdm(range(1, n), desc="aligning to model 0", disable=not progress)]
        match = None  # weight matching against the average of the others, unless the aligner is asked for
        if method == "gnn":
            learned = _checked_aligner(prep, aligner)
            dtype = next(learned.parameters()).dtype
            match = lambda target, state, start: learned.align({k: v.to(dtype) for k, v in target.items()},
                                                               state, prep.spec)
        perms, rounds = merge_many(prep.work, prep.spec, init, match, prep.gen, progress=progress)
    else:
        pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
        if method == "gnn":
            from .population import _Embedded

            found = _Embedded(prep, _checked_aligner(prep, aligner)).perms(pairs)
        else:
            found = [_run(prep, i, j, method, aligner, loss, None, budget, limits).perm
                     for i, j in tqdm(pairs, desc="aligning pairs", disable=not progress)]
        perms, rounds = synchronize(dict(zip(pairs, found, strict=True)), n, prep.spec)
    seconds = (time.perf_counter() - t0) / n
    info = {"many": many, "rounds": rounds}
    return [_checked(prep, k, perms[k], f"{method}/{many}", seconds, info) for k in range(n)]


def merge(models: Sequence, weights: Sequence[float] | None = None, method: str = "auto", data=None, *,
          aligner=None, module: nn.Module | None = None, reference: int = 0, many: str = "reference",
          example_input: torch.Tensor | None = None, loss: str = "ce", seed: int = 0,
          progress: bool = False, budget: float | None = AUTO_BUDGET, max_sweeps: int | None = None,
          time_limit: float | None = None) -> MergeResult:
    """Align every model to ``models[reference]`` with ``method`` (see :func:`align`), then average.

    With ``many="mergemany"`` or ``"sync"`` no model is the reference: all are moved into one shared
    frame (:mod:`gnn_align.mergemany`) — Git Re-Basin's MergeMany weight matching started from
    ``method``'s alignments to model 0, or the cycle-consistent synchronisation of ``method``'s
    alignments of every pair — and ``alignments`` then holds one result per model, in that frame.

    With BatchNorm layers, the merged network's running statistics are recomputed on ``data``'s
    inputs (up to 1024, batches of 128) when given; without data a warning says they are stale.

    ``max_sweeps`` and ``time_limit`` cap weight matching in every pairwise alignment (see :func:`align`).

    Raises:
        ValueError: fewer than two models, or bad ``weights`` (checked before any alignment runs).
    """
    if len(models) < 2:
        raise ValueError(f"merge needs at least 2 models, got {len(models)}")
    _check_weights(weights, len(models))
    limits = _wm_limits(max_sweeps, time_limit)
    if not 0 <= reference < len(models):
        raise ValueError(f"reference {reference} is not a model index (0..{len(models) - 1})")
    if many not in MANY:
        raise ValueError(f"unknown many '{many}'; choose from {', '.join(MANY)}")
    prep = _Prepared(list(models), module, data, example_input, seed)
    if many == "reference":
        others = [k for k in range(len(models)) if k != reference]
        results = [_run(prep, reference, k, method, aligner, loss, None, budget, limits)
                   for k in tqdm(others, desc=f"aligning to model {reference}", disable=not progress)]
        aligned = [r.state for r in results]
        aligned.insert(reference, prep.states[reference])
    else:
        results = _to_frame(prep, method, many, aligner, loss, budget, progress, limits)
        aligned = [r.state for r in results]
    merged = average_states(aligned, weights)
    has_bn = has_batchnorm(prep.module)
    if has_bn and prep.x is not None:
        merged = recompute_bn_stats(prep.module, merged, input_batches(prep.x, limit=1024))
    elif has_bn:
        warnings.warn("the merged network has BatchNorm layers but no data was given: its running statistics "
                      "are averages of the models' and may be far off; pass data= to recompute them", stacklevel=2)
    return MergeResult(merged, results, has_bn and prep.x is not None, prep.module)
