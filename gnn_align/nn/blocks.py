"""Dense per-layer products over a :class:`~gnn_align.NetGraph`'s ``blocks``: no per-edge tensors."""

from __future__ import annotations

import itertools
from typing import NamedTuple

import torch
from torch import Tensor

EDGE0, SRC0, NSRC, DST0, NDST, SKIP = range(6)  #: columns of ``NetGraph.blocks``


def nodeset_ids(g, skips: bool = False) -> Tensor:
    """Each node's node set, as the row of the set's first node: the targets of one weight layer (with
    ``skips``, of a residual skip too) form a set; nodes that none writes (the inputs; without
    ``skips``, a set that only a skip writes, such as a final LayerNorm's) form sets of one.
    Shapes: (N,) long."""
    b = g.blocks if skips else g.blocks[g.blocks[:, SKIP] == 0]
    set_id = torch.arange(g.num_nodes, device=b.device)
    lens = b[:, NDST]
    if len(b):
        first = torch.repeat_interleave(b[:, DST0], lens)
        offset = torch.arange(int(lens.sum()), device=b.device) - torch.repeat_interleave(lens.cumsum(0) - lens, lens)
        set_id[first + offset] = first
    return set_id


def used_columns(g) -> tuple:
    """``(edge_attr, used)``: the edge features of the graph(s) ``g`` without the columns that no layer
    writes (kernels are centre-padded to the longest one: an MLP's edges use one column of ten), and
    the columns kept (``None`` when every column is): a slice when they are a range (centre-padded
    kernels always are), else a bool mask. :func:`push_blocks` gives the same result on either, in a
    fraction of the time. The columns come from ``g.kernel_cols`` (or, for graphs without it, from the
    nonzero ones); a batch of :func:`~gnn_align.batch.collate` with ``edges=False`` holds only those
    columns already (``edge_cols``)."""
    kept = getattr(g, "edge_cols", None)
    if kept is not None:
        return g.edge_attr, columns(kept[0])
    cols = getattr(g, "kernel_cols", None)
    used = columns(g.edge_attr.ne(0).any(0) if cols is None else cols.any(0))
    return (g.edge_attr, None) if used is None else (g.edge_attr[:, used].contiguous(), used)


def columns(mask: Tensor) -> slice | Tensor | None:
    """The columns ``mask`` (bool, ``(d,)``) keeps: ``None`` for all, a slice for a range, else the mask."""
    idx = mask.nonzero().flatten().tolist()
    if len(idx) == len(mask):
        return None
    return slice(idx[0], idx[-1] + 1) if idx and idx[-1] - idx[0] + 1 == len(idx) else mask


class BlockGroup(NamedTuple):
    """Blocks of one shape (and tag): their source and target node rows, ``(G, n_src)`` and
    ``(G, n_dst)``, their dense weights, ``(G, n_dst, n_src, d)`` (``None`` for residual skips), the
    tag they share (:func:`block_plan`), and the source and target rows as :func:`span` s (or ``None``)."""
    src: Tensor
    dst: Tensor
    weight: Tensor | None
    tag: object = None
    src_span: tuple | None = None
    dst_span: tuple | None = None


def span(starts: list, n: int) -> tuple | None:
    """``(first, step)`` when the ranges ``starts[k] .. starts[k] + n - 1`` are evenly spaced and do
    not overlap (one layer across a batch of same-architecture graphs), else ``None``: such rows are
    read and written as a strided view (:func:`rows_view`) instead of by an index."""
    step = starts[1] - starts[0] if len(starts) > 1 else n
    return (starts[0], step) if step >= n and all(b - a == step for a, b in itertools.pairwise(starts)) else None


def rows_view(x: Tensor, spn: tuple, count: int, n: int) -> Tensor:
    """``(count, n, *x.shape[1:])``: the ``n`` rows from ``first + k * step`` of ``x`` for each ``k``
    (``spn = (first, step)``, a :func:`span`), as a view: no copy (``x`` may itself be a view, such
    as a slice of columns)."""
    first, step = spn
    row = x.stride(0)
    return x.as_strided((count, n, *x.shape[1:]), (step * row, *x.stride()), x.storage_offset() + first * row)


class BlockPlan(NamedTuple):
    """What :func:`push_blocks` needs of a set of blocks, worked out once for several pushes (message
    passing rounds, both directions): one :class:`BlockGroup` per block shape, and the edge feature
    columns kept (:func:`used_columns`)."""
    groups: list
    used: slice | Tensor | None

    def tagged(self, keep) -> BlockPlan:
        """The plan of the groups whose tag satisfies ``keep``."""
        return BlockPlan([gr for gr in self.groups if keep(gr.tag)], self.used)


def block_plan(edge_attr: Tensor, blocks: Tensor, used: slice | Tensor | None = None,
               tags: list | None = None) -> BlockPlan:
    """The :class:`BlockPlan` of ``blocks`` (``(B, 6)``, rows of ``NetGraph.blocks`` with node offsets
    that index the node states to push) over the edge features ``edge_attr`` (``(E, d)``, the
    columns ``used`` of the graph's: :func:`used_columns`); with ``tags`` (one hashable per block),
    only blocks of equal tag share a group, so that a part of the plan can be picked by tag
    (:meth:`BlockPlan.tagged`)."""
    shapes: dict = {}
    rows = blocks.tolist()
    for k, (_, _, n_src, _, n_dst, skip) in enumerate(rows):
        shapes.setdefault((n_src, n_dst, skip, None if tags is None else tags[k]), []).append(k)
    groups = []
    for (n_src, n_dst, skip, tag), same in shapes.items():
        for ks in _even_parts(same, rows, n_src, n_dst):
            groups.append(_group(edge_attr, blocks, rows, ks, n_src, n_dst, skip, tag))
    return BlockPlan(groups, used)


