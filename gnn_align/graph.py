"""Networks as graphs: neurons are nodes, weights are edges.

Graph contract (:class:`NetGraph`):

* **Nodes**: one per neuron or channel, node set by node set in the order of the spec's
  :class:`~gnn_align.spec.NetStructure` (input first). ``x[:, c]`` holds the node's
  :data:`~gnn_align.spec.NODE_FEATURES` (bias, normalisation weight/bias, running mean/var; zeros
  where absent). ``node_type`` is 0 input, 1 hidden, 2 output; ``node_depth`` counts weight layers
  from the input. ``perm_group`` is the node's group id (index into ``group_names``; -1 for fixed
  neurons) and ``perm_pos`` its position in its node set (for fixed neurons: their fixed index).
* **Edges**: forward direction only (inputs to outputs). Layer by layer, edge ``o * n_in + i`` of a
  layer runs from input neuron ``i`` to output neuron ``o`` and carries ``weight.reshape(out, n_in, k)
  [o, i]`` (a kernel, or the ``k`` entries of a flattened feature map) centre-padded to ``edge_dim``
  columns, so :func:`from_graph` is slicing and reshaping and the round trip is exact.
  ``kernel_cols`` (1, edge_dim) bool marks the columns some layer (or skip) writes; the others are
  zero on every edge (batched: one row per graph).
  With ``fit="pool"`` (what a learned aligner reads), a kernel longer than ``edge_dim`` is first
  pooled to the largest layout that fits (:func:`pooled_layout`, :func:`pool_matrix`: a 7x7 kernel
  or flattened 7x7 map to 3x3, kernel sum kept); such a graph is for reading only (``pooled`` names
  the pooled layers) and :func:`from_graph` refuses it.
  ``edge_type`` is 0 for weights and 1 for **residual skips**: a residual addition ``y = x + f(x)``
  appears as identity edges ``x_i -> f(x)_i`` (value 1 in the centre column), and layers that read
  ``y`` read the node set of ``f(x)``. Both node sets share one group and positions.
* **Blocks**: ``blocks`` (B, 6) long lists the edge blocks, one per layer then one per skip:
  ``[first edge, first source node, sources, first target node, targets, is_skip]``; a layer's
  block is dense (``targets * sources`` edges, target-major), a skip's is the identity. Offsets are
  shifted by batching, so dense per-layer products (:class:`~gnn_align.nn.ProbePass`) need no
  sparse indexing.
* ``extra`` holds, as float64, the tensors with no place in the graph (BatchNorm's
  ``num_batches_tracked``).
* **Attention** is drawn as the spec's *flat view* (:mod:`gnn_align.flat`, ``spec.graph_spec``):
  per attention one group ``P.qk`` whose two node sets are the query and key rows (their dot
  products are the attention scores) and one group ``P.v`` (value rows, read by the output
  projection); a packed projection is split into its q, k and v layers, a positional embedding is a
  layer from fixed position input nodes, a LayerNorm the norm features of the node set it normalises.
  ``group_names`` are the flat groups; relabel with ``spec.flat.flat_perm(perm)``.

Batching: ``perm_group`` and ``perm_pos`` are per-graph and are *not* shifted by
``Batch.from_data_list``; use :func:`global_group` for ids that are unique across a batch.
:func:`gnn_align.batch.collate` is ``Batch.from_data_list`` for graphs made by :func:`to_graph`, in a
few tensor ops.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping

import torch
from torch_geometric.data import Data

from .errors import StateDictError
from .spec import NODE_FEATURES, PermutationSpec

EDGE_WEIGHT, EDGE_SKIP = 0, 1


class NetGraph(Data):
    """A network's computation graph (a :class:`torch_geometric.data.Data`; see module docstring)."""

    def __inc__(self, key, value, *args, **kwargs):
        if key in ("perm_group", "perm_pos"):
            return 0
        if key == "blocks":  # edge and node offsets move with the graph's place in a batch
            return torch.tensor([self.num_edges, self.num_nodes, 0, self.num_nodes, 0, 0])
        return super().__inc__(key, value, *args, **kwargs)


