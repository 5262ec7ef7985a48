"""Dense per-layer products over a :class:`~gnn_align.NetGraph`'s ``blocks``: no per-edge tensors."""

from __future__ import annotations

import torch
from torch import Tensor

EDGE0, SRC0, NSRC, DST0, NDST, SKIP = range(6)  #: columns of ``NetGraph.blocks``


def used_columns(g, *reads: Tensor) -> tuple:
    """``(edge_attr, *reads)`` without the edge feature columns that no layer of the graph(s) ``g``
    writes (kernels are centre-padded to the longest one: an MLP's edges use one column of ten):
    :func:`push_blocks` gives the same result on either, in a fraction of the time. The columns come
    from ``g.kernel_cols`` (or, for graphs without it, from the nonzero ones)."""
    cols = getattr(g, "kernel_cols", None)
    used = g.edge_attr.ne(0).any(0) if cols is None else cols.any(0)
    if bool(used.all()):
        return (g.edge_attr, *reads)
    return (g.edge_attr[:, used], *(r[used] for r in reads))


def push_blocks(edge_attr: Tensor, blocks: Tensor, h: Tensor, read: Tensor, reverse: bool = False,
                rows: tuple | None = None) -> Tensor:
    r"""Sum, over the edge blocks, each block's weights applied to the node states of its sources.

    Forward (``reverse=False``): :math:`out_j = \sum_i (r^\top w_{ij}) \odot h_i` over every
    weight block's edges :math:`i \to j`, plus :math:`h_i` along every residual skip; with
    ``reverse`` the same against the direction of the edges (:math:`W^\top`). ``read``
    :math:`r \in \mathbb{R}^{d \times K}` turns an edge's ``d`` features (kernel) into one weight
    per channel. Blocks of equal shape run as one batched matrix product.

    Args:
        edge_attr: :math:`(E, d)` edge features (the graph's weights).
        blocks: :math:`(B, 6)` blocks (``NetGraph.blocks``, or a subset, with node offsets that
            index ``h``).
        h: :math:`(N, K)` node states.
        read: :math:`(d, K)` kernel read-out.
        reverse: push against the edges.
        rows: ``(r0, r1)``: the targets lie in rows ``r0 .. r1 - 1`` (default: all of ``h``).

    Shapes:
        - **output:** :math:`(r_1 - r_0, K)`
    """
    r0, r1 = (0, h.shape[0]) if rows is None else rows
    out = h.new_zeros(r1 - r0, h.shape[1])
    kinds = blocks[:, [NSRC, NDST, SKIP]]
    for n_src, n_dst, skip in torch.unique(kinds, dim=0).tolist():
        b = blocks[(kinds == kinds.new_tensor([n_src, n_dst, skip])).all(1)]
        src = b[:, SRC0, None] + torch.arange(n_src, device=b.device)  # (G, n_src) node rows
        dst = b[:, DST0, None] + torch.arange(n_dst, device=b.device)
        if reverse:
            src, dst = dst, src
        dst = dst.flatten() - r0
        if skip:
            out = out.index_add(0, dst, h[src.flatten()])
            continue
        w = edge_attr[b[:, EDGE0, None] + torch.arange(n_dst * n_src, device=b.device)]
        w = w.to(h.dtype).view(len(b), n_dst, n_src, -1)  # (G, targets, sources, d)
        d = w.shape[-1]
        w = w.permute(0, 3, 2, 1) if reverse else w.permute(0, 3, 1, 2)  # (G, d, rows, cols)
        y = torch.matmul(w.reshape(len(b), d * w.shape[2], w.shape[3]), h[src])  # (G, d * rows, K)
        y = (y.view(len(b), d, w.shape[2], -1) * read[None, :, None, :]).sum(1)
        out = out.index_add(0, dst, y.reshape(-1, h.shape[1]))
    return out
