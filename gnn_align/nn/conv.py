"""Message passing over network graphs, with edge updates and messages in both directions."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor
from torch_geometric.nn import MessagePassing


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """Two-layer perceptron with SiLU."""
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


class NetConv(MessagePassing):
    r"""One round of message passing on a network's computation graph.

    Edges carry states too (a weight is an edge), and information flows both along the direction
    of computation (from a neuron's inputs) and against it (from its outputs), with separate
    message functions, so a neuron's embedding depends on what feeds it and on what it feeds:

    .. math::
        e'_{ij} &= e_{ij} + \phi_e([h_i, h_j, e_{ij}]) \\
        h'_j &= h_j + \phi_h\Big(\Big[h_j,\ \tfrac{1}{|N^-(j)|}\sum_{i \in N^-(j)} \phi_f([h_i, e'_{ij}]),\
              \tfrac{1}{|N^+(j)|}\sum_{k \in N^+(j)} \phi_b([h_k, e'_{jk}])\Big]\Big)

    where :math:`N^-(j)` are the inputs of neuron :math:`j` and :math:`N^+(j)` its outputs. Mean
    aggregation keeps the scale independent of layer width. Every function is shared by all nodes
    and edges, so the layer is equivariant to any relabelling of the graph's nodes.

    Args:
        hidden: width of node and edge states.

    Shapes:
        - **input:** node states :math:`(N, H)`, edge_index :math:`(2, E)` (forward edges only),
          edge states :math:`(E, H)`
        - **output:** node states :math:`(N, H)`, edge states :math:`(E, H)`
    """

    def __init__(self, hidden: int):
        super().__init__(aggr="mean")
        self.hidden = hidden
        self.edge_mlp = mlp(3 * hidden, hidden, hidden)
        self.fwd_mlp = mlp(2 * hidden, hidden, hidden)
        self.bwd_mlp = mlp(2 * hidden, hidden, hidden)
        self.node_mlp = mlp(3 * hidden, hidden, hidden)
        self.norm_h, self.norm_e = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.LayerNorm)):
                m.reset_parameters()

    def forward(self, h: Tensor, edge_index: Tensor, e: Tensor) -> tuple:
        src, dst = edge_index
        e = e + self.edge_mlp(torch.cat([h[src], h[dst], e], dim=-1))
        fwd = self.propagate(edge_index, x=h, e=e, mlp_id=0)
        bwd = self.propagate(edge_index.flip(0), x=h, e=e, mlp_id=1)
        h = h + self.node_mlp(torch.cat([h, fwd, bwd], dim=-1))
        return self.norm_h(h), self.norm_e(e)

    def message(self, x_j: Tensor, e: Tensor, mlp_id: int) -> Tensor:
        return (self.fwd_mlp if mlp_id == 0 else self.bwd_mlp)(torch.cat([x_j, e], dim=-1))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(hidden={self.hidden})"
