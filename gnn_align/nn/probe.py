"""Probe passes: run a network graph on learned virtual inputs (forward) and outputs (backward)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..config import AlignerConfig as _Config  # the defaults
from ..spec import NODE_FEATURES, NODE_HIDDEN, NODE_INPUT, NODE_OUTPUT
from .blocks import DST0 as _DST0
from .blocks import SRC0 as _SRC0
from .blocks import block_plan, nodeset_ids, push_blocks, used_columns

_BIAS, _NORM_W, _NORM_B, _RUN_MEAN, _RUN_VAR = (NODE_FEATURES.index(f) for f in (
    "bias", "norm_weight", "norm_bias", "running_mean", "running_var"))

#: the activations the probe pass runs, by their names in the one table :data:`gnn_align.archs.ACTIVATIONS`
#: (tests/test_aligner.py checks it): name -> function of (pre-activation, w0); ``sine`` is SIREN's sin(w0 z)
ACTIVATIONS = {"relu": lambda z, w0: z.relu(), "tanh": lambda z, w0: z.tanh(), "sine": lambda z, w0: (w0 * z).sin()}


class ProbeResponses(NamedTuple):
    """A :class:`ProbePass`'s normalised forward and backward responses, ``(N, K)`` each, with the
    nodes in evaluation order: node ``i``'s are row ``pos[i]``."""
    fwd: Tensor
    bwd: Tensor
    pos: Tensor

    def rows(self, nodes: Tensor | None = None) -> Tensor:
        """``(len(nodes), 2K)``: the responses ``[forward, backward]`` of ``nodes`` (default: every node),
        in that order."""
        at = self.pos if nodes is None else self.pos[nodes]
        return torch.cat([self.fwd[at], self.bwd[at]], dim=-1)

    def project(self, weight: Tensor) -> Tensor:
        """``rows() @ weight.T`` (``weight``: ``(H, 2K)``), in node order, without gathering the responses
        of every node first. Shapes: (N, H)."""
        k = self.fwd.shape[1]
        return torch.addmm(self.fwd @ weight[:, :k].t(), self.bwd, weight[:, k:].t())[self.pos]


