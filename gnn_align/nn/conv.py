"""Message passing over network graphs, with edge updates and messages in both directions."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from ..config import AlignerConfig


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Two-layer perceptron with SiLU."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


class NetConv(MessagePassing):
    r"""One round of message passing on a network's computation graph.

    Edges carry states too (a weight is an edge), and information flows both along the direction
    of computation (from a neuron's inputs) and against it (from its outputs), with separate
    message functions. Messages are *bilinear* in the edge state and the sender's state, the way a
    weight multiplies an activation, which keeps the cost per edge at O(hidden) (networks have
    far more weights than neurons):

    .. math::
        e'_{ij} &= e_{ij} + \phi_e([P h_i, Q h_j, e_{ij}]) \\
        h'_j &= \mathrm{LN}\Big(h_j + \phi_h\Big(\Big[h_j,\
              \operatorname{mean}_{i \in N^-(j)} (F e'_{ij}) \odot (A h_i),\
              \operatorname{mean}_{k \in N^+(j)} (B e'_{jk}) \odot (C h_k)\Big]\Big)\Big)

    where :math:`N^-(j)` are the inputs of neuron :math:`j` and :math:`N^+(j)` its outputs. Every
    function is shared by all nodes and edges, so the layer is equivariant to any relabelling of
    the graph's nodes; mean aggregation keeps the scale independent of layer width.

    Args:
        hidden: width of node states.
        edge_hidden: width of edge states (default :class:`~gnn_align.config.AlignerConfig`'s).

    Shapes:
        - **input:** node states :math:`(N, H)`, edge_index :math:`(2, E)` (forward edges only),
          edge states :math:`(E, H_e)`
        - **output:** node states :math:`(N, H)`, edge states :math:`(E, H_e)`
    """

    def __init__(self, hidden: int, edge_hidden: int = AlignerConfig.edge_hidden):
        super().__init__(aggr="mean")
        self.hidden, self.edge_hidden = hidden, edge_hidden
        self.proj_src, self.proj_dst = nn.Linear(hidden, edge_hidden), nn.Linear(hidden, edge_hidden)
        self.edge_mlp = mlp(3 * edge_hidden, edge_hidden, edge_hidden)
        self.gate_fwd, self.gate_bwd = nn.Linear(edge_hidden, hidden), nn.Linear(edge_hidden, hidden)
        self.lin_fwd, self.lin_bwd = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.node_mlp = mlp(3 * hidden, hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.LayerNorm)):
                m.reset_parameters()

    def forward(self, h: Tensor, edge_index: Tensor, e: Tensor) -> tuple:
        src, dst = edge_index
        e = e + self.edge_mlp(torch.cat([self.proj_src(h)[src], self.proj_dst(h)[dst], e], dim=-1))
        fwd = self.propagate(edge_index, x=self.lin_fwd(h), gate=self.gate_fwd(e))
        bwd = self.propagate(edge_index.flip(0), x=self.lin_bwd(h), gate=self.gate_bwd(e))
        return self.norm(h + self.node_mlp(torch.cat([h, fwd, bwd], dim=-1))), e

    def message(self, x_j: Tensor, gate: Tensor) -> Tensor:
        return gate * x_j

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(hidden={self.hidden}, edge_hidden={self.edge_hidden})"