def _even_parts(ks: list, rows: list, n_src: int, n_dst: int, most: int = 8) -> list:
    """``ks`` (blocks of one shape) as the fewest interleaved parts ``ks[i::r]`` (``r <= most``) whose
    sources and targets are each evenly spaced (:func:`span`; e.g. the three hidden layers of a batch of
    MLPs: one part per layer); ``[ks]`` when no ``r`` does it."""
    for r in range(1, min(most, len(ks)) + 1):
        parts = [ks[i::r] for i in range(r)]
        if all(span([rows[k][SRC0] for k in p], n_src) and span([rows[k][DST0] for k in p], n_dst) for p in parts):
            return parts
    return [ks]


def _group(edge_attr: Tensor, blocks: Tensor, rows: list, ks: list, n_src: int, n_dst: int, skip: int,
           tag) -> BlockGroup:
    """The :class:`BlockGroup` of the blocks ``ks`` (rows of ``blocks``, as ``rows`` lists them)."""
    b = blocks[ks] if len(ks) < blocks.shape[0] else blocks
    src = b[:, SRC0, None] + torch.arange(n_src, device=b.device)
    dst = b[:, DST0, None] + torch.arange(n_dst, device=b.device)
    weight = None if skip else _gather_blocks(edge_attr, [rows[k][EDGE0] for k in ks], n_dst * n_src)
    return BlockGroup(src, dst, None if skip else weight.view(len(ks), n_dst, n_src, -1), tag,
                      span([rows[k][SRC0] for k in ks], n_src), span([rows[k][DST0] for k in ks], n_dst))


def _gather_blocks(edge_attr: Tensor, starts: list, n: int) -> Tensor:
    """``(G, n, d)``: the ``n`` edges from each of ``starts``; a strided view, with no copy, when the
    starts are evenly spaced (one layer of a batch of same-architecture graphs), else a gather."""
    spn = span(starts, n) if edge_attr.is_contiguous() else None
    if spn is not None:
        return rows_view(edge_attr, spn, len(starts), n)
    index = torch.tensor(starts, device=edge_attr.device)[:, None] + torch.arange(n, device=edge_attr.device)
    return edge_attr[index]


def graph_plan(g) -> BlockPlan:
    """The :func:`block_plan` of every block of the graph(s) ``g``, over its used edge feature columns."""
    attr, used = used_columns(g)
    return block_plan(attr, g.blocks, used)


def push_blocks(plan: BlockPlan, h: Tensor, read: Tensor, reverse: bool = False,
                rows: tuple | None = None) -> Tensor:
    r"""Sum, over the edge blocks, each block's weights applied to the node states of its sources.

    Forward (``reverse=False``): :math:`out_j = \sum_i (r^\top w_{ij}) \odot h_i` over every
    weight block's edges :math:`i \to j`, plus :math:`h_i` along every residual skip; with
    ``reverse`` the same against the direction of the edges (:math:`W^\top`). ``read``
    :math:`r \in \mathbb{R}^{d \times K}` turns an edge's ``d`` features (kernel) into one weight
    per channel. Blocks of equal shape run as one batched matrix product.

    Args:
        plan: the blocks (:func:`block_plan`).
        h: :math:`(N, K)` node states.
        read: :math:`(d, K)` kernel read-out, over all of the graph's edge feature columns.
        reverse: push against the edges.
        rows: ``(r0, r1)``: the targets lie in rows ``r0 .. r1 - 1`` (default: all of ``h``).

    Shapes:
        - **output:** :math:`(r_1 - r_0, K)`
    """
    r0, r1 = (0, h.shape[0]) if rows is None else rows
    read = read if plan.used is None else read[plan.used]
    out = h.new_zeros(r1 - r0, h.shape[1])
    for src, dst, weight, _, src_span, dst_span in plan.groups:
        if reverse:
            src, dst, src_span, dst_span = dst, src, dst_span, src_span
        count, n_src, n_dst = src.shape[0], src.shape[1], dst.shape[1]
        h_src = h[src] if src_span is None else rows_view(h, src_span, count, n_src)  # (G, sources, K)
        if weight is None:  # residual skips
            y = h_src
        else:
            w = weight.to(h.dtype)  # (G, targets, sources, d)
            d = w.shape[-1]
            w = w.permute(0, 3, 2, 1) if reverse else w.permute(0, 3, 1, 2)  # (G, d, targets, sources)
            y = torch.matmul(w.reshape(count, d * n_dst, n_src), h_src)  # (G, d * targets, K)
            y = y * read[0] if d == 1 else (y.view(count, d, n_dst, -1) * read[None, :, None, :]).sum(1)
        if dst_span is None:
            out = out.index_add(0, dst.flatten() - r0, y.reshape(-1, h.shape[1]))
        else:  # the targets as a view of out, added in place
            rows_view(out, (dst_span[0] - r0, dst_span[1]), count, n_dst).add_(y.view(count, n_dst, -1))
    return out
