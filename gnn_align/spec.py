"""Permutation specs: which axes of which tensors share which permutation group.

A :class:`PermutationSpec` is the compact, Git Re-Basin-style statement of a network's symmetry
(``axes``: key -> one entry per tensor axis, ``None`` or an :class:`Axis` naming a group). When it is
derived by :func:`gnn_align.spec_from_module` it also carries a :class:`NetStructure`: the neuron
layers ("node sets"), the weight tensors that connect them and the residual skips, which is what
:func:`gnn_align.to_graph` needs to draw the network as a graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from .errors import StateDictError, UnsupportedLayerError, check_keys

#: Node feature columns of a graph, in order. A node set names the state-dict key of each (or None).
NODE_FEATURES = ("bias", "norm_weight", "norm_bias", "running_mean", "running_var")

NODE_INPUT, NODE_HIDDEN, NODE_OUTPUT = 0, 1, 2
_KINDS = {"input": NODE_INPUT, "hidden": NODE_HIDDEN, "output": NODE_OUTPUT}


class Axis(NamedTuple):
    """A tensor axis acted on by permutation group ``group``.

    The axis has ``size(group) * block`` entries: entry ``i * block + r`` belongs to neuron ``i``
    (``block > 1`` after flattening a ``C x H x W`` feature map into a Linear layer, block = H*W).
    """

    group: str
    block: int = 1


class Piece(NamedTuple):
    """A piece of a tensor axis acted on by ``group``: entries ``start .. start + size * block - 1``
    (attention: the q, k or v rows of a packed projection, or one head; block = head size for a
    head group). See :data:`AxisSpec`."""

    group: str
    block: int = 1
    start: int = 0


#: One entry per tensor axis: ``None`` (not permuted), an :class:`Axis` (the whole axis), or a tuple of
#: :class:`Piece` s, each acting on entries ``start .. start + size * block - 1`` of the axis, in
#: the listed order (attention: packed q/k/v rows, a head group and its within-head groups; see
#: :mod:`gnn_align.permute` for the order and :attr:`PermutationSpec.heads`).
AxisSpec = tuple


def _as_axis(a) -> Axis | tuple | None:
    if a is None or isinstance(a, Axis):
        return a
    if isinstance(a, str):
        return Axis(a)
    if isinstance(a, tuple) and a and all(isinstance(p, (Axis, Piece)) for p in a):
        return tuple(Piece(*p) for p in a)
    if isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], str):
        return Axis(str(a[0]), int(a[1]))
    raise TypeError(f"axis entry must be None, a group name, (group, block) or a tuple of Piece, got {a!r}")


def axis_pieces(entry) -> tuple:
    """The :class:`Axis` or :class:`Piece` s of one entry of ``spec.axes``, in order: ``()`` for None."""
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, Axis) else tuple(entry)


@dataclass(frozen=True)
class NodeSet:
    """One layer of neurons (or channels) of the computation graph.

    Args:
        name: module path of the layer that produces it (``"input"`` for the input).
        size: number of neurons / channels.
        group: permutation group it belongs to, ``None`` for fixed (input/output) neurons.
        kind: ``"input"``, ``"hidden"`` or ``"output"``.
        depth: number of weight layers on the longest path from the input.
        features: state-dict key for each column of :data:`NODE_FEATURES`, or ``None``.
    """

    name: str
    size: int
    group: str | None
    kind: str
    depth: int
    features: tuple = (None,) * len(NODE_FEATURES)

    @property
    def kind_id(self) -> int:
        return _KINDS[self.kind]


@dataclass(frozen=True)
class Layer:
    """A weight tensor: edges from every neuron of node set ``src`` to every neuron of ``dst``.

    ``shape`` is the weight's shape; it is read as ``(out, in, k)`` with ``k`` values per edge
    (the flattened kernel, or the ``block`` entries of a flattened feature map, or 1).
    """

    weight: str
    src: int
    dst: int
    shape: tuple
    block: int = 1

    @property
    def edge_len(self) -> int:
        n = 1
        for s in self.shape[2:]:
            n *= s
        return n * self.block


@dataclass(frozen=True)
class NetStructure:
    """The computation graph of a network: node sets, weight layers, identity skips, extras.

    ``skips`` are pairs ``(src, dst)`` of node sets joined by a residual addition: neuron ``i`` of
    ``src`` is added to neuron ``i`` of ``dst`` (both in one group). ``extras`` lists the tensors
    with no place in the graph (e.g. BatchNorm's ``num_batches_tracked``) as (key, shape, dtype).
    """

    nodesets: tuple
    layers: tuple
    skips: tuple = ()
    extras: tuple = ()

    def axes(self) -> dict:
        grp = [ns.group for ns in self.nodesets]
        out: dict = {}
        for ly in self.layers:
            src = None if grp[ly.src] is None else Axis(grp[ly.src], ly.block)
            dst = None if grp[ly.dst] is None else Axis(grp[ly.dst])
            out[ly.weight] = (dst, src) + (None,) * (len(ly.shape) - 2)
        for ns in self.nodesets:
            for key in ns.features:
                if key is not None:
                    out[key] = (None if ns.group is None else Axis(ns.group),)
        for key, shape, _ in self.extras:
            out[key] = (None,) * len(shape)
        return out


@dataclass(frozen=True)
class PermutationSpec:
    """Which axes of which parameters and buffers share which permutation group.

    Args:
        group_sizes: group name -> number of neurons it permutes (ordered: group ids follow it).
        axes: state-dict key -> one entry per tensor axis: ``None`` (not permuted), a group name,
            or an :class:`Axis` ``(group, block)``. Keys with no permuted axis are listed too.
        structure: the computation graph, when derived by :func:`spec_from_module`; needed by
            :func:`to_graph`. Not part of equality: two specs are equal when their symmetry is.
        heads: attention only: head group -> its within-head groups, one tuple per family (the
            ``qk`` groups, then the ``v`` groups), slot by slot: group ``families[f][i]`` permutes the
            dimensions of the head in slot ``i``. Such groups do not compose group by group: see
            :func:`~gnn_align.permute.compose_permutations`.
        flat: attention only: the :class:`~gnn_align.flat.FlatView` graphs are drawn from (set by
            :func:`spec_from_module`; not part of equality).

    Example (a 2-hidden-layer MLP)::

        PermutationSpec({"h1": 8, "h2": 8}, {
            "0.weight": ("h1", None), "0.bias": ("h1",),
            "2.weight": ("h2", "h1"), "2.bias": ("h2",),
            "4.weight": (None, "h2"), "4.bias": (None,)})
    """

    group_sizes: Mapping[str, int]
    axes: Mapping[str, tuple]
    structure: NetStructure | None = field(default=None, compare=False, repr=False)
    heads: Mapping[str, tuple] = field(default_factory=dict)
    flat: object = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "group_sizes", {str(g): int(n) for g, n in self.group_sizes.items()})
        axes = {k: tuple(_as_axis(a) for a in v) for k, v in self.axes.items()}
        object.__setattr__(self, "axes", axes)
        heads = {str(h): tuple(tuple(str(g) for g in fam) for fam in fams) for h, fams in self.heads.items()}
        object.__setattr__(self, "heads", heads)
        for key, spec in axes.items():
            for entry in spec:
                for a in axis_pieces(entry):
                    if a.group not in self.group_sizes:
                        raise StateDictError(f"key '{key}' uses unknown permutation group '{a.group}'")
        for h, fams in heads.items():
            for g in (h,) + tuple(g for fam in fams for g in fam):
                if g not in self.group_sizes:
                    raise StateDictError(f"heads of '{h}' name unknown permutation group '{g}'")
            if any(len(fam) != self.group_sizes[h] for fam in fams):
                raise StateDictError(f"head group '{h}' has {self.group_sizes[h]} heads, but a family of "
                                     "within-head groups has not one group per head")

    @classmethod
    def from_structure(cls, structure: NetStructure) -> PermutationSpec:
        sizes: dict = {}
        for ns in structure.nodesets:
            if ns.group is not None:
                sizes.setdefault(ns.group, ns.size)
        return cls(sizes, structure.axes(), structure)

    @property
    def graph_spec(self) -> PermutationSpec:
        """The spec graphs of this network are drawn with: its flat view's for a network with
        attention (:mod:`gnn_align.flat`), else itself."""
        return self if self.flat is None else self.flat.spec

    @property
    def groups(self) -> list:
        return list(self.group_sizes)

    def require_structure(self, what: str) -> NetStructure:
        """The spec's graph structure, which ``what`` needs (the one check of it in gnn_align).

        Args:
            what: what needs the structure, the start of the message (``"to_graph"``).

        Raises:
            UnsupportedLayerError: for a spec with attention (head groups or axis pieces), whose graph form
                is its flat view's (:attr:`graph_spec`).
            StateDictError: ``"<what> needs a PermutationSpec with graph structure, and this one has
                none: derive it with gnn_align.spec_from_module(module, example_input)"``, for a spec
                written by hand (or built without a structure).
        """
        if self.heads or any(isinstance(e, tuple) and not isinstance(e, Axis) for v in self.axes.values() for e in v):
            raise UnsupportedLayerError("attention", what, "a spec with attention (head groups, axis pieces) has "
                                        "no structure of its own; its graph is that of its flat view (spec.graph_spec)")
        if self.structure is None:
            raise StateDictError(f"{what} needs a PermutationSpec with graph structure, and this one has none: derive "
                                 "it with gnn_align.spec_from_module(module, example_input)")
        return self.structure

    def acts_on(self, group: str) -> list:
        """(key, axis, block) triples of every tensor axis (or piece of one) that ``group`` permutes."""
        return [(k, d, a.block) for k, d, a in self.pieces(group)]

    def pieces(self, group: str) -> list:
        """(key, axis, :class:`Axis` or :class:`Piece`) triples of every tensor axis or piece that ``group``
        permutes."""
        return [(k, d, a) for k, spec in self.axes.items() for d, entry in enumerate(spec)
                for a in axis_pieces(entry) if a.group == group]

    def learnable_keys(self) -> list:
        """Keys of the weights, biases and normalisation weights/biases: what alignment objectives
        and augmentations act on. Running statistics and tensors with no place in the graph
        (``num_batches_tracked``) are left out when the spec has a structure; without one, all keys."""
        if self.structure is None:
            return list(self.axes)
        st = self.structure
        keys = [ly.weight for ly in st.layers]
        for ns in st.nodesets:
            keys += [k for k in ns.features[:3] if k is not None]
        return keys

    def validate(self, state_dict: Mapping[str, torch.Tensor] | None = None,
                 check_finite: bool = True) -> None:
        """Check the spec against itself and, if given, against a state dict.

        Raises:
            StateDictError: naming the first missing/unexpected key (:func:`~gnn_align.errors.check_keys`),
                the key whose axis size disagrees with its group's size, or the key holding NaN/Inf values.
        """
        if state_dict is None:
            return
        check_keys(state_dict, self.axes, "state dict", "the spec")
        shapes = _structure_shapes(self.structure)
        for key, spec in self.axes.items():
            t = state_dict[key]
            if not isinstance(t, torch.Tensor):
                raise StateDictError(f"value of key '{key}' is a {type(t).__name__}, not a tensor")
            if key in shapes and tuple(t.shape) != shapes[key]:
                raise StateDictError(f"key '{key}' has shape {tuple(t.shape)}, expected {shapes[key]}")
            if t.dim() != len(spec):
                raise StateDictError(f"key '{key}' has shape {tuple(t.shape)}: {t.dim()} axes, the spec lists "
                                     f"{len(spec)}")
            want = tuple(n if not isinstance(a, Axis) else self.group_sizes[a.group] * a.block
                         for n, a in zip(t.shape, spec))
            for d, entry in enumerate(spec):
                for a in axis_pieces(entry) if isinstance(entry, tuple) and not isinstance(entry, Axis) else ():
                    end = a.start + self.group_sizes[a.group] * a.block
                    if end > t.shape[d]:
                        raise StateDictError(f"key '{key}' axis {d} has size {t.shape[d]}, but group "
                                             f"'{a.group}' acts on entries {a.start}..{end - 1}")
                a = entry if isinstance(entry, Axis) else None
                if a is not None and t.shape[d] != want[d]:
                    raise StateDictError(
                        f"key '{key}' axis {d} has size {t.shape[d]}, but group '{a.group}' has "
                        f"{self.group_sizes[a.group]} neurons" + (f" x block {a.block}" if a.block > 1 else "")
                        + f" (shape {tuple(t.shape)}, expected {want})")
        floats = [k for k in self.axes if state_dict[k].is_floating_point()] if check_finite else []
        if floats and not bool(torch.isfinite(torch.stack([state_dict[k].sum() for k in floats])).all()):
            # NaN or Inf somewhere (or a sum that overflowed): find the key
            for key in floats:
                if not bool(torch.isfinite(state_dict[key]).all()):
                    raise StateDictError(f"key '{key}' contains NaN or Inf values")

    def describe(self) -> str:
        """A readable table: group -> size and the tensors/axes it acts on; then the fixed tensors.

        An axis piece shows where it starts (``key[axis]@start``). The within-head groups of a head
        group are shown as one indented row per family (``h0.qk .. h3.qk``, ``4 x 8``: 4 groups of 8,
        one per head slot), acting where the first of them does.
        """
        inner = {g for fams in self.heads.values() for fam in fams for g in fam}

        def where(g: str) -> str:
            return ", ".join(f"{k}[{d}]" + (f"x{a.block}" if a.block > 1 else "")
                             + (f"@{a.start}" if getattr(a, "start", 0) else "") for k, d, a in self.pieces(g))

        rows = [("group", "size", "acts on (key[axis])")]
        for g, n in self.group_sizes.items():
            if g in inner:
                continue
            if g not in self.heads:
                rows.append((g, str(n), where(g)))
                continue
            rows.append((g, str(n), f"heads: {where(g)}"))
            for fam in self.heads[g]:
                name = fam[0] if len(fam) == 1 else f"{fam[0]} .. {fam[-1]}"
                rows.append((f"  {name}", f"{len(fam)} x {self.group_sizes[fam[0]]}",
                             f"within each head, first: {where(fam[0])}"))
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        lines = [f"{r[0]:<{w0}}  {r[1]:>{w1}}  {r[2]}" for r in rows]
        lines.insert(1, "-" * min(100, max(len(s) for s in lines)))
        fixed = [k for k, spec in self.axes.items() if all(a is None for a in spec)]
        if fixed:
            lines.append(f"not permuted: {', '.join(fixed)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def _structure_shapes(structure: NetStructure | None) -> dict:
    if structure is None:
        return {}
    shapes = {ly.weight: tuple(ly.shape) for ly in structure.layers}
    for ns in structure.nodesets:
        for key in ns.features:
            if key is not None:
                shapes[key] = (ns.size,)
    for key, shape, _ in structure.extras:
        shapes[key] = tuple(shape)
    return shapes

