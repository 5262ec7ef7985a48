"""Message passing in which the network's own weights carry the messages (no edge states)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.nn import MessagePassing

from ..config import AlignerConfig
from ..graph import EDGE_SKIP
from .blocks import BlockPlan, graph_plan, push_blocks
from .conv import mlp


class WeightConv(MessagePassing):
    r"""One round of message passing whose messages are the network's weights times the senders'
    states, along and against the direction of computation.

    .. math::
        m^{\to}_j = \sum_{i \in N^-(j)} (r_f^\top w_{ij}) \odot A h_i, \qquad
        m^{\leftarrow}_i = \sum_{j \in N^+(i)} (r_b^\top w_{ij}) \odot B h_j, \\
        h'_j = \mathrm{LN}\big(h_j + \phi([h_j,\ \hat m^{\to}_j,\ \hat m^{\leftarrow}_j])\big),
        \qquad \hat m = m / \lVert m \rVert,

    where :math:`r_f, r_b \in \mathbb{R}^{d \times H}` read a kernel of :math:`d` values as one
    weight per channel, and a residual skip passes :math:`A h_i` (:math:`B h_j`) unchanged. This is
    the probe pass's product with learned node states in place of probes: one dense matrix product
    per layer, no per-edge state, so a round costs about one forward and one backward pass of the
    network at width :math:`H`. Normalising each aggregated message makes the layer invariant to
    rescaling a layer's weights by :math:`c > 0` and the next layer's by :math:`1/c` (a symmetry of
    ReLU networks), and to rescaling the incoming weights of one neuron: only directions count.

    The sparse path (:meth:`forward`) is a plain PyG ``MessagePassing`` over ``edge_index``;
    :meth:`forward_blocks` computes the same over the graph's dense ``blocks`` (tested equal), and
    is what :class:`~gnn_align.nn.NetEncoder` runs.

    Args:
        hidden: width :math:`H` of node states.
        edge_dim: edge feature width :math:`d` (kernel length) of the graphs (default
            :class:`~gnn_align.config.AlignerConfig`'s).
        eps: added to the message norm.

    Shapes:
        - **input:** node states :math:`(N, H)`, edge_index :math:`(2, E)` (forward edges only),
          edge_attr :math:`(E, d)`, edge_type :math:`(E,)` (1 marks a residual skip)
        - **output:** node states :math:`(N, H)`
    """

    def __init__(self, hidden: int, edge_dim: int = AlignerConfig.edge_dim, eps: float = 1e-6):
        super().__init__(aggr="add")
        self.hidden, self.edge_dim, self.eps = hidden, edge_dim, eps
        self.lin_fwd, self.lin_bwd = nn.Linear(hidden, hidden, bias=False), nn.Linear(hidden, hidden, bias=False)
        self.read_fwd = nn.Parameter(torch.empty(edge_dim, hidden))
        self.read_bwd = nn.Parameter(torch.empty(edge_dim, hidden))
        self.node_mlp = mlp(3 * hidden, hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.ones_(self.read_fwd)  # start from the weights themselves (kernel sums)
        nn.init.ones_(self.read_bwd)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.LayerNorm)):
                m.reset_parameters()

    def _update(self, h: Tensor, fwd: Tensor, bwd: Tensor) -> Tensor:
        fwd = nn.functional.normalize(fwd, dim=-1, eps=self.eps)
        bwd = nn.functional.normalize(bwd, dim=-1, eps=self.eps)
        first, act, second = self.node_mlp  # phi([h, fwd, bwd]), its first layer one block of columns at a time
        w, k = first.weight, self.hidden
        z = torch.addmm(first.bias, h, w[:, :k].t()).addmm_(fwd, w[:, k:2 * k].t()).addmm_(bwd, w[:, 2 * k:].t())
        return self.norm(h + second(act(z)))

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor, edge_type: Tensor | None = None) -> Tensor:
        skip = torch.zeros(edge_attr.shape[0], 1, dtype=torch.bool, device=h.device) if edge_type is None \
            else (edge_type == EDGE_SKIP)[:, None]
        attr = edge_attr.to(h.dtype)
        w_fwd = torch.where(skip, 1.0, attr @ self.read_fwd)  # (E, H)
        w_bwd = torch.where(skip, 1.0, attr @ self.read_bwd)
        fwd = self.propagate(edge_index, x=self.lin_fwd(h), weight=w_fwd)
        bwd = self.propagate(edge_index.flip(0), x=self.lin_bwd(h), weight=w_bwd)
        return self._update(h, fwd, bwd)

    def message(self, x_j: Tensor, weight: Tensor) -> Tensor:
        return weight * x_j

    def forward_blocks(self, h: Tensor, g, plan: BlockPlan | None = None, rows: Tensor | None = None) -> Tensor:
        """:meth:`forward` over the dense weight blocks of ``g`` (a NetGraph or a batch of them);
        ``plan``: their :func:`~gnn_align.nn.blocks.block_plan`, when several rounds share it;
        ``rows``: update only these nodes and return their states, ``(len(rows), H)`` (a last round)."""
        plan = graph_plan(g) if plan is None else plan
        fwd = push_blocks(plan, self.lin_fwd(h), self.read_fwd)
        bwd = push_blocks(plan, self.lin_bwd(h), self.read_bwd, reverse=True)
        if rows is not None:
            h, fwd, bwd = h[rows], fwd[rows], bwd[rows]
        return self._update(h, fwd, bwd)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(hidden={self.hidden}, edge_dim={self.edge_dim})"
