"""Exceptions raised by gnn_align. Every message names the offending module path, key or file."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


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


def check_keys(found: Iterable[str], expected: Iterable[str], what: str, reference: str,
               error: type[Exception] = StateDictError) -> None:
    """Raise ``error`` unless ``found`` has exactly the keys of ``expected``: the one check of a key set.

    The message names the first key of ``expected`` (in its order) that ``found`` lacks, else the
    first key of ``found`` that ``expected`` lacks, with its shape where the mapping holds a tensor,
    and how many more keys are missing (unexpected)::

        <what>: missing key '<key>' (<reference> has it, shape (3, 4); 2 more missing)
        <what>: unexpected key '<key>' (not in <reference>, shape (1,))

    Args:
        found: the keys to check (a state dict, or any iterable of keys).
        expected: the keys it must have (a state dict, a spec's ``axes``, ...).
        what: what ``found`` is, the start of the message (``"state dict"``, ``"model 1"``, a file).
        reference: what ``expected`` belongs to (``"the spec"``, ``"the architecture"``).
        error: the exception type (:class:`StateDictError` unless the caller's contract says otherwise).
    """
    found = found if isinstance(found, Mapping) else dict.fromkeys(found)
    expected = expected if isinstance(expected, Mapping) else dict.fromkeys(expected)
    for kind, keys, holder, where in (("missing", [k for k in expected if k not in found], expected,
                                       f"{reference} has it"),
                                      ("unexpected", [k for k in found if k not in expected], found,
                                       f"not in {reference}")):
        if keys:
            shape = getattr(holder[keys[0]], "shape", None)
            detail = where + ("" if shape is None else f", shape {tuple(shape)}") + \
                (f"; {len(keys) - 1} more {kind}" if len(keys) > 1 else "")
            raise error(f"{what}: {kind} key '{keys[0]}' ({detail})")
