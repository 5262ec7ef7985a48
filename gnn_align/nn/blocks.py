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
        return g.edge_attr, _columns(kept[0])
    cols = getattr(g, "kernel_cols", None)
    used = _columns(g.edge_attr.ne(0).any(0) if cols is None else cols.any(0))
    return (g.edge_attr, None) if used is None else (g.edge_attr[:, used].contiguous(), used)


def _columns(mask: Tensor) -> slice | Tensor | None:
    """The columns ``mask`` keeps: ``None`` for all, a slice for a range, else the mask."""
    idx = mask.nonzero().flatten().tolist()
    if len(idx) == len(mask):
        return None
    return slice(idx[0], idx[-1] + 1) if idx and idx[-1] - idx[0] + 1 == len(idx) else mask


class BlockGroup(NamedTuple):
    """Blocks of one shape (and tag): their source and target node rows, ``(G, n_src)`` and
    ``(G, n_dst)``, their dense weights, ``(G, n_dst, n_src, d)`` (``None`` for residual skips), and
    the tag they share (:func:`block_plan`)."""
    src: Tensor
    dst: Tensor
    weight: Tensor | None
    tag: object = None


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
    for (n_src, n_dst, skip, tag), ks in shapes.items():
        b = blocks[ks] if len(ks) < blocks.shape[0] else blocks
        src = b[:, SRC0, None] + torch.arange(n_src, device=b.device)
        dst = b[:, DST0, None] + torch.arange(n_dst, device=b.device)
        weight = None if skip else _gather_blocks(edge_attr, [rows[k][EDGE0] for k in ks], n_dst * n_src)
        groups.append(BlockGroup(src, dst, None if skip else weight.view(len(ks), n_dst, n_src, -1), tag))
    return BlockPlan(groups, used)


def _gather_blocks(edge_attr: Tensor, starts: list, n: int) -> Tensor:
    """``(G, n, d)``: the ``n`` edges from each of ``starts``; a strided view, with no copy, when the
    starts are evenly spaced (one layer of a batch of same-architecture graphs), else a gather."""
    step = starts[1] - starts[0] if len(starts) > 1 else n
    if edge_attr.is_contiguous() and step >= n and all(b - a == step for a, b in itertools.pairwise(starts)):
        d = edge_attr.shape[1]
        return edge_attr.as_strided((len(starts), n, d), (step * d, d, 1), edge_attr.storage_offset() + starts[0] * d)
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
    for src, dst, weight, _ in plan.groups:
        if reverse:
            src, dst = dst, src
        dst = dst.flatten() - r0
        if weight is None:  # residual skips
            out = out.index_add(0, dst, h[src.flatten()])
            continue
        w = weight.to(h.dtype)  # (G, targets, sources, d)
        n_blocks, d = w.shape[0], w.shape[-1]
        w = w.permute(0, 3, 2, 1) if reverse else w.permute(0, 3, 1, 2)  # (G, d, rows, cols)
        y = torch.matmul(w.reshape(n_blocks, d * w.shape[2], w.shape[3]), h[src])  # (G, d * rows, K)
        y = y * read[0] if d == 1 else (y.view(n_blocks, d, w.shape[2], -1) * read[None, :, None, :]).sum(1)
        out = out.index_add(0, dst, y.reshape(-1, h.shape[1]))
    return out
