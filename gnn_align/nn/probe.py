"""Probe passes: run a network graph on learned virtual inputs (forward) and outputs (backward)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor
from torch_geometric.nn import MessagePassing

from ..graph import EDGE_SKIP
from ..spec import NODE_FEATURES, NODE_HIDDEN, NODE_INPUT, NODE_OUTPUT

_BIAS, _NORM_W, _NORM_B, _RUN_MEAN, _RUN_VAR = (NODE_FEATURES.index(f) for f in (
    "bias", "norm_weight", "norm_bias", "running_mean", "running_var"))


class ProbePass(MessagePassing):
    r"""Canonical neuron features from the network's own computation on :math:`K` learned probes.

    A hidden neuron has no identity of its own, but what it *computes* does not depend on where it
    is listed. The forward pass gives every input neuron :math:`i` a learned probe vector
    :math:`p_i \in \mathbb{R}^K` (row :math:`i` of a table initialised :math:`\mathcal{N}(0, 1)`, so
    the untrained pass is activation matching on Gaussian inputs) and pushes the :math:`K` probes
    through the network, layer by layer in order of depth, with the network's own weights:

    .. math::
        z_j = \sum_{i \in N^-(j)} (r^\top w_{ij}) \odot a_i + b_j, \qquad
        a_j = \mathrm{ReLU}(\mathrm{BN}_j(z_j)),

    where :math:`w_{ij}` is the edge's kernel (a learned read-out :math:`r \in \mathbb{R}^{d \times K}`
    turns it into one weight per probe; for a Linear layer :math:`r` scales the weight), residual
    skips add :math:`a_i` unchanged, and :math:`\mathrm{BN}_j` applies the neuron's BatchNorm
    statistics and affine parameters when it has them. Matching hidden neurons of two networks by
    :math:`z_j` is activation matching on virtual inputs; the backward pass does the same from the
    outputs, :math:`g_i = \sum_{j \in N^+(i)} (r_b^\top w_{ij}) \odot g_j` with learned output probes,
    which is what the outgoing weights say about a neuron. Both are equivariant to any relabelling
    of the hidden neurons and break exactly the input/output symmetries. The result is each
    vector divided by its norm (scale-free, so positive rescaling of ReLU neurons cannot move it).

    Args:
        probes: number of probe channels :math:`K`.
        edge_dim: edge feature width of the graphs (kernel length).
        max_fixed: rows of the input and output probe tables (the most input or output neurons
            a network may have).

    Shapes:
        - **input:** a :class:`~torch_geometric.data.Batch` of NetGraphs (or one NetGraph)
        - **output:** :math:`(N, 2K)`: normalised forward and backward probe responses
          (zeros for the fixed neurons on the side they are read from)
    """

    def __init__(self, probes: int = 64, edge_dim: int = 1, max_fixed: int = 1024):
        super().__init__(aggr="add")
        self.probes, self.edge_dim, self.max_fixed = probes, edge_dim, max_fixed
        self.in_probe = nn.Embedding(max_fixed, probes)
        self.out_probe = nn.Embedding(max_fixed, probes)
        self.read_fwd = nn.Parameter(torch.empty(edge_dim, probes))
        self.read_bwd = nn.Parameter(torch.empty(edge_dim, probes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.normal_(self.in_probe.weight)
        nn.init.normal_(self.out_probe.weight)
        nn.init.ones_(self.read_fwd)  # start as the network's own weights (kernel sums)
        nn.init.ones_(self.read_bwd)

    def _operator(self, g, keep: Tensor, reverse: bool, dtype: torch.dtype) -> Tensor:
        """Sparse ``(N * (d + 1), N)`` operator of the edges in ``keep``: row ``target * (d + 1) + k``,
        column ``source``, value the ``k``-th kernel entry (weight edges) or 1 in slot ``d`` (skips).
        Zero entries (kernel padding) are left out."""
        n, d = g.num_nodes, g.edge_attr.shape[1]
        src, dst = g.edge_index.flip(0) if reverse else g.edge_index
        weight = keep & (g.edge_type != EDGE_SKIP)
        attr = g.edge_attr[weight].to(dtype)
        e, k = torch.nonzero(attr, as_tuple=True)
        skip = torch.nonzero(keep & (g.edge_type == EDGE_SKIP)).flatten()
        rows = torch.cat([dst[weight][e] * (d + 1) + k, dst[skip] * (d + 1) + d])
        cols = torch.cat([src[weight][e], src[skip]])
        vals = torch.cat([attr[e, k], torch.ones(len(skip), dtype=dtype, device=attr.device)])
        return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n * (d + 1), n),
                                       check_invariants=False).coalesce()

    def _push(self, adj: Tensor, x: Tensor, read: Tensor) -> Tensor:
        """``sum_k read[k] * (A_k @ x)`` plus the skips: one sparse product, no per-edge tensors."""
        out = self.propagate(adj, x=x)  # (N * (d + 1), K)
        ones = torch.ones(1, read.shape[1], dtype=read.dtype, device=read.device)
        return torch.einsum("nkc,kc->nc", out.view(x.shape[0], -1, x.shape[1]), torch.cat([read, ones]))

    def forward(self, g) -> Tensor:
        dtype = self.read_fwd.dtype
        depth, kind, x = g.node_depth, g.node_type, g.x.to(dtype)
        src, dst = g.edge_index
        fixed = kind != NODE_HIDDEN
        if fixed.any() and int(g.perm_pos[fixed].max()) >= self.max_fixed:
            raise ValueError(f"a network has {int(g.perm_pos[fixed].max()) + 1} input or output neurons; "
                             f"this ProbePass has probe vectors for {self.max_fixed} (max_fixed)")
        idx = torch.where(fixed, g.perm_pos, 0)
        zero = torch.zeros(g.num_nodes, self.probes, dtype=dtype, device=x.device)
        # forward: pre-activations z and activations a, one depth at a time
        z = torch.where((kind == NODE_INPUT)[:, None], self.in_probe(idx), zero)
        a = z
        has_bn = (x[:, _RUN_VAR] > 0)[:, None]
        bn_scale = x[:, _NORM_W:_NORM_W + 1] / (x[:, _RUN_VAR:_RUN_VAR + 1] + 1e-5).sqrt()
        max_depth = int(depth.max()) if depth.numel() else 0
        for d in range(1, max_depth + 1):
            new = self._push(self._operator(g, depth[dst] == d, False, dtype), a, self.read_fwd) \
                + x[:, _BIAS:_BIAS + 1]
            new_a = torch.where(has_bn, (new - x[:, _RUN_MEAN:_RUN_MEAN + 1]) * bn_scale
                                + x[:, _NORM_B:_NORM_B + 1], new).relu()
            at = (depth == d)[:, None]
            z, a = torch.where(at, new, z), torch.where(at, new_a, a)
        # backward: linear, from the output probes towards the inputs
        gb = torch.where((kind == NODE_OUTPUT)[:, None], self.out_probe(idx), zero)
        for d in range(max_depth - 1, 0, -1):
            agg = self._push(self._operator(g, depth[src] == d, True, dtype), gb, self.read_bwd)
            gb = torch.where(((depth == d) & (kind == NODE_HIDDEN))[:, None], agg, gb)
        fwd = torch.where((kind == NODE_INPUT)[:, None], zero, z)
        bwd = torch.where((kind == NODE_OUTPUT)[:, None], zero, gb)
        return torch.cat([nn.functional.normalize(fwd, dim=-1), nn.functional.normalize(bwd, dim=-1)], dim=-1)

    def message_and_aggregate(self, adj: Tensor, x: Tensor) -> Tensor:
        return torch.sparse.mm(adj, x)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(probes={self.probes}, edge_dim={self.edge_dim})"
