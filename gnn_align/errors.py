"""Exceptions raised by gnn_align. Every message names the offending module path, key or file."""

from __future__ import annotations


class GNNAlignError(ValueError):
    """Base class of the errors gnn_align raises on bad input."""


class UnsupportedLayerError(GNNAlignError):
    """A module or operation whose permutation symmetry gnn_align cannot derive.

    Raised by :func:`gnn_align.spec_from_module` instead of returning a spec that could be wrong.
    """

    def __init__(self, path: str, op: str, reason: str = ""):
        self.path, self.op, self.reason = path, op, reason
        msg = f"unsupported layer at '{path}': {op}"
        super().__init__(msg + (f" ({reason})" if reason else ""))


class StateDictError(GNNAlignError):
    """A state dict that does not fit its :class:`~gnn_align.PermutationSpec` (keys, shapes, values)."""


class PermutationError(GNNAlignError):
    """A permutation dict that is not a valid element of a spec's group."""
