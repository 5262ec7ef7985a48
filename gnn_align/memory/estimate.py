"""The learned aligner's memory before it runs: graph sizes, an upper estimate, a verdict.

* :func:`graph_size`: nodes, edges and group widths of a network's graph, read from its spec
  without building the graph (the spec may come from a model on the ``meta`` device).
* :func:`estimate_aligner_memory_mb` and :func:`check_aligner_memory`: the peak memory of one
  :meth:`~gnn_align.aligner.GNNAligner.align` call on a pair of such graphs, from the sizes of what
  the graphs, the encoder and the matching head allocate, and the verdict on whether it fits,
  given before anything is allocated. MB are 2**20 bytes.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config import AlignerConfig
from ..errors import GNNAlignError
from ..spec import PermutationSpec
from .measure import MB, available_memory_mb


@dataclass(frozen=True)
class GraphSize:
    """The size of a network's :class:`~gnn_align.NetGraph` (what :func:`~gnn_align.to_graph` builds).

    Attributes:
        nodes, edges: its numbers of nodes and edges (skips included).
        edge_len: the longest kernel (values per edge) of the network.
        group_widths: the size of every permutation group.
        params: the number of values in its weight tensors (edges times their kernel length).
    """

    nodes: int
    edges: int
    edge_len: int
    group_widths: tuple = field(default=())
    params: int = 0


def graph_size(spec: PermutationSpec) -> GraphSize:
    """Nodes, edges and group widths of the graph :func:`~gnn_align.to_graph` would build for
    ``spec``, computed from its structure alone (no tensor is allocated, so the spec may come from
    a model built on the ``meta`` device).

    Raises:
        StateDictError: a spec without structure (:meth:`~gnn_align.PermutationSpec.require_structure`).
    """
    spec = spec.graph_spec  # attention: its flat view
    st = spec.require_structure("graph_size")
    weights = [(ly.shape[0] * st.nodesets[ly.src].size, ly.edge_len) for ly in st.layers]
    skips = sum(st.nodesets[s].size for s, _ in st.skips)
    return GraphSize(nodes=sum(ns.size for ns in st.nodesets), edges=sum(e for e, _ in weights) + skips,
                     edge_len=max([k for _, k in weights] + [1]), group_widths=tuple(spec.group_sizes.values()),
                     params=sum(e * k for e, k in weights))


#: bytes of an index (PyG's edge index, gather indices: int64)
_INDEX = 8
#: the estimate is the sum of the allocations below times this factor, plus :data:`FIXED_MB`
SAFETY = 1.2
#: workspace that does not grow with the graph (BLAS and allocator slack, small tensors)
FIXED_MB = 8.0


def estimate_aligner_memory_mb(num_nodes: int, num_edges: int, edge_dim: int, aligner_config: AlignerConfig, *,
                               group_widths: Sequence[int] = (), params: int = 0, float_bytes: int = 4,
                               edge_len: int | None = None) -> float:
    """Upper estimate of the peak memory (MB) of aligning one pair of networks with a
    :class:`~gnn_align.aligner.GNNAligner`: building both graphs, the encoder's forward pass, the
    matching head and the Hungarian decode.

    What is counted, per edge (``E``) and node (``N``) of one network's graph, with ``d`` =
    ``edge_dim``, ``K`` probes, ``H`` hidden, ``He`` edge_hidden, ``f`` = ``float_bytes`` (4: the
    networks and the aligner in float32) and 8 bytes an index:

    * the graphs, held throughout: both graphs' edge features (``2 f d``), the edge index and edge
      types that graphs of one architecture share (``24``) and the batch of both: for an encoder on
      dense blocks (:func:`~gnn_align.batch.collate` with ``edges=False``) the ``c`` edge feature
      columns the kernels span (``c = min(d, edge_len)``: 1 for an MLP), counted twice for the
      slices it is made of (``4 f c``); for ``conv="edge"`` a full copy (``2 (f d + 24)``);
    * the encoder's largest transient, the larger of the :class:`~gnn_align.nn.ProbePass` (per weight
      block: the gathered edge features, their transposed copy and the gather index, ``2E (2 f c + 8)``
      with every block counted at once, where the real peak holds one level's blocks) and, with
      ``num_layers > 0``, the message passing: :class:`~gnn_align.nn.WeightConv` (``conv="weight"``)
      gathers the weight blocks as the probe pass does; :class:`~gnn_align.nn.NetConv`
      (``conv="edge"``) holds edge inputs, edge states and the messages of both directions:
      ``2E (f (d + 2 + 8 He + 4 H) + 16)``;
    * per node of both graphs, ``f (K (2d + 6) + 4H + 64)`` bytes: a level's probe products, the
      forward and backward probe states, node inputs and states;
    * the matching head: one padded ``width x width`` score matrix per group (the scores, their
      scaled and masked copies and two boolean masks: ``3 f + 3`` bytes an entry) and the Hungarian's
      float64 copy of one group with scipy's own (16 bytes an entry);
    * with ``params``, :func:`gnn_align.align`'s four copies of a network's weights (both state
      dicts, the module, the permuted B): ``4 f`` bytes a weight.

    The sum is multiplied by :data:`SAFETY` (1.2) and :data:`FIXED_MB` (8) is added.

    Calibration, on 2 CPU cores with 1 torch thread, the shipped aligner (``hidden=64``,
    ``num_layers=0``, ``probes=128``, ``edge_dim=10``), float32: the peak RSS rise of one
    ``gnn_align.align(a, b, method="gnn")`` call measured by ``benchmarks/scale/scale.py``, against this
    estimate with ``params`` and ``group_widths`` given:

    ============================================================  ==========  ========  ========  =====
    model                                                         edges       measured  estimate  ratio
    ============================================================  ==========  ========  ========  =====
    mlp:64,64,64,64,10                                            12,928      7 MB      23 MB     3.26
    mlp:64,128,128,128,10                                         42,240      20 MB     45 MB     2.27
    mlp:64,256,256,256,10                                         150,016     67 MB     113 MB    1.69
    mlp:64,512,512,512,10                                         562,176     203 MB    353 MB    1.73
    mlp:64,1024,1024,1024,10                                      2,172,928   786 MB    1241 MB   1.58
    mlp:64,2048,2048,2048,10                                      8,540,160   2790 MB   4652 MB   1.67
    cnn2d:3,64,128,256,512,512,10                                 439,488     257 MB    362 MB    1.41
    cnn2d:3,64,64,128,128,256,256,256,512,512,512,512,512,512,10  1,639,616   689 MB    1248 MB   1.81
    mlp:64,4096,4096,4096,10 (gnn only, --max-edges 40000000)     33,857,536  10547 MB  18021 MB  1.71
    ============================================================  ==========  ========  ========  =====

    An upper bound everywhere, within 1.4-1.8x from half a million edges (the MLPs of 2M to 34M edges
    measured 327 to 379 bytes an edge), up to 3.3x on the smallest graphs, where :data:`FIXED_MB`
    dominates.

    The table predates batches that keep only the kernel columns (:func:`~gnn_align.batch.collate` with
    ``edges=False``, 2026-11-29), which the estimate now counts (``edge_len``): ``GNNAligner.align`` alone
    (the shipped aligner, float32) then peaked at 66, 341 and 159 MB on mlp:64,384,384,384,10,
    mlp:64,1024,1024,1024,10 and cnn2d:3,64,128,256,512,512,10, against estimates of 121, 604 and 362 MB
    (1.8x, 1.8x, 2.3x).

    With NetConv message passing (``conv="edge"``, random aligners, ``GNNAligner.align`` alone):
    ``hidden=32, num_layers=1, edge_hidden=4, probes=128``: 185 MB measured, 329 estimated
    (mlp:64,256,256,256,10) and 635 / 1141 (mlp:64,512,512,512,10); ``hidden=64, num_layers=2,
    edge_hidden=16, probes=0, edge_dim=1``: 316 / 575 and 1059 / 2108.

    Args:
        num_nodes, num_edges: size of one network's graph (:func:`graph_size`).
        edge_dim: the edge feature width of the graphs (the aligner's ``config.edge_dim``, which
            :meth:`~gnn_align.aligner.GNNAligner.align` builds them with).
        aligner_config: the aligner's :class:`~gnn_align.config.AlignerConfig` (it reads ``hidden``,
            ``num_layers``, ``conv``, ``edge_hidden`` and ``probes``).
        group_widths: the sizes of the network's permutation groups (score matrices); default none.
        params: values in one network's weight tensors, to count :func:`gnn_align.align`'s copies.
        float_bytes: bytes of a float of the networks and the aligner (8 for float64).
        edge_len: the longest kernel of the network (:attr:`GraphSize.edge_len`); default ``edge_dim``.

    Returns:
        the estimated peak in MB (monotone in every size).
    """
    cfg = aligner_config
    k, h, he, layers = int(cfg.probes), int(cfg.hidden), int(cfg.edge_hidden), int(cfg.num_layers)
    e, n, d, f, i = int(num_edges), int(num_nodes), int(edge_dim), int(float_bytes), _INDEX
    c = d if edge_len is None else max(1, min(d, int(edge_len)))  # the edge feature columns a batch keeps
    edge_conv = cfg.conv == "edge" and layers > 0
    graphs = e * (2 * f * d + 3 * i) + (2 * e * (f * d + 3 * i) if edge_conv else 4 * e * f * c)
    blocks = 2 * e * (2 * f * c + i)  # the gathered weight blocks of a dense pass
    probe = blocks if k else 0
    edge_states = 2 * e * (f * (d + 2 + 8 * he + 4 * h) + 2 * i)
    conv = (blocks if cfg.conv == "weight" else edge_states) if layers else 0
    nodes = 2 * n * f * (k * (2 * d + 6) + 4 * h + 64)
    width = max(group_widths, default=0)
    head = ((3 * f + 3) * len(group_widths) + 16) * width * width
    total = graphs + max(probe, conv) + nodes + head + 4 * f * int(params)
    return SAFETY * total / MB + FIXED_MB


def _count(n: int) -> str:
    """``12928 -> '12.9k'``, ``8540160 -> '8.54M'``."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _gb(mb: float) -> str:
    return f"{mb / 1024:.1f} GB" if mb >= 1024 else f"{mb:.0f} MB"


