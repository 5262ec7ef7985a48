"""Activation matching (Git Re-Basin): match neurons by the correlation of their activations on data.

For every permutation group, the activations of A's and B's neurons (the outputs of the layers that
produce the group's node sets, i.e. pre-activation values, every spatial position of a feature map
counting as a sample) are correlated over the data; residual streams sum the correlations of all
their node sets; one linear assignment per group maximises the total correlation. Statistics are
streamed batch by batch, so memory does not grow with the data.

Attention (a spec with head groups or axis pieces, which has no graph structure): an ordinary group
(residual stream, MLP hidden) correlates the outputs of the modules whose weight's output axis it
permutes (``nn.Linear``, ``nn.LayerNorm``, ``nn.Embedding``, convolutions and batch norms), every
token counting as a sample. A head group and its within-head groups correlate the rows of the
projections they permute (q and k for the ``qk`` family, v for the ``v`` family), recomputed from
the input of the module owning the projection (an ``nn.Linear``, or ``nn.MultiheadAttention``'s
packed ``in_proj_weight``, which its forward reads without calling a submodule), and are solved
jointly as in weight matching: for every pair (A's head ``i``, B's head ``j``) the best within-head
assignment of each family and its total correlation, then the assignment of B's heads to A's slots
by those totals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn
from torch.func import functional_call

from ..errors import UnsupportedLayerError
from ..ot import hungarian
from ..spec import Axis, PermutationSpec, axis_pieces
from .weight_matching import MatchResult


class CorrelationStats:
    """Streamed first and second moments of paired activations ``a`` (A's neurons), ``b`` (B's).

    Shapes:
        ``update(a, b)``: a (samples, n), b (samples, n). ``correlation()``: (n, n), entry (i, j)
        the Pearson correlation of A's neuron i with B's neuron j.
    """

    def __init__(self, n: int):
        self.count = 0
        self.sa, self.sb = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        self.saa, self.sbb = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
        self.sab = torch.zeros(n, n, dtype=torch.float64)

    def update(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.detach().double(), b.detach().double()
        self.count += a.shape[0]
        self.sa += a.sum(0)
        self.sb += b.sum(0)
        self.saa += (a * a).sum(0)
        self.sbb += (b * b).sum(0)
        self.sab += a.T @ b

    def correlation(self, eps: float = 1e-12) -> torch.Tensor:
        n = self.count
        ma, mb = self.sa / n, self.sb / n
        cov = self.sab / n - ma[:, None] * mb[None, :]
        sa = (self.saa / n - ma * ma).clamp_min(0).sqrt()
        sb = (self.sbb / n - mb * mb).clamp_min(0).sqrt()
        return cov / (sa[:, None] * sb[None, :] + eps)


def _samples(t: torch.Tensor) -> torch.Tensor:
    """(batch, C, *spatial) -> (batch * prod(spatial), C)."""
    return t.movedim(1, -1).reshape(-1, t.shape[1])


def activation_matching(module: nn.Module, state_a: Mapping, state_b: Mapping, spec: PermutationSpec,
                        batches: Iterable[torch.Tensor]) -> MatchResult:
    """Align B to A by activation matching.

    Args:
        module: the architecture (its own parameters are not used or changed).
        state_a, state_b: the two networks' state dicts.
        spec: their spec, with structure (from :func:`gnn_align.spec_from_module`).
        batches: input batches (the data split is the caller's choice; say which in results).

    Returns:
        :class:`MatchResult` with the permutation to apply to B.

    Raises:
        StateDictError: a spec without structure (:meth:`~gnn_align.PermutationSpec.require_structure`)
            and without attention.
        UnsupportedLayerError: an attention spec with a group no supported module's output shows (the
            module docstring lists them), naming the group.

    Attention specs (head groups or axis pieces) take the path of the module docstring; a head group's
    within-head groups are solved with it, in the convention of :mod:`gnn_align.permute`.
    """
    if spec.heads or any(e is not None and not isinstance(e, Axis) for v in spec.axes.values() for e in v):
        return _attention_matching(module, state_a, state_b, spec, batches)
    st = spec.require_structure("activation matching")
    sets = {i: ns for i, ns in enumerate(st.nodesets) if ns.group is not None}
    stats = {i: CorrelationStats(ns.size) for i, ns in sets.items()}
    captured: dict = {}
    hooks = [module.get_submodule(ns.name).register_forward_hook(
        lambda _m, _inp, out, i=i: captured.__setitem__(i, out)) for i, ns in sets.items()]
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            for x in batches:
                functional_call(module, dict(state_a), (x,))
                acts_a = dict(captured)
                functional_call(module, dict(state_b), (x,))
                for i in sets:
                    stats[i].update(_samples(acts_a[i]), _samples(captured[i]))
    finally:
        for h in hooks:
            h.remove()
        module.train(was)
    perm = {}
    for g in spec.group_sizes:
        corr = sum(stats[i].correlation() for i, ns in sets.items() if ns.group == g)
        perm[g] = hungarian(corr)
    return MatchResult(perm)


#: modules whose output's features are the output axis of their ``weight`` (axis 0; nn.Embedding: axis 1)
_LAST_AXIS = (nn.Linear, nn.LayerNorm, nn.Embedding)
_CHANNEL_AXIS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)


def _key(name: str, param: str) -> str:
    return f"{name}.{param}" if name else param


def _rows(t: torch.Tensor, channel_axis: bool) -> torch.Tensor:
    """A module output as (samples, features): features last (tokens are samples), or on axis 1."""
    if channel_axis and t.dim() > 1:
        return _samples(t)
    return t.reshape(-1, t.shape[-1])


def _family(spec: PermutationSpec, head: str, key: str, axis: int, piece) -> int | None:
    """Index of the family of within-head groups of ``head`` acting on the same piece of ``key[axis]``."""
    for f, fam in enumerate(spec.heads.get(head, ())):
        if any(k == key and d == axis and p.start == piece.start for k, d, p in spec.pieces(fam[0])):
            return f
    return None


def _attention_matching(module: nn.Module, state_a: Mapping, state_b: Mapping, spec: PermutationSpec,
                        batches: Iterable[torch.Tensor]) -> MatchResult:
    """:func:`activation_matching` on a spec with attention heads (see the module docstring)."""
    inner = {g for fams in spec.heads.values() for fam in fams for g in fam}
    plain = [g for g in spec.group_sizes if g not in spec.heads and g not in inner]
    producers: dict = {}  # capture id -> (group, channel axis) for ordinary groups
    projections: dict = {}  # capture id -> [(head group, family, piece)] for head groups
    hooks, captured = [], {}

    def capture(cid):
        return lambda _m, _inp, out: captured.__setitem__(cid, out)

    def project(cid, param):  # rows of a projection, from the owner's input and its current tensors
        def hook(mod, args, kwargs):
            x = args[0] if args else kwargs.get("query", kwargs.get("input"))
            w = getattr(mod, param)
            captured[cid] = torch.nn.functional.linear(x, w, getattr(mod, param.replace("weight", "bias"), None))
        return hook

    try:
        for name, mod in module.named_modules():
            for param, t in mod.named_parameters(recurse=False):
                key = _key(name, param)
                entry = spec.axes.get(key, (None,))
                if isinstance(mod, _LAST_AXIS + _CHANNEL_AXIS) and param == "weight":
                    out_axis = 1 if isinstance(mod, nn.Embedding) else 0
                    a = spec.axes[key][out_axis] if key in spec.axes else None
                    if isinstance(a, Axis) and a.group in plain and a.block == 1:
                        producers[key] = (a.group, isinstance(mod, _CHANNEL_AXIS))
                        hooks.append(mod.register_forward_hook(capture(key)))
                if t.dim() != 2 or entry[0] is None or isinstance(entry[0], Axis):
                    continue
                found = [(p.group, _family(spec, p.group, key, 0, p), p) for p in axis_pieces(entry[0])
                         if p.group in spec.heads]
                if not found:
                    continue
                if any(f is None for _, f, _ in found):
                    raise UnsupportedLayerError("attention", "activation matching", f"a head group acts on "
                                                f"'{key}' where none of its within-head groups does")
                projections[key] = found
                hooks.append(mod.register_forward_pre_hook(project(key, param), with_kwargs=True))
        stats: dict = {}
        was = module.training
        fast = torch.backends.mha.get_fastpath_enabled() if hasattr(torch.backends, "mha") else None
        module.eval()
        try:
            if fast is not None:  # the fused encoder path would skip the hooked submodules
                torch.backends.mha.set_fastpath_enabled(False)
            with torch.no_grad():
                for x in batches:
                    captured.clear()
                    functional_call(module, dict(state_a), (x,))
                    acts_a = dict(captured)
                    captured.clear()
                    functional_call(module, dict(state_b), (x,))
                    for cid, (_, ch) in producers.items():
                        if cid not in acts_a or cid not in captured:  # not called (MHA's out_proj)
                            continue
                        a, b = _rows(acts_a[cid], ch), _rows(captured[cid], ch)
                        stats.setdefault(cid, CorrelationStats(a.shape[1])).update(a, b)
                    for cid, found in projections.items():
                        if cid not in acts_a or cid not in captured:
                            continue
                        a, b = _rows(acts_a[cid], False), _rows(captured[cid], False)
                        for h, f, p in found:
                            size = spec.group_sizes[h] * p.block
                            sl = slice(p.start, p.start + size)
                            stats.setdefault((cid, p.start), CorrelationStats(size)).update(a[:, sl], b[:, sl])
        finally:
            if fast is not None:
                torch.backends.mha.set_fastpath_enabled(fast)
            module.train(was)
    finally:
        for hk in hooks:
            hk.remove()
    seen = {producers[cid][0] for cid in producers if cid in stats}
    seen |= {h for cid, found in projections.items() for h, _, p in found if (cid, p.start) in stats}
    missing = [g for g in plain + list(spec.heads) if g not in seen]
    if missing:
        raise UnsupportedLayerError("attention", "activation matching", f"no module output on the data shows "
                                    f"group '{missing[0]}' (supported: outputs of Linear, LayerNorm, Embedding, Conv, "
                                    "BatchNorm, GroupNorm; projections of Linear or MultiheadAttention)")
    perm = {}
    for g in plain:
        perm[g] = hungarian(sum(stats[cid].correlation() for cid, (grp, _) in producers.items()
                                if grp == g and cid in stats))
    for h, fams in spec.heads.items():
        n = spec.group_sizes[h]
        d = [spec.group_sizes[fam[0]] for fam in fams]
        pair = [torch.zeros(n, n, di, di, dtype=torch.float64) for di in d]  # [fam][i, j]: A head i x B head j
        for cid, found in projections.items():
            for hh, f, p in found:
                if hh == h and (cid, p.start) in stats:
                    corr = stats[(cid, p.start)].correlation().reshape(n, d[f], n, d[f])
                    pair[f] += corr.permute(0, 2, 1, 3)
        best = torch.zeros(n, n, dtype=torch.float64)
        within = [[[None] * n for _ in range(n)] for _ in fams]
        for f in range(len(fams)):
            for i in range(n):
                for j in range(n):
                    within[f][i][j] = hungarian(pair[f][i, j])
                    best[i, j] += pair[f][i, j][torch.arange(d[f]), within[f][i][j]].sum()
        perm[h] = hungarian(best)
        for f, fam in enumerate(fams):
            perm.update({g: within[f][i][int(perm[h][i])] for i, g in enumerate(fam)})
    return MatchResult(perm)
