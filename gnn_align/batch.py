"""Batching network graphs: :func:`collate`, ``Batch.from_data_list`` for :class:`~gnn_align.NetGraph`
made by :func:`~gnn_align.graph.to_graph`, in a few tensor ops per key, and without the sparse edge
tensors for encoders that read only dense weight blocks."""

from __future__ import annotations

import torch
from torch_geometric.data import Batch

from .nn.blocks import columns

#: per-node and per-edge keys of a NetGraph made by :func:`~gnn_align.graph.to_graph` (concatenated as they are)
_NODE_KEYS = ("x", "node_type", "node_depth", "perm_group", "perm_pos")
_EDGE_KEYS = ("edge_attr", "edge_type")
_KEYS = frozenset(_NODE_KEYS + _EDGE_KEYS + ("edge_index", "blocks", "kernel_cols", "extra", "num_groups",
                                            "group_names", "num_nodes"))


def collate(graphs, edges: bool = True) -> Batch:
    """``Batch.from_data_list(graphs)`` for graphs made by :func:`~gnn_align.graph.to_graph` (the same tensors, and
    unbatching works), with a few tensor ops per key instead of PyG's generic collation: most of a
    millisecond of a one-pair prediction. Graphs with other keys are left to PyG.

    Args:
        graphs: NetGraphs.
        edges: ``False`` keeps of the edges only what dense per-block products read
            (:mod:`gnn_align.nn.blocks`, :class:`~gnn_align.nn.ProbePass`, ``WeightConv.forward_blocks``):
            ``edge_attr`` in the columns some graph writes, which ``edge_cols`` (1, edge_dim) marks, and
            no ``edge_index`` or ``edge_type``. That is most of a batch's bytes (an MLP's edges use one
            column of ten) and most of the time of batching it; such a batch cannot be unbatched.
    """
    graphs = list(graphs)
    keys = set(graphs[0].keys()) if graphs else set()
    if keys - {"pooled"} != _KEYS or any(set(g.keys()) != keys for g in graphs):
        return Batch.from_data_list(graphs)
    count = {k: torch.tensor([g[k].shape[0] for g in graphs]) for k in ("x", "edge_attr", "blocks", "extra")}
    nodes, edges_per = count["x"], count["edge_attr"]
    ptr = {k: torch.cat([c.new_zeros(1), c.cumsum(0)]) for k, c in count.items()}
    one, zero = torch.arange(len(graphs) + 1), torch.zeros(len(graphs), dtype=torch.long)
    inc_blocks = torch.stack([ptr["edge_attr"][:-1], ptr["x"][:-1], zero, ptr["x"][:-1], zero, zero], 1)
    out = {k: torch.cat([g[k] for g in graphs]) for k in _NODE_KEYS + ("kernel_cols", "extra")}
    out["blocks"] = torch.cat([g.blocks for g in graphs]) + inc_blocks.repeat_interleave(count["blocks"], 0)
    out["num_groups"] = torch.tensor([g.num_groups for g in graphs])
    lists = [k for k in ("group_names", "pooled") if k in keys]
    if edges:
        out.update({k: torch.cat([g[k] for g in graphs]) for k in _EDGE_KEYS})
        out["edge_index"] = torch.cat([g.edge_index for g in graphs], 1) + ptr["x"][:-1].repeat_interleave(edges_per)
    else:
        cols = out["kernel_cols"].any(0)
        keep = columns(cols)  # a slice when the columns are a range (a view per graph, one copy in the cat)
        out["edge_attr"] = torch.cat([g.edge_attr if keep is None else g.edge_attr[:, keep] for g in graphs])
        out["edge_cols"] = cols[None]
    batch = Batch(_base_cls=type(graphs[0]), **out, **{k: [g[k] for g in graphs] for k in lists},
                  batch=torch.repeat_interleave(torch.arange(len(graphs)), nodes), ptr=ptr["x"],
                  num_nodes=int(ptr["x"][-1]))
    batch._num_graphs, batch._store._num_nodes = len(graphs), nodes.tolist()
    if edges:
        batch._slice_dict = {k: ptr["x"] for k in _NODE_KEYS} | {k: ptr["edge_attr"] for k in _EDGE_KEYS} | {
            "edge_index": ptr["edge_attr"], "blocks": ptr["blocks"], "extra": ptr["extra"]} | {
            k: one for k in ["kernel_cols", "num_groups"] + lists}
        batch._inc_dict = {k: zero for k in _NODE_KEYS + _EDGE_KEYS + ("kernel_cols", "extra", "num_groups")} | {
            "edge_index": ptr["x"][:-1], "blocks": inc_blocks} | dict.fromkeys(lists)
    return batch