def check_aligner_memory(name: str, size: GraphSize, aligner_config: AlignerConfig, *,
                         available_mb: float | None = None, usable: float = 0.9, float_bytes: int = 4,
                         raise_error: bool = True) -> str | None:
    """Say, before anything is allocated, whether aligning a pair of networks of ``size`` with an
    aligner of ``aligner_config`` fits in memory (:func:`estimate_aligner_memory_mb` against
    ``usable`` times the available memory).

    Args:
        name: the model's name, for the message.
        size: its :func:`graph_size`.
        aligner_config: the aligner's :class:`~gnn_align.config.AlignerConfig` (its ``edge_dim`` is the
            graphs' edge width).
        available_mb: memory to compare with; default :func:`available_memory_mb` now (the smallest of
            ``MemAvailable``, ``RLIMIT_AS`` and the cgroup memory limits). Where that
            is unknown (not Linux) nothing can be checked: a warning says so and the check passes.
        usable: the share of the available memory the estimate may take.
        float_bytes: bytes of a float of the networks and the aligner (8 for float64).
        edge_len: the longest kernel of the network (:attr:`GraphSize.edge_len`); default ``edge_dim``.
        raise_error: raise instead of returning the message.

    Returns:
        ``None`` when it fits, else a message such as ``"mlp:64,8192,8192,8192,10: 135M edges need
        ~69.2 GB for the aligner, 21.8 GB available"``.

    Raises:
        GNNAlignError: with that message (plus what to do), when it does not fit and ``raise_error``.
    """
    avail = available_memory_mb() if available_mb is None else float(available_mb)
    if avail is None:
        warnings.warn(f"{name}: available memory unknown (no /proc/meminfo, cgroup or RLIMIT_AS limit): "
                      "aligner memory not checked",
                      stacklevel=2)
        return None
    need = estimate_aligner_memory_mb(size.nodes, size.edges, aligner_config.edge_dim, aligner_config,
                                      edge_len=size.edge_len,
                                      group_widths=size.group_widths, params=size.params, float_bytes=float_bytes)
    if need <= usable * avail:
        return None
    msg = f"{name}: {_count(size.edges)} edges need ~{_gb(need)} for the aligner, {_gb(avail)} available"
    if raise_error:
        raise GNNAlignError(msg + ": align it with method='wm', or where more memory is free")
    return msg
