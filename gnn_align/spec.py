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

from .errors import StateDictError, check_keys

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


AxisSpec = tuple  # tuple[Axis | None, ...], one entry per tensor axis


def _as_axis(a) -> Axis | None:
    if a is None or isinstance(a, Axis):
        return a
    if isinstance(a, str):
        return Axis(a)
    if isinstance(a, tuple) and len(a) == 2:
        return Axis(str(a[0]), int(a[1]))
    raise TypeError(f"axis entry must be None, a group name or (group, block), got {a!r}")


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

    Example (a 2-hidden-layer MLP)::

        PermutationSpec({"h1": 8, "h2": 8}, {
            "0.weight": ("h1", None), "0.bias": ("h1",),
            "2.weight": ("h2", "h1"), "2.bias": ("h2",),
            "4.weight": (None, "h2"), "4.bias": (None,)})
    """

    group_sizes: Mapping[str, int]
    axes: Mapping[str, tuple]
    structure: NetStructure | None = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "group_sizes", {str(g): int(n) for g, n in self.group_sizes.items()})
        axes = {k: tuple(_as_axis(a) for a in v) for k, v in self.axes.items()}
        object.__setattr__(self, "axes", axes)
        for key, spec in axes.items():
            for a in spec:
                if a is not None and a.group not in self.group_sizes:
                    raise StateDictError(f"key '{key}' uses unknown permutation group '{a.group}'")

    @classmethod
    def from_structure(cls, structure: NetStructure) -> PermutationSpec:
        sizes: dict = {}
        for ns in structure.nodesets:
            if ns.group is not None:
                sizes.setdefault(ns.group, ns.size)
        return cls(sizes, structure.axes(), structure)

    @property
    def groups(self) -> list:
        return list(self.group_sizes)

    def require_structure(self, what: str) -> NetStructure:
        """The spec's graph structure, which ``what`` needs (the one check of it in gnn_align).

        Args:
            what: what needs the structure, the start of the message (``"to_graph"``).

        Raises:
            StateDictError: ``"<what> needs a PermutationSpec with graph structure, and this one has
                none: derive it with gnn_align.spec_from_module(module, example_input)"``, for a spec
                written by hand (or built without a structure).
        """
        if self.structure is None:
            raise StateDictError(f"{what} needs a PermutationSpec with graph structure, and this one has none: derive "
                                 "it with gnn_align.spec_from_module(module, example_input)")
        return self.structure

    def acts_on(self, group: str) -> list:
        """(key, axis, block) triples of every tensor axis that ``group`` permutes."""
        return [(k, d, a.block) for k, spec in self.axes.items() for d, a in enumerate(spec)
                if a is not None and a.group == group]

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
            want = tuple(n if a is None else self.group_sizes[a.group] * a.block for n, a in zip(t.shape, spec))
            for d, a in enumerate(spec):
                if a is not None and t.shape[d] != want[d]:
                    raise StateDictError(
                        f"key '{key}' axis {d} has size {t.shape[d]}, but group '{a.group}' has "
                        f"{self.group_sizes[a.group]} neurons" + (f" x block {a.block}" if a.block > 1 else "")
                        + f" (shape {tuple(t.shape)}, expected {want})")
            if check_finite and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise StateDictError(f"key '{key}' contains NaN or Inf values")

    def describe(self) -> str:
        """A readable table: group -> size and the tensors/axes it acts on; then the fixed tensors."""
        rows = [("group", "size", "acts on (key[axis])")]
        for g, n in self.group_sizes.items():
            parts = [f"{k}[{d}]" + (f"x{b}" if b > 1 else "") for k, d, b in self.acts_on(g)]
            rows.append((g, str(n), ", ".join(parts)))
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