def _offsets(structure) -> list:
    offs, n = [], 0
    for ns in structure.nodesets:
        offs.append(n)
        n += ns.size
    return offs + [n]


#: how :func:`to_graph` treats a kernel longer than ``edge_dim``: refuse it, or pool it (for reading only)
FITS = ("exact", "pool")


def kernel_layout(structure, layer) -> tuple:
    """The spatial layout of the values one edge of ``layer`` carries, singleton axes dropped: a
    Conv2d's ``(kh, kw)``, a Conv1d's ``(k,)``, ``(1,)`` for a Linear weight; for a Linear layer
    reading a flattened feature map, the map: ``(s, s)`` when a 2-D conv produces (or reads) its node
    set and the block is a square ``s * s`` (or no layer says and it is a square), else ``(block,)``."""
    if layer.block > 1:
        n = layer.block
        s = math.isqrt(n)
        dims = {len(ly.shape) - 2 for ly in structure.layers
                if len(ly.shape) > 2 and layer.src in (ly.dst, ly.src)}
        return (s, s) if s * s == n and dims <= {2} and s > 1 else (n,)
    return tuple(k for k in layer.shape[2:] if k > 1) or (1,)


def pooled_layout(layout: tuple, edge_dim: int) -> tuple:
    """The layout a kernel of ``layout`` is pooled to so that it fits ``edge_dim`` values: itself when
    it fits; a 1-D kernel to ``edge_dim`` values; a 2-D one to at most ``t x t`` per axis, ``t`` the
    largest odd number with ``t * t <= edge_dim`` (3 for the shipped aligners' 10: the 3x3 kernels they
    were trained on); anything else, flattened, as 1-D."""
    if math.prod(layout) <= edge_dim:
        return tuple(layout)
    if len(layout) == 2:
        t = math.isqrt(edge_dim)
        t -= 1 - t % 2
        return tuple(min(k, max(t, 1)) for k in layout)
    return (edge_dim,)


def _pool_1d(k: int, m: int) -> torch.Tensor:
    """(m, k) float64: entry (i, j) is the length of input cell ``[j, j + 1)`` inside output cell ``i``
    (``[i k / m, (i + 1) k / m)``); every column sums to 1."""
    edges = torch.arange(m + 1, dtype=torch.float64) * k / m
    j = torch.arange(k, dtype=torch.float64)
    return (torch.minimum(edges[1:, None], j + 1) - torch.maximum(edges[:-1, None], j)).clamp(min=0)


def pool_matrix(layout: tuple, target: tuple) -> torch.Tensor:
    """The linear map pooling a kernel of ``layout`` (row-major flattened) to ``target``, as a
    ``(prod(target), prod(layout))`` float64 matrix: adaptive average pooling by area, scaled by the
    area ratio, so that every input value is split among the output cells it overlaps and the kernel
    sum is kept exactly (a spatially constant input gives the same response). 1-D or 2-D layouts of
    equal rank; a row vector ``w`` pools to ``w @ pool_matrix(layout, target).T``."""
    if len(layout) != len(target) or not 1 <= len(layout) <= 2:
        raise ValueError(f"cannot pool a kernel of layout {layout} to {target}")
    mats = [_pool_1d(k, m) for k, m in zip(layout, target, strict=True)]
    return mats[0] if len(mats) == 1 else torch.kron(mats[0], mats[1])


def _fmt(layout: tuple) -> str:
    return "x".join(map(str, layout))


def pooling_plan(spec: PermutationSpec, edge_dim: int) -> dict:
    """The layers whose kernels ``to_graph(..., edge_dim, fit="pool")`` pools: weight key ->
    ``(layout, pooled layout)`` (:func:`kernel_layout`, :func:`pooled_layout`); empty when every
    kernel fits."""
    st = spec.require_structure("pooling_plan")
    plan = {}
    for ly in st.layers:
        if ly.edge_len > edge_dim:
            layout = kernel_layout(st, ly)
            plan[ly.weight] = (layout, pooled_layout(layout, edge_dim))
    return plan


