"""Test helpers shipped with the package, so users can check their own architectures.

Each helper is itself tested on a case that must fail (see ``tests/test_testing.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from .permute import apply_permutation, random_permutation
from .spec import Axis, PermutationSpec

#: max |Δ| allowed between outputs that must be equal, by the dtype they are computed in: the one table of
#: gnn_align's function checks, the helpers here and :func:`gnn_align.align` / :func:`gnn_align.merge` (which
#: scale it by max(1, max |B(x)|)); any dtype not listed gets the 16-bit value (:func:`default_atol`)
TOLERANCES = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 1e-2}


def default_atol(dtype: torch.dtype) -> float:
    """The tolerance of a function check in ``dtype`` when none is given: :data:`TOLERANCES`.

    1e-9 in float64, 1e-4 in float32, 1e-2 in 16 bits (and any other dtype).
    """
    return TOLERANCES.get(dtype, TOLERANCES[torch.float16])


@torch.no_grad()
def output_change(module: nn.Module, state_dict: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> float:
    """The largest |module(inputs) - module_with(state_dict)(inputs)|, both in eval mode; ``module`` unchanged."""
    other = copy.deepcopy(module).eval()
    other.load_state_dict(dict(state_dict))
    was = module.training
    module.eval()
    try:
        return float((module(inputs) - other(inputs)).abs().max())
    finally:
        module.train(was)


def assert_function_preserved(module: nn.Module, spec: PermutationSpec, perm: Mapping[str, torch.Tensor],
                              inputs: torch.Tensor, atol: float | None = None) -> float:
    """Assert that permuting ``module``'s neurons by ``perm`` leaves its outputs unchanged.

    Args:
        atol: tolerance on max |Δ|; default :func:`default_atol` of the inputs' dtype.

    Returns:
        The measured max |Δ|.
    """
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    delta = output_change(module, apply_permutation(state, perm, spec), inputs)
    tol = atol if atol is not None else default_atol(inputs.dtype)
    if not delta <= tol:
        raise AssertionError(f"permuting the network changed its output: max |delta| = {delta:.3e} > {tol:.1e}")
    return delta


@torch.no_grad()
def assert_perm_equivariant(encoder: nn.Module, graph, spec: PermutationSpec, trials: int = 3, seed: int = 0,
                            atol: float | None = None) -> float:
    """Assert that a graph encoder is equivariant to relabelling neurons within their permutation groups.

    For ``trials`` random permutations ``p`` of ``spec`` (seeded by ``seed``), the encoder's output on
    ``relabel(graph, p)`` must equal its output on ``graph`` with the rows moved the same way
    (``out[node_sources(graph, p)]``): the embedding of a neuron follows the neuron, not its slot.

    Args:
        encoder: maps a graph of ``spec``'s network (a :class:`~gnn_align.graph.NetGraph`) to a tensor
            with one row per node.
        atol: tolerance on max |Δ|; default :func:`default_atol` of the output's dtype.

    Returns:
        The largest max |Δ| measured.

    Raises:
        AssertionError: when the output does not have one row per node, or moves differently from the nodes.
    """
    from .graph import node_sources, relabel  # here: gnn_align.api reads TOLERANCES without torch_geometric

    out = encoder(graph)
    if out.dim() < 1 or out.shape[0] != graph.num_nodes:
        raise AssertionError(f"the encoder returned shape {tuple(out.shape)}; expected one row per node "
                             f"({graph.num_nodes})")
    tol = atol if atol is not None else default_atol(out.dtype)
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for t in range(trials):
        perm = random_permutation(spec, gen)
        delta = float((encoder(relabel(graph, perm)) - out[node_sources(graph, perm)]).abs().max())
        worst = max(worst, delta)
        if not delta <= tol:
            raise AssertionError(f"the encoder is not equivariant to relabelling neurons within their groups: "
                                 f"trial {t}, max |delta| = {delta:.3e} > {tol:.1e}")
    return worst


def one_sided_spec(spec: PermutationSpec, group: str) -> PermutationSpec:
    """A spec in which ``group`` acts on only the first tensor axis (or axis piece) it acts on in ``spec``.

    Permuting with it breaks the coupling between a layer's outputs and its consumers' inputs:
    the negative control that a function-preservation test must fail.
    """
    key, axis, piece = spec.pieces(group)[0]
    axes = {k: tuple((a if isinstance(a, Axis) else (piece,)) if (k == key and d == axis) else None
                     for d, a in enumerate(v)) for k, v in spec.axes.items()}
    return PermutationSpec(spec.group_sizes, axes)


def move_nodes(graph, node_perm: torch.Tensor):
    """The graph whose node ``n`` carries the features and incident edges of node ``node_perm[n]``
    while keeping node ``n``'s labels (type, depth, group, position).

    For nodes of one group this is :func:`gnn_align.relabel` (a symmetry: an equivariant encoder's
    output moves with the nodes); for input or output neurons, or nodes of different layers, it is
    a change of the network that an encoder must *not* treat as a relabelling. When every moved
    edge still fits an edge slot of the original layout, the edges are put back in that layout (so
    the graph's ``blocks`` stay valid); otherwise the moved graph is no network of the contract and
    its ``blocks`` are dropped (a block reader then refuses it).
    """
    where = torch.argsort(node_perm)  # old node -> its new index
    out = graph.clone()
    out.x = graph.x[node_perm]
    moved = where[graph.edge_index]
    n, etype = graph.num_nodes, graph.edge_type
    keys = (moved[0] * n + moved[1]) * 2 + etype
    slots = (graph.edge_index[0] * n + graph.edge_index[1]) * 2 + etype
    order = torch.argsort(keys)
    at = torch.searchsorted(keys[order], slots).clamp(max=max(len(keys) - 1, 0))
    if len(keys) and torch.equal(keys[order][at], slots):
        out.edge_attr = graph.edge_attr[order[at]]
        return out
    out.edge_index = moved
    if "blocks" in out:
        del out.blocks
    return out


@torch.no_grad()
def equivariance_error(encoder: nn.Module, graph, node_perm: torch.Tensor) -> float:
    """The largest |encoder(move_nodes(graph, p)) - encoder(graph)[p]|: 0 when the encoder treats the
    move as a relabelling (the output follows the nodes)."""
    return float((encoder(move_nodes(graph, node_perm)) - encoder(graph)[node_perm]).abs().max())
