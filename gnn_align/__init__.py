"""gnn_align: learn to align neural networks with graph neural networks.

The foundation: a network's permutation symmetry as a :class:`PermutationSpec` (derived by
:func:`spec_from_module`), the one group action (:func:`apply_permutation`), and the network as a
graph (:func:`to_graph` / :func:`from_graph`).
"""

import importlib
import importlib.util

# name -> submodule: imported on first use (PEP 562), so that ``import gnn_align`` and the CLI's
# ``--help`` import neither torch nor torch_geometric; torch_geometric loads only with graphs or
# the learned aligner
_LAZY = {
    **dict.fromkeys(("AlignResult", "MergeResult", "align", "merge"), "api"),
    **dict.fromkeys(("GNNAlignError", "PermutationError", "StateDictError", "UnsupportedLayerError"), "errors"),
    **dict.fromkeys(("NetGraph", "from_graph", "global_group", "relabel", "to_graph"), "graph"),
    "collate": "batch",
    **dict.fromkeys(("apply_permutation", "compose_permutations", "identity_permutation", "invert_permutation",
                     "random_permutation"), "permute"),
    **dict.fromkeys(("Axis", "NetStructure", "PermutationSpec"), "spec"),
    "spec_from_module": "trace",
    "keep_freed_memory": "runtime",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule, e.g. gnn_align.api
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted(set(globals()) | set(_LAZY))


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
    "collate",
    "compose_permutations",
    "from_graph",
    "global_group",
    "identity_permutation",
    "invert_permutation",
    "keep_freed_memory",
    "merge",
    "random_permutation",
    "relabel",
    "spec_from_module",
    "to_graph",
]