def describe_pooling(plan: Mapping) -> str:
    """``plan`` (:func:`pooling_plan`) in words: ``conv1.weight 7x7 -> 3x3, classifier.0.weight 7x7 -> 3x3``
    (grouped when many layers pool alike)."""
    by: dict = {}
    for key, (src, dst) in plan.items():
        by.setdefault((src, dst), []).append(key)
    parts = []
    for (src, dst), keys in by.items():
        names = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        parts.append(f"{names} {_fmt(src)} -> {_fmt(dst)}")
    return "; ".join(parts)


def to_graph(state_dict: Mapping[str, torch.Tensor], spec: PermutationSpec,
             edge_dim: int | None = None, fit: str = "exact") -> NetGraph:
    """Draw a network as a :class:`NetGraph`.

    Args:
        state_dict: the network's tensors (validated against ``spec``: keys, shapes, finite).
        spec: a spec with structure, from :func:`spec_from_module`; for a network with attention,
            the graph is that of its flat view (:mod:`gnn_align.flat`: groups ``P.qk`` and ``P.v``
            per attention; relabel it with ``spec.flat.flat_perm(perm)``).
        edge_dim: edge feature width (default: the longest kernel of this network); pass a common
            value to batch networks with different kernel sizes.
        fit: what to do with a kernel longer than ``edge_dim``: ``"exact"`` (default) refuses it;
            ``"pool"`` pools it (:func:`pooling_plan`: a 7x7 kernel or flattened 7x7 map to 3x3,
            the kernel sum kept) into a graph for reading only, which lists the pooled layers in
            ``graph.pooled`` and which :func:`from_graph` refuses. Pooling acts within each edge,
            so it commutes with relabelling neurons (:func:`relabel`).

    Returns:
        A :class:`NetGraph` in the dtype of the state dict's floating tensors.

    Shapes:
        ``x``: (N, 5), ``edge_index``: (2, E), ``edge_attr``: (E, edge_dim), ``edge_type``,
        ``node_type``, ``node_depth``, ``perm_group``, ``perm_pos``: (N,) or (E,) long; ``blocks``: (B, 6) long.
    """
    if spec.flat is not None:  # attention: the flat view (gnn_align.flat)
        spec.validate(state_dict)
        return to_graph(spec.flat.flatten(state_dict), spec.flat.spec, edge_dim, fit)
    st = spec.require_structure("to_graph")
    spec.validate(state_dict)
    floats = {k: t for k, t in state_dict.items() if t.is_floating_point()}
    dtype = next(iter(floats.values())).dtype if floats else torch.get_default_dtype()
    for k, t in floats.items():
        if t.dtype != dtype:
            raise StateDictError(f"key '{k}' has dtype {t.dtype}, other tensors have {dtype}")
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    longest = max([ly.edge_len for ly in st.layers] + [1])
    d = longest if edge_dim is None else int(edge_dim)
    plan = pooling_plan(spec, d) if fit == "pool" and d >= 1 else {}
    if d < longest and not plan:
        raise StateDictError(f"edge_dim={d} is shorter than the longest kernel ({longest} values)")
    sk = _skeleton(st, tuple(spec.group_sizes))
    n = sk["num_nodes"]
    x = torch.zeros(n, len(NODE_FEATURES), dtype=dtype)
    offs = _offsets(st)
    for s, ns in enumerate(st.nodesets):
        for c, key in enumerate(ns.features):
            if key is not None:
                x[offs[s]:offs[s + 1], c] = state_dict[key]
    attr = torch.zeros(sk["edge_type"].shape[0], d, dtype=dtype)
    lens = {1}
    for (e0, _, n_in, _, n_out, _), ly in zip(sk["blocks"].tolist(), st.layers):
        w = state_dict[ly.weight].reshape(n_out * n_in, ly.edge_len)
        if ly.weight in plan:
            w = w @ pool_matrix(*plan[ly.weight]).to(dtype).T
        k = w.shape[1]
        lens.add(k)
        attr[e0:e0 + n_out * n_in, (d - k) // 2:(d - k) // 2 + k] = w
    for e0, _, m, _, _, _ in sk["skips"]:  # a skip's identity edges: 1 in the centre column
        attr[e0:e0 + m, (d - 1) // 2] = 1
    cols = torch.zeros(1, d, dtype=torch.bool)
    for k in lens:
        cols[0, (d - k) // 2:(d - k) // 2 + k] = True
    extra = [state_dict[k].reshape(-1).to(torch.float64) for k, _, _ in st.extras]
    pooled = {"pooled": [f"{k} {_fmt(a)} -> {_fmt(b)}" for k, (a, b) in plan.items()]} if fit == "pool" else {}
    return NetGraph(**pooled, x=x, edge_index=sk["edge_index"], edge_attr=attr, edge_type=sk["edge_type"],
                    node_type=sk["node_type"], node_depth=sk["node_depth"], perm_group=sk["perm_group"],
                    perm_pos=sk["perm_pos"], num_groups=len(spec.group_sizes), group_names=list(spec.group_sizes),
                    blocks=sk["blocks"], kernel_cols=cols,
                    extra=torch.cat(extra) if extra else torch.empty(0, dtype=torch.float64), num_nodes=n)


@functools.lru_cache(maxsize=64)
def _skeleton(st, groups: tuple) -> dict:
    """The weight-free part of a graph (labels, edges, blocks), built once per structure: graphs of
    one architecture share these tensors, which nothing modifies in place."""
    offs = _offsets(st)
    n = offs[-1]
    gid = {g: i for i, g in enumerate(groups)}
    node_type, depth, group, pos = (torch.empty(n, dtype=torch.long) for _ in range(4))
    for s, ns in enumerate(st.nodesets):
        sl = slice(offs[s], offs[s + 1])
        node_type[sl], depth[sl] = ns.kind_id, ns.depth
        group[sl] = -1 if ns.group is None else gid[ns.group]
        pos[sl] = torch.arange(ns.size)
    src, dst, etype, blocks, e = [], [], [], [], 0
    for ly in st.layers:
        n_out, n_in = ly.shape[0], st.nodesets[ly.src].size
        blocks.append([e, offs[ly.src], n_in, offs[ly.dst], n_out, 0])
        src.append(offs[ly.src] + torch.arange(n_in).repeat(n_out))
        dst.append(offs[ly.dst] + torch.arange(n_out).repeat_interleave(n_in))
        etype.append(torch.full((n_out * n_in,), EDGE_WEIGHT))
        e += n_out * n_in
    for s_from, s_to in st.skips:
        m = st.nodesets[s_from].size
        blocks.append([e, offs[s_from], m, offs[s_to], m, 1])
        src.append(offs[s_from] + torch.arange(m))
        dst.append(offs[s_to] + torch.arange(m))
        etype.append(torch.full((m,), EDGE_SKIP))
        e += m
    return {"num_nodes": n, "node_type": node_type, "node_depth": depth, "perm_group": group, "perm_pos": pos,
            "edge_index": torch.stack([torch.cat(src), torch.cat(dst)]) if src else
            torch.empty(2, 0, dtype=torch.long),
            "edge_type": torch.cat(etype) if etype else torch.empty(0, dtype=torch.long),
            "blocks": torch.tensor(blocks, dtype=torch.long).reshape(-1, 6), "skips": [b for b in blocks if b[5]]}


def from_graph(graph: NetGraph, spec: PermutationSpec) -> dict:
    """The exact inverse of :func:`to_graph`: the state dict (same keys, shapes, dtypes).

    Raises:
        StateDictError: a graph that does not fit the spec, or one whose kernels were pooled
            (``to_graph(..., fit="pool")``: for reading only).
    """
    pooled = getattr(graph, "pooled", None)
    if pooled:
        raise StateDictError(f"this graph was drawn with fit='pool' ({'; '.join(map(str, pooled))}): it is for "
                             "reading only and has no exact inverse; draw it with to_graph(..., fit='exact')")
    if spec.flat is not None:
        return spec.flat.unflatten(from_graph(graph, spec.flat.spec))
    st = spec.require_structure("from_graph")
    offs = _offsets(st)
    n_edges = sum(ly.shape[0] * st.nodesets[ly.src].size for ly in st.layers) + \
        sum(st.nodesets[s].size for s, _ in st.skips)
    if graph.num_nodes != offs[-1] or graph.edge_index.size(1) != n_edges:
        raise StateDictError(f"graph with {graph.num_nodes} nodes and {graph.edge_index.size(1)} edges "
                             f"does not fit the spec ({offs[-1]} nodes, {n_edges} edges)")
    d = graph.edge_attr.size(1)
    out, e = {}, 0
    for ly in st.layers:
        m, k = ly.shape[0] * st.nodesets[ly.src].size, ly.edge_len
        out[ly.weight] = graph.edge_attr[e:e + m, (d - k) // 2:(d - k) // 2 + k].reshape(ly.shape).clone()
        e += m
    for s, ns in enumerate(st.nodesets):
        for c, key in enumerate(ns.features):
            if key is not None:
                out[key] = graph.x[offs[s]:offs[s + 1], c].clone()
    i = 0
    for key, shape, dtype in st.extras:
        m = 1
        for sz in shape:
            m *= sz
        out[key] = graph.extra[i:i + m].reshape(shape).to(dtype)
        i += m
    return out


def node_sources(graph: NetGraph, perm: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Where :func:`relabel` takes each node from: ``relabel(graph, perm)``'s node ``n`` holds the
    features of ``graph``'s node ``node_sources(graph, perm)[n]`` (a LongTensor over the nodes; fixed
    nodes and groups left out of ``perm`` map to themselves)."""
    src_of = torch.arange(graph.num_nodes)
    for gi, g in enumerate(graph.group_names):
        if g not in perm:
            continue
        mask = graph.perm_group == gi
        p = graph.perm_pos[mask]
        src_of[mask] = src_of[mask] - p + perm[g][p]
    return src_of


def relabel(graph: NetGraph, perm: Mapping[str, torch.Tensor]) -> NetGraph:
    """Relabel the nodes of a graph by a permutation, without touching any weight tensor.

    Node at position ``i`` of a node set in group ``g`` receives the features of the node at
    position ``perm[g][i]`` of the same set (:func:`node_sources`); each edge receives the features of
    the edge between the nodes its endpoints came from.
    ``to_graph(apply_permutation(theta, perm, spec), spec)`` equals ``relabel(to_graph(theta, spec), perm)``;
    a test pins this.
    """
    n = graph.num_nodes
    src_of = node_sources(graph, perm)
    ei, etype = graph.edge_index, graph.edge_type
    keys = (ei[0] * n + ei[1]) * 2 + etype
    order = torch.argsort(keys)
    query = (src_of[ei[0]] * n + src_of[ei[1]]) * 2 + etype
    old = order[torch.searchsorted(keys[order], query)]
    out = graph.clone()
    out.x = graph.x[src_of]
    out.edge_attr = graph.edge_attr[old]
    return out


def global_group(batch) -> torch.Tensor:
    """Group ids unique across a batch of graphs (fixed neurons stay -1).

    Shapes:
        batch.perm_group, batch.batch: (N,); returns (N,) long.
    """
    num = torch.as_tensor(batch.num_groups).reshape(-1)
    start = torch.cumsum(num, 0) - num
    b = batch.batch if getattr(batch, "batch", None) is not None else torch.zeros_like(batch.perm_group)
    return torch.where(batch.perm_group >= 0, batch.perm_group + start[b], batch.perm_group)