class ProbePass(nn.Module):
    r"""Canonical neuron features from the network's own computation on :math:`K` learned probes.

    A hidden neuron has no identity of its own, but what it *computes* does not depend on where it
    is listed. The forward pass gives every input neuron :math:`i` a learned probe vector
    :math:`p_i \in \mathbb{R}^K` (row :math:`i` of a table initialised :math:`\mathcal{N}(0, 1)`, so
    the untrained pass is activation matching on Gaussian inputs) and pushes the :math:`K` probes
    through the network, level by level in order of depth, with the network's own weights:

    .. math::
        z_j = \sum_{i \in N^-(j)} (r^\top w_{ij}) \odot a_i + b_j, \qquad
        a_j = \sigma(\mathrm{BN}_j(z_j)),

    where :math:`\sigma` is the networks' activation, :math:`w_{ij}` is the edge's kernel (a learned
    read-out :math:`r \in \mathbb{R}^{d \times K}` turns it into one weight per probe; for a Linear
    layer :math:`r` scales the weight), residual
    skips add :math:`a_i` unchanged, and :math:`\mathrm{BN}_j` applies the neuron's BatchNorm
    statistics and affine parameters when it has them. Matching hidden neurons of two networks by
    :math:`z_j` is activation matching on virtual inputs; the backward pass does the same from the
    outputs, :math:`g_i = \sum_{j \in N^+(i)} (r_b^\top w_{ij}) \odot g_j` with learned output probes,
    which is what the outgoing weights say about a neuron. Both are equivariant to any relabelling
    of the hidden neurons and break exactly the input/output symmetries. The result is each
    vector divided by its norm (scale-free, so positive rescaling of ReLU neurons cannot move it).

    The pass reads the graph's ``blocks`` (see :mod:`gnn_align.graph`): every layer is one dense
    weight block, and blocks of equal shape across a batch run as one batched matrix product, so
    the cost is that of running the networks, with no per-edge tensors and no sparse indexing.

    Args:
        probes: number of probe channels :math:`K` (every default is
            :class:`~gnn_align.config.AlignerConfig`'s).
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

    def __init__(self, probes: int = _Config.probes, edge_dim: int = _Config.edge_dim,
                 max_fixed: int = _Config.max_fixed, activation: str = _Config.activation, w0: float = _Config.w0):
        super().__init__()
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
        nn.init.normal_(self.in_probe.weight)
        nn.init.normal_(self.out_probe.weight)
        nn.init.ones_(self.read_fwd)  # start as the network's own weights (kernel sums)
        nn.init.ones_(self.read_bwd)

    @staticmethod
    def levels(g) -> Tensor:
        """Evaluation order of the nodes: ``node_depth`` raised until every block (a residual skip
        between node sets of equal depth included) runs from a lower to a higher level. A node set
        shares one level, so each block is read at the first node of its source and target sets."""
        set_id, b = nodeset_ids(g, skips=True), g.blocks
        level = g.node_depth.clone()
        for _ in range(len(b) + 1):
            need = torch.zeros_like(level).scatter_reduce_(0, b[:, _DST0], level[b[:, _SRC0]] + 1, "amax")
            new = torch.maximum(level, need[set_id])
            if torch.equal(new, level):
                return level
            level = new
        raise ValueError("the network graph has a cycle")

    def forward(self, g) -> Tensor:
        return self.responses(g).rows()

    def responses(self, g) -> ProbeResponses:
        """The normalised responses in evaluation order, as :class:`ProbeResponses` (what
        :meth:`forward` returns in node order, read without copying every node's)."""
        dtype = self.read_fwd.dtype
        if getattr(g, "blocks", None) is None:
            raise ValueError("the graph has no 'blocks' (made by an older gnn_align?); rebuild it with to_graph")
        fixed = g.node_type != NODE_HIDDEN
        if fixed.any() and int(g.perm_pos[fixed].max()) >= self.max_fixed:
            raise ValueError(f"a network has {int(g.perm_pos[fixed].max()) + 1} input or output neurons; "
                             f"this ProbePass has probe vectors for {self.max_fixed} (max_fixed)")
        # nodes sorted by level: every level, and every node set, is one contiguous range of rows
        level = self.levels(g)
        n = g.num_nodes
        order = torch.argsort(level, stable=True)
        pos = torch.empty_like(order)
        pos[order] = torch.arange(n, device=order.device)
        top = int(level.max()) if n else 0
        start = torch.searchsorted(level[order], torch.arange(top + 2, device=level.device)).tolist()
        blocks = g.blocks.clone()
        blocks[:, _SRC0], blocks[:, _DST0] = pos[blocks[:, _SRC0]], pos[blocks[:, _DST0]]
        x, kind = g.x.to(dtype)[order], g.node_type[order]
        attr, used = used_columns(g)
        idx = torch.where(fixed, g.perm_pos, 0)[order]
        has_bn = (x[:, _RUN_VAR] > 0)[:, None]
        any_bn = bool(has_bn.any())
        bn_scale = x[:, _NORM_W:_NORM_W + 1] / (x[:, _RUN_VAR:_RUN_VAR + 1] + 1e-5).sqrt()
        # forward: pre-activations z and activations a, one level at a time (level 0: the inputs)
        z = x.new_zeros(n, self.probes)
        z[:start[1]] = torch.where((kind[:start[1]] == NODE_INPUT)[:, None], self.in_probe(idx[:start[1]]), 0.0)
        a = z.clone()
        lv = level[order]  # one plan, its blocks tagged (target level, source level)
        plan = block_plan(attr, blocks, used, list(zip(lv[blocks[:, _DST0]].tolist(), lv[blocks[:, _SRC0]].tolist())))
        for d in range(1, top + 1):
            r = slice(start[d], start[d + 1])
            new = push_blocks(plan.tagged(lambda t, d=d: t[0] == d), a, self.read_fwd, False, (r.start, r.stop))
            new = new + x[r, _BIAS:_BIAS + 1]
            z[r] = new
            if any_bn:
                bn = (new - x[r, _RUN_MEAN:_RUN_MEAN + 1]) * bn_scale[r] + x[r, _NORM_B:_NORM_B + 1]
                new = torch.where(has_bn[r], bn, new)
            a[r] = ACTIVATIONS[self.activation](new, self.w0)
        # backward: linear, from the output probes towards the inputs (input neurons stay zero)
        is_out = (kind == NODE_OUTPUT)[:, None]
        out_rows = is_out.flatten().nonzero().flatten()
        gb = x.new_zeros(n, self.probes).index_put_((out_rows,), self.out_probe(idx[out_rows]))
        for d in range(top - 1, 0, -1):
            r = slice(start[d], start[d + 1])
            agg = push_blocks(plan.tagged(lambda t, d=d: t[1] == d), gb, self.read_bwd, True, (r.start, r.stop))
            gb[r] = torch.where(is_out[r], gb[r], agg)
        z[:start[1]] = 0.0  # no forward response at the inputs, no backward one at the outputs
        bwd = nn.functional.normalize(gb, dim=-1).index_fill_(0, out_rows, 0.0)
        return ProbeResponses(nn.functional.normalize(z, dim=-1), bwd, pos)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(probes={self.probes}, edge_dim={self.edge_dim}, "
                f"activation={self.activation!r})")
