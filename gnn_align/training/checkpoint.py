"""Training checkpoints that resume bit for bit, written atomically and read without unpickling.

A checkpoint holds the model's weights, the optimiser and learning-rate schedule states, the state
of the generator that orders the data, and the caller's position (plain numbers and dicts of
floats, e.g. finished epochs, steps into the next one and that epoch's running loss sums). It is
saved with ``torch.save`` to a temporary file that replaces the old checkpoint with ``os.replace``,
so a process killed at any moment leaves either the previous or the new checkpoint, never a torn
one; it is read with ``torch.load(..., weights_only=True)``. The checkpoint holds the sha256 of its
own contents (:func:`~gnn_align.io.content_sha256`), checked on load, so a changed byte is
refused instead of resuming from a silently different state (checkpoints written before the checksum
existed load unchecked).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import GNNAlignError, check_keys
from ..io import atomic_write, content_sha256

_STATE_KEYS = ("model", "opt", "sched", "rng")
_CHECKSUM = "sha256"


def save_training_state(path: str | Path, model: nn.Module, opt: torch.optim.Optimizer, sched, gen: torch.Generator,
                        **position) -> None:
    """Write a checkpoint of ``model``, ``opt``, ``sched`` (an LR scheduler) and ``gen``, plus
    ``position`` (keyword values: numbers, strings, or dicts/lists of them)."""
    clash = sorted(set(position) & {*_STATE_KEYS, _CHECKSUM})
    if clash:
        raise ValueError(f"position keys {clash} clash with the checkpoint's own entries")
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
             "rng": gen.get_state(), **position}
    state[_CHECKSUM] = content_sha256(state)
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_training_state(path: str | Path, model: nn.Module, opt: torch.optim.Optimizer, sched,
                        gen: torch.Generator) -> dict:
    """Restore a checkpoint written by :func:`save_training_state` in place; returns its position.

    Raises:
        GNNAlignError: an unreadable or truncated file, one that needs real unpickling, one whose
            contents do not match its checksum, or one that does not fit ``model`` (named).
    """
    path = Path(path)
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is reported by file name
        raise GNNAlignError(f"{path}: cannot read checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(state, dict):
        raise GNNAlignError(f"{path}: not a training checkpoint (a {type(state).__name__}, not a dict)")
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise GNNAlignError(f"{path}: not a training checkpoint (missing {', '.join(missing)})")
    if _CHECKSUM in state:
        digest = state.pop(_CHECKSUM)
        try:
            ok = digest == content_sha256(state)
        except TypeError as e:
            raise GNNAlignError(f"{path}: not a training checkpoint ({e})") from None
        if not ok:
            raise GNNAlignError(f"{path}: checksum mismatch (the checkpoint changed since it was written)")
    check_fits(path, model, state["model"])
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        gen.set_state(state["rng"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GNNAlignError(f"{path}: checkpoint does not fit this run ({first[:200]})") from None
    return {k: v for k, v in state.items() if k not in _STATE_KEYS}


def check_fits(path: str | Path, model: nn.Module, saved: dict) -> None:
    """Raise unless the saved weights ``saved`` have exactly ``model``'s keys and shapes (names the first misfit).

    Raises:
        GNNAlignError: ``"<path>: checkpoint does not fit this model: ..."`` naming the first missing or
            unexpected key (:func:`~gnn_align.errors.check_keys`), or a key and both shapes.
    """
    own = model.state_dict()
    if not isinstance(saved, dict):
        raise GNNAlignError(f"{path}: not a training checkpoint (its model entry is not a state dict)")
    check_keys(saved, own, f"{path}: checkpoint does not fit this model", "the model", GNNAlignError)
    for k, v in saved.items():
        shape = tuple(getattr(v, "shape", ()))
        if shape != tuple(own[k].shape):
            raise GNNAlignError(f"{path}: checkpoint does not fit this model: '{k}' has shape {shape}, "
                                f"the model {tuple(own[k].shape)}")
