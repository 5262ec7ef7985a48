"""gnn_align: learn to align neural networks with graph neural networks.

The foundation: a network's permutation symmetry as a :class:`PermutationSpec` (derived by
:func:`spec_from_module`), the one group action (:func:`apply_permutation`), and the network as a
graph (:func:`to_graph` / :func:`from_graph`).
"""

from .api import AlignResult, MergeResult, align, merge
from .errors import GNNAlignError, PermutationError, StateDictError, UnsupportedLayerError
from .graph import NetGraph, from_graph, global_group, relabel, to_graph
from .permute import (
                      apply_permutation,
                      compose_permutations,
                      identity_permutation,
                      invert_permutation,
                      random_permutation,
)
from .spec import Axis, NetStructure, PermutationSpec
from .trace import spec_from_module

__version__ = "0.1.0"

__all__ = [
                      "AlignResult",
                      "Axis",
                      "GNNAlignError",
                      "MergeResult",
                      "NetGraph",
                      "NetStructure",
                      "PermutationError",
                      "PermutationSpec",
                      "StateDictError",
                      "UnsupportedLayerError",
                      "__version__",
                      "align",
                      "apply_permutation",
                      "compose_permutations",
                      "from_graph",
                      "global_group",
                      "identity_permutation",
                      "invert_permutation",
                      "merge",
                      "random_permutation",
                      "relabel",
                      "spec_from_module",
                      "to_graph",
]
