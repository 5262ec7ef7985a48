"""The flat view of a network with attention: the graph form the learned aligner reads (issue 21).

A spec with attention nests its groups (:mod:`gnn_align.attention`): per attention ``P`` with ``H``
heads of ``d`` dimensions, a head group ``P.heads`` and the within-head groups ``P.h{i}.qk`` and
``P.h{i}.v``. A graph has one group per node set, so the graph form uses a *flat view* of the same
network, in which each attention has two ordinary groups:

* ``P.qk`` (``H * d`` neurons, head-major) permuting the query and the key rows (two node sets of
  one group, as residual node sets share a group): ``q_i . k_i`` is unchanged;
* ``P.v`` permuting the value rows and the output projection's input columns.

Every nested permutation is a flat one (:meth:`FlatView.flat_perm`, computed by
:func:`~gnn_align.permute.apply_permutation` on an index tensor: no second group action); a flat
permutation is a nested one only when it moves whole heads alike in both groups
(:meth:`FlatView.nested_perm`). A learned aligner's flat scores are decoded into a nested, so
function-preserving, permutation by :meth:`FlatView.decode`: for every head pair the best
within-head match of the ``qk`` and ``v`` scores, then a Hungarian step over heads
(:func:`~gnn_align.ot.hungarian_heads`, the step weight matching takes). Training reads the flat soft
matrices, a relaxation that is exact on head-respecting hard permutations.

The flat state dict (:meth:`FlatView.flatten`, exactly undone by :meth:`FlatView.unflatten`) is the
network's with three changes, so that it is an ordinary network of node sets and layers:

* a packed projection ``K`` (``nn.MultiheadAttention``'s ``in_proj_weight``/``in_proj_bias``) is split
  into its q, k and v rows ``K[0:E]``, ``K[E:2E]``, ``K[2E:3E]``;
* a learned positional embedding ``K`` (``(..., T, E)``, added to the tokens) becomes ``K.T``, shape
  ``(E, T)``: a layer from ``T`` fixed *position* input neurons to the stream it is added to;
* a LayerNorm over tokens becomes the norm features of the node set it normalises (a second one on
  the same node set, as in a post-LN stack with a final norm, goes to a copy of it joined by a skip).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .errors import PermutationError
from .ot import hungarian, hungarian_heads
from .permute import apply_permutation
from .spec import NODE_FEATURES, Layer, NetStructure, NodeSet, PermutationSpec, Piece


@dataclass(frozen=True)
class Part:
    """Flat tensor ``key`` taken from the network's tensor ``src`` (of shape ``shape``): its rows
    ``start:stop``, or (``transpose``) ``src.reshape(-1, E).T``."""

    key: str
    src: str
    shape: tuple
    start: int = 0
    stop: int = 0
    transpose: bool = False


@dataclass(frozen=True)
class FlatAttention:
    """One attention in the flat view: flat groups ``qk`` and ``v``, the nested head group ``heads``
    and its within-head families ``(qk groups, v groups)``, ``d`` dimensions a head."""

    qk: str
    v: str
    heads: str
    families: tuple
    d: int

    def flat_groups(self) -> tuple:
        return ((self.qk, self.families[0]), (self.v, self.families[1]))


@dataclass(frozen=True)
class FlatView:
    """The flat view of a spec with attention (see the module docstring).

    Args:
        spec: the flat :class:`PermutationSpec`, with the :class:`NetStructure` graphs are drawn from.
        parts: the flat tensors that are not the network's own (split packed projections,
            transposed positional embeddings).
        attention: one :class:`FlatAttention` per attention.
        keys: the network's keys, in order.
    """

    spec: PermutationSpec
    parts: tuple
    attention: tuple
    keys: tuple

    def flatten(self, state: Mapping[str, torch.Tensor]) -> dict:
        """The flat state dict of a network (views of its tensors, no copies)."""
        made = {p.src for p in self.parts}
        out = {k: state[k] for k in self.keys if k not in made}
        for p in self.parts:
            t = state[p.src]
            out[p.key] = t.reshape(-1, t.shape[-1]).T if p.transpose else t[p.start:p.stop]
        return out

    def unflatten(self, flat: Mapping[str, torch.Tensor]) -> dict:
        """The network's state dict from a flat one (the exact inverse of :meth:`flatten`)."""
        pieces: dict = {}
        for p in self.parts:
            pieces.setdefault(p.src, []).append(p)
        out = {}
        for k in self.keys:
            if k not in pieces:
                out[k] = flat[k]
            elif pieces[k][0].transpose:
                out[k] = flat[pieces[k][0].key].T.reshape(pieces[k][0].shape)
            else:
                out[k] = torch.cat([flat[p.key] for p in sorted(pieces[k], key=lambda p: p.start)])
        return out

    def _is_attention(self, group: str) -> bool:
        """Whether ``group`` is the ``qk`` or ``v`` group of an attention."""
        return any(group in (at.qk, at.v) for at in self.attention)

    def flat_perm(self, perm: Mapping[str, torch.Tensor]) -> dict:
        """The flat permutation of a nested one (groups of an attention left out stay out)."""
        out = {g: p for g, p in perm.items() if g in self.spec.group_sizes}
        for at in self.attention:
            if at.heads not in perm:
                continue
            for name, fam in at.flat_groups():
                h = len(fam)
                pieces = (Piece(at.heads, at.d, 0),) + tuple(Piece(g, 1, i * at.d) for i, g in enumerate(fam))
                mini = PermutationSpec({at.heads: h, **dict.fromkeys(fam, at.d)}, {"i": (pieces,)},
                                       heads={at.heads: (fam,)})
                sub = {g: perm[g] for g in (at.heads, *fam)}
                out[name] = apply_permutation({"i": torch.arange(h * at.d)}, sub, mini)["i"]
        return out

    def nested_perm(self, flat: Mapping[str, torch.Tensor]) -> dict:
        """The nested permutation of a flat one that moves whole heads, alike in ``qk`` and ``v``.

        Raises:
            PermutationError: a flat permutation that splits a head or moves the heads of ``qk`` and
                ``v`` differently (naming the group).
        """
        out = {g: p for g, p in flat.items() if not self._is_attention(g)}
        for at in self.attention:
            heads = None
            for name, fam in at.flat_groups():
                p = flat[name].reshape(len(fam), at.d)
                h = p[:, 0] // at.d
                if not torch.equal(p // at.d, h[:, None].expand_as(p)) or heads is not None and \
                        not torch.equal(h, heads):
                    raise PermutationError(f"flat permutation of '{name}' does not move whole heads alike in "
                                           f"'{at.qk}' and '{at.v}'")
                heads = h
                out.update({g: p[i] - h[i] * at.d for i, g in enumerate(fam)})
            out[at.heads] = heads
        return out

    def decode(self, scores: Mapping[str, torch.Tensor]) -> dict:
        """The nested permutation maximising flat scores (group -> (n, n), A's neurons by B's): the
        Hungarian algorithm per ordinary group, :func:`~gnn_align.ot.hungarian_heads` per attention."""
        out = {g: hungarian(s) for g, s in scores.items() if not self._is_attention(g)}
        for at in self.attention:
            h = len(at.families[0])
            pair = [scores[name].reshape(h, at.d, h, at.d).transpose(1, 2) for name, _ in at.flat_groups()]
            heads, within, _ = hungarian_heads(pair)
            out[at.heads] = heads
            for f, fam in enumerate(at.families):
                out.update(zip(fam, within[f], strict=True))
        return out


def _copy_set(sets: list, skips: list, copies: dict, ns: int) -> int:
    sets.append(dict(sets[ns], name=f"{sets[ns]['name']}.norm", features=[None] * len(NODE_FEATURES)))
    skips.append((ns, len(sets) - 1))
    copies[ns] = len(sets) - 1
    return len(sets) - 1


def build_view(tr, group_of, info: Mapping) -> FlatView:
    """The flat view of a traced network with attention (called by :func:`gnn_align.attention.build_spec`).

    Args:
        tr: the tracer (node sets, layers, skips, ``raw`` tensors and their ``roles``).
        group_of: node set index -> its flat group name, or None for fixed neurons.
        info: attention name -> ``(head group, families, d)``.

    A second LayerNorm on one node set (a post-LN stack with a final norm) goes to a copy of the node
    set, in its group, joined to it by an identity skip.
    """
    sets = [dict(s, features=list(s["features"]), group=group_of(i)) for i, s in enumerate(tr.sets)]
    layers, parts, skips, copies = list(tr.layers), [], list(tr.skips), {}
    for key, axes in tr.raw.items():
        t, role = tr.state_keys[key], tr.roles[key]
        if role in ("norm_weight", "norm_bias"):
            ns, col = axes[0][0][0], NODE_FEATURES.index(role)
            while sets[ns]["features"][col] is not None:  # a second LayerNorm (post-LN stack + final norm):
                ns = copies.get(ns) or _copy_set(sets, skips, copies, ns)  # on a copy joined by a skip
            sets[ns]["features"][col] = key
        elif role == "pos":
            ns, e = axes[-1][0][0], t.shape[-1]
            sets.append({"name": key, "size": t.numel() // e, "depth": 0, "kind": "input", "group": None,
                         "features": [None] * len(NODE_FEATURES)})
            parts.append(Part(f"{key}.T", key, tuple(t.shape), transpose=True))
            layers.append(Layer(f"{key}.T", len(sets) - 1, ns, (e, t.numel() // e)))
        else:  # a packed q/k/v projection
            for ns, start in axes[0]:
                stop = start + sets[ns]["size"]
                part = Part(f"{key}[{start}:{stop}]", key, tuple(t.shape), start, stop)
                parts.append(part)
                if t.dim() == 2:
                    layers.append(Layer(part.key, axes[1][0][0], ns, (stop - start, t.shape[1])))
                else:
                    sets[ns]["features"][0] = part.key
    nodesets = tuple(NodeSet(s["name"], s["size"], s["group"], s["kind"], s["depth"], tuple(s["features"]))
                     for s in sets)
    covered = {ly.weight for ly in layers} | {f for s in sets for f in s["features"]} | {p.src for p in parts}
    extras = tuple((k, tuple(t.shape), t.dtype) for k, t in tr.state_keys.items() if k not in covered)
    spec = PermutationSpec.from_structure(NetStructure(nodesets, tuple(layers), tuple(skips), extras))
    attention = tuple(FlatAttention(f"{a}.qk", f"{a}.v", h, fams, d) for a, (h, fams, d) in info.items())
    return FlatView(spec, tuple(parts), attention, tuple(tr.state_keys))
