"""The network encoder: featurises a batch of :class:`~gnn_align.NetGraph` and runs message passing."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from ..config import CONVS, AlignerConfig, resolve
from ..graph import EDGE_SKIP
from ..spec import NODE_FEATURES, NODE_HIDDEN
from .blocks import graph_plan, nodeset_ids
from .conv import NetConv
from .head import group_rows, pool_groups
from .probe import ProbePass, ProbeResponses
from .weight_conv import WeightConv

__all__ = ["CONVS", "NetEncoder", "nodeset_normalize", "sinusoidal"]


def nodeset_normalize(x: Tensor, g, eps: float = 1e-12) -> Tensor:
    """Divide every column of ``x`` by its root mean square over the node's node set (the targets of
    one weight layer; nodes that no layer writes, the inputs, form sets of one).

    Scaling a layer's weights and biases by ``c > 0`` (and the next layer's weights by ``1 / c``,
    a symmetry of ReLU networks) scales its biases and BatchNorm statistics by ``c`` (``c²`` for
    the variance); the result does not change. What it gives up: the level of a layer's biases
    against its weights (scaling the biases alone is no symmetry); the probe pass, which runs the
    network, still sees it. Shapes: x (N, F) -> (N, F).
    """
    set_id = nodeset_ids(g)
    ms = scatter(x * x, set_id, dim=0, dim_size=x.shape[0], reduce="mean")[set_id]
    return x / (ms + eps).sqrt()


def sinusoidal(pos: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Sinusoidal encoding of integer positions. Shapes: (N,) -> (N, dim)."""
    k = torch.arange(dim // 2, device=pos.device, dtype=torch.get_default_dtype())
    freq = torch.exp(-math.log(base) * 2 * k / dim)
    ang = pos.to(freq.dtype)[:, None] * freq[None, :]
    return torch.cat([ang.sin(), ang.cos()], dim=-1)


class NetEncoder(nn.Module):
    r"""Embeds every neuron of a batch of network graphs.

    Node inputs: the node's parameters (bias, normalisation weight/bias and statistics; with
    ``scale_invariant`` each divided by its RMS over the node's layer, :func:`nodeset_normalize`), its type
    (input/hidden/output), sinusoidal encodings of its depth from the input and from the output
    (so one encoder reads networks of any depth), and — for input and output neurons only — a
    sinusoidal encoding of their fixed index. Hidden neurons get no identity, so the encoder is
    equivariant to permutations inside every group and to nothing more. Edge inputs: the weight
    (or kernel, padded to ``edge_dim``) and the edge type (weight / residual skip).

    With ``probes > 0``, a :class:`ProbePass` first runs the network on learned virtual inputs and
    outputs; its normalised responses join the node inputs, and the output is the concatenation
    ``[w_h * normalize(h), w_p * probe responses]`` with learned gains (so the matching head sees
    the canonical probe features directly, and message passing refines them).

    Message passing: ``num_layers`` rounds of :class:`WeightConv` (``conv="weight"``: messages are
    the network's weights times node states, computed per dense weight block) or of
    :class:`NetConv` (``conv="edge"``: node and edge states, sparse).

    Args:
        config: the settings it reads (``hidden``, ``num_layers``, ``conv``, ``scale_invariant``,
            ``edge_hidden``, ``probes``, ``edge_dim``, ``activation``, ``w0``, ``pos_dim``,
            ``max_fixed``); default :class:`~gnn_align.config.AlignerConfig` ().
        **overrides: settings that replace the config's, by name.

    Shapes:
        - **input:** a :class:`torch_geometric.data.Batch` of NetGraphs (or one NetGraph)
        - **output:** node embeddings :math:`(N, \text{hidden})`, or :math:`(N, \text{hidden} + 2\,
          \text{probes})` with probes
    """

    def __init__(self, config: AlignerConfig | None = None, **overrides):
        super().__init__()
        self.config = c = resolve(config, overrides)
        self.hidden, self.edge_dim, self.pos_dim, self.probes = c.hidden, c.edge_dim, c.pos_dim, c.probes
        self.conv, self.scale_invariant = c.conv, c.scale_invariant
        self.probe = ProbePass(c.probes, c.edge_dim, c.max_fixed, c.activation, c.w0) if c.probes else None
        self.node_in = nn.Linear(len(NODE_FEATURES) + 3 + 3 * c.pos_dim + 2 * c.probes, c.hidden)
        self.edge_in = nn.Linear(c.edge_dim + 2, c.edge_hidden) if c.conv == "edge" else None  # edge states
        self.convs = nn.ModuleList(WeightConv(c.hidden, c.edge_dim) if c.conv == "weight"
                                   else NetConv(c.hidden, c.edge_hidden) for _ in range(c.num_layers))
        self.gains = nn.Parameter(torch.empty(2)) if c.probes else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.probe is not None:
            self.probe.reset_parameters()
            with torch.no_grad():
                self.gains.copy_(torch.tensor([0.5, 1.0]))
        self.node_in.reset_parameters()
        if self.edge_in is not None:
            self.edge_in.reset_parameters()
        for conv in self.convs:
            conv.reset_parameters()

    def node_features(self, g, probe: Tensor | None = None) -> Tensor:
        batch = g.batch if getattr(g, "batch", None) is not None else torch.zeros_like(g.node_depth)
        max_depth = scatter(g.node_depth, batch, reduce="max")[batch]
        fixed = (g.node_type != NODE_HIDDEN).unsqueeze(-1)
        dtype = self.node_in.weight.dtype
        x = g.x.to(dtype)
        return torch.cat([
            nodeset_normalize(x, g) if self.scale_invariant else x,
            nn.functional.one_hot(g.node_type, 3).to(dtype),
            sinusoidal(g.node_depth, self.pos_dim).to(dtype),
            sinusoidal(max_depth - g.node_depth, self.pos_dim).to(dtype),
            torch.where(fixed, sinusoidal(g.perm_pos, self.pos_dim).to(dtype), 0.0),
        ] + ([] if probe is None else [probe]), dim=-1)

    @property
    def reads_edges(self) -> bool:
        """Whether it reads the sparse edge tensors (``conv="edge"`` message passing); if not, a batch
        of :func:`~gnn_align.batch.collate` with ``edges=False`` is all it needs."""
        return self.conv == "edge" and len(self.convs) > 0

    def embed_groups(self, g) -> tuple:
        """The embeddings of every permutation group's neurons, pooled by position
        (:func:`~gnn_align.nn.head.pool_groups` of :meth:`forward`), computed for those neurons only.

        Returns:
            ``(emb, mask)``: (G, n_max, D) and (G, n_max), as :func:`~gnn_align.nn.head.pool_groups`.
        """
        rows = group_rows(g)
        return pool_groups(self(g, rows), g, rows)

    def forward(self, g, rows: Tensor | None = None) -> Tensor:
        """The embeddings of every node, ``(N, D)``, or of the nodes ``rows`` only, ``(len(rows), D)``
        (then the last round of message passing updates only those)."""
        kept = getattr(g, "edge_cols", None)  # collate(..., edges=False): edge_attr holds these columns only
        width = g.edge_attr.shape[1] if kept is None else kept.shape[1]
        if width != self.edge_dim:
            raise ValueError(f"graphs have edge_dim={width}, the encoder expects "
                             f"{self.edge_dim}; build them with to_graph(..., edge_dim={self.edge_dim})")
        if self.reads_edges and getattr(g, "edge_index", None) is None:
            raise ValueError("this encoder (conv='edge') reads the edges; batch the graphs with collate(graphs)")
        dtype = self.node_in.weight.dtype
        if (self.scale_invariant or self.conv == "weight") and getattr(g, "blocks", None) is None:
            raise ValueError("the graph has no 'blocks' (made by an older gnn_align?); rebuild it with to_graph")
        probe = self.probe.responses(g) if self.probe is not None else None
        h = self.input_states(g, probe)
        if self.conv == "weight" and len(self.convs):
            plan = graph_plan(g)  # once for every round
            for k, conv in enumerate(self.convs):
                h = conv.forward_blocks(h, g, plan, rows if k == len(self.convs) - 1 else None)
        else:
            if len(self.convs):
                e = self.edge_in(torch.cat([g.edge_attr.to(dtype), nn.functional.one_hot(
                    (g.edge_type == EDGE_SKIP).long(), 2).to(dtype)], dim=-1))
                for conv in self.convs:
                    h, e = conv(h, g.edge_index, e)
            h = h if rows is None else h[rows]
        if probe is None:
            return h
        at = probe.pos if rows is None else probe.pos[rows]
        out = torch.cat([self.gains[0] * nn.functional.normalize(h, dim=-1), probe.fwd[at], probe.bwd[at]], dim=-1)
        out[:, h.shape[1]:] *= self.gains[1]  # [w_h * normalize(h), w_p * probe responses]: no extra copy
        return out

    def input_states(self, g, probe: ProbeResponses | None = None) -> Tensor:
        """``node_in`` of :meth:`node_features` with the probe responses: the same product, with the
        probe columns' share computed apart (:meth:`ProbeResponses.project`) instead of copied into the
        features. Shapes: (N, hidden)."""
        x = self.node_features(g)
        if probe is None:
            return self.node_in(x)
        w = self.node_in.weight
        return nn.functional.linear(x, w[:, :x.shape[1]], self.node_in.bias) + probe.project(w[:, x.shape[1]:])
