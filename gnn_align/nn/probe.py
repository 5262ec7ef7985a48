"""Probe passes: run a network graph on learned virtual inputs (forward) and outputs (backward)."""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
from torch import Tensor
from torch_geometric.nn import MessagePassing

from ..graph import EDGE_SKIP
from ..spec import NODE_FEATURES, NODE_HIDDEN, NODE_INPUT, NODE_OUTPUT

_BIAS, _NORM_W, _NORM_B, _RUN_MEAN, _RUN_VAR = (NODE_FEATURES.index(f) for f in (
    "bias", "norm_weight", "norm_bias", "running_mean", "running_var"))


#: activation name -> function of (pre-activation, w0); ``sine`` is SIREN's sin(w0 z)
ACTIVATIONS = {"relu": lambda z, w0: z.relu(), "tanh": lambda z, w0: z.tanh(), "sine": lambda z, w0: (w0 * z).sin()}

warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)


class ProbePass(MessagePassing):
    r"""Canonical neuron features from the network's own computation on :math:`K` learned probes.

    A hidden neuron has no identity of its own, but what it *computes* does not depend on where it
    is listed. The forward pass gives every input neuron :math:`i` a learned probe vector
    :math:`p_i \in \mathbb{R}^K` (row :math:`i` of a table initialised :math:`\mathcal{N}(0, 1)`, so
    the untrained pass is activation matching on Gaussian inputs) and pushes the :math:`K` probes
    through the network, layer by layer in order of depth, with the network's own weights:

    .. math::
        z_j = \sum_{i \in N^-(j)} (r^\top w_{ij}) \odot a_i + b_j, \qquad
        a_j = \sigma(\mathrm{BN}_j(z_j)),

    where :math:`\sigma` is the networks' activation, :math:`w_{ij}` is the edge's kernel (a learned read-out :math:`r \in \mathbb{R}^{d \times K}`
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
        activation: the networks' hidden activation, a key of :data:`ACTIVATIONS` (``relu``,
            ``tanh``, ``sine``: SIREN's :math:`\sin(w_0 z)`).
        w0: SIREN's frequency :math:`w_0` (``sine`` only).

    Shapes:
        - **input:** a :class:`~torch_geometric.data.Batch` of NetGraphs (or one NetGraph)
        - **output:** :math:`(N, 2K)`: normalised forward and backward probe responses
          (zeros for the fixed neurons on the side they are read from)
    """

    def __init__(self, probes: int = 64, edge_dim: int = 1, max_fixed: int = 1024, activation: str = "relu",
                 w0: float = 1.0):
        super().__init__(aggr="add")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{activation}'; choose from {sorted(ACTIVATIONS)}")
        self.probes, self.edge_dim, self.max_fixed = probes, edge_dim, max_fixed
        self.activation, self.w0 = activation, float(w0)
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

    def _operator(self, g, pos: Tensor, reverse: bool, dtype: torch.dtype) -> tuple:
        """The edges as one CSR operator over depth-sorted nodes, returned as ``(crow, col, val)``.

        Row ``pos[target] * (d + 1) + k`` holds, in column ``pos[source]``, the ``k``-th kernel entry of
        a weight edge, or 1 in slot ``d`` for a residual skip (``target``/``source`` swap with
        ``reverse``). Zero entries (kernel padding) are left out. Because nodes are sorted by depth,
        the rows of one depth are one contiguous slice (:meth:`_block`)."""
        n, d = g.num_nodes, g.edge_attr.shape[1]
        src, dst = g.edge_index.flip(0) if reverse else g.edge_index
        skip = g.edge_type == EDGE_SKIP
        attr = g.edge_attr[~skip].to(dtype)
        e, k = torch.nonzero(attr, as_tuple=True)
        rows = torch.cat([pos[dst[~skip][e]] * (d + 1) + k, pos[dst[skip]] * (d + 1) + d])
        cols = torch.cat([pos[src[~skip][e]], pos[src[skip]]])
        vals = torch.cat([attr[e, k], torch.ones(int(skip.sum()), dtype=dtype, device=attr.device)])
        order = torch.argsort(rows * n + cols)
        crow = torch.zeros(n * (d + 1) + 1, dtype=torch.long, device=rows.device)
        crow[1:] = torch.cumsum(torch.bincount(rows, minlength=n * (d + 1)), 0)
        return crow, cols[order], vals[order]

    @staticmethod
    def _block(op: tuple, r0: int, r1: int, c0: int, c1: int) -> Tensor:
        """Rows ``r0:r1`` of the operator as a CSR matrix over columns ``c0:c1`` (every entry of those
        rows must lie there: sources are shallower than targets)."""
        crow, col, val = op
        a, b = int(crow[r0]), int(crow[r1])
        return torch.sparse_csr_tensor(crow[r0:r1 + 1] - a, col[a:b] - c0, val[a:b], (r1 - r0, c1 - c0),
                                       check_invariants=False)

    def _push(self, adj: Tensor, x: Tensor, read: Tensor) -> Tensor:
        """``sum_k read[k] * (A_k @ x)`` plus the skips: one sparse product, no per-edge tensors."""
        out = self.propagate(adj, x=x)  # (rows * (d + 1), K)
        ones = torch.ones(1, read.shape[1], dtype=read.dtype, device=read.device)
        return torch.einsum("nkc,kc->nc", out.view(-1, read.shape[0] + 1, x.shape[1]), torch.cat([read, ones]))

    @staticmethod
    def levels(g) -> Tensor:
        """Evaluation order of the nodes: ``node_depth`` raised until every edge (a residual skip
        between node sets of equal depth included) runs from a lower to a higher level."""
        src, dst = g.edge_index
        level = g.node_depth.clone()
        for _ in range(g.num_nodes + 1):
            need = torch.zeros_like(level).scatter_reduce_(0, dst, level[src] + 1, "amax")
            new = torch.maximum(level, need)
            if torch.equal(new, level):
                return level
            level = new
        raise ValueError("the network graph has a cycle")

    def forward(self, g) -> Tensor:
        dtype = self.read_fwd.dtype
        kind = g.node_type
        fixed = kind != NODE_HIDDEN
        if fixed.any() and int(g.perm_pos[fixed].max()) >= self.max_fixed:
            raise ValueError(f"a network has {int(g.perm_pos[fixed].max()) + 1} input or output neurons; "
                             f"this ProbePass has probe vectors for {self.max_fixed} (max_fixed)")
        depth = self.levels(g)
        # sort nodes by depth: the neurons of one depth are one contiguous block
        n, s = g.num_nodes, self.edge_dim + 1
        order = torch.argsort(depth, stable=True)
        pos = torch.empty_like(order)
        pos[order] = torch.arange(n, device=order.device)
        max_depth = int(depth.max()) if n else 0
        start = torch.searchsorted(depth[order], torch.arange(max_depth + 2, device=depth.device)).tolist()
        x, kind = g.x.to(dtype)[order], kind[order]
        idx = torch.where(fixed, g.perm_pos, 0)[order]
        zero = torch.zeros(n, self.probes, dtype=dtype, device=x.device)
        has_bn = (x[:, _RUN_VAR] > 0)[:, None]
        bn_scale = x[:, _NORM_W:_NORM_W + 1] / (x[:, _RUN_VAR:_RUN_VAR + 1] + 1e-5).sqrt()
        # forward: pre-activations z and activations a, one depth at a time
        z = [torch.where((kind == NODE_INPUT)[:, None], self.in_probe(idx), zero)[:start[1]]]
        a = list(z)
        op = self._operator(g, pos, False, dtype)
        for d in range(1, max_depth + 1):
            r0, r1 = start[d], start[d + 1]
            new = self._push(self._block(op, r0 * s, r1 * s, 0, r0), torch.cat(a), self.read_fwd) \
                + x[r0:r1, _BIAS:_BIAS + 1]
            bn = (new - x[r0:r1, _RUN_MEAN:_RUN_MEAN + 1]) * bn_scale[r0:r1] + x[r0:r1, _NORM_B:_NORM_B + 1]
            z.append(new)
            a.append(ACTIVATIONS[self.activation](torch.where(has_bn[r0:r1], bn, new), self.w0))
        # backward: linear, from the output probes towards the inputs (input neurons stay zero)
        out_probe = torch.where((kind == NODE_OUTPUT)[:, None], self.out_probe(idx), zero)
        gb = [out_probe[start[max_depth]:]]
        op = self._operator(g, pos, True, dtype)
        for d in range(max_depth - 1, 0, -1):
            r0, r1 = start[d], start[d + 1]
            agg = self._push(self._block(op, r0 * s, r1 * s, r1, n), torch.cat(gb), self.read_bwd)
            gb.insert(0, torch.where((kind[r0:r1] == NODE_HIDDEN)[:, None], agg, out_probe[r0:r1]))
        gb.insert(0, zero[:start[1]])
        fwd = torch.where((kind == NODE_INPUT)[:, None], zero, torch.cat(z))
        bwd = torch.where((kind == NODE_OUTPUT)[:, None], zero, torch.cat(gb))
        out = torch.cat([nn.functional.normalize(fwd, dim=-1), nn.functional.normalize(bwd, dim=-1)], dim=-1)
        return out[pos]

    def message_and_aggregate(self, adj: Tensor, x: Tensor) -> Tensor:
        return adj @ x

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(probes={self.probes}, edge_dim={self.edge_dim}, "
                f"activation={self.activation!r})")
