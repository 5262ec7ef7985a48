"""Training checkpoints that resume bit for bit, written atomically and read without unpickling.

A checkpoint holds the model's weights, the optimiser and learning-rate schedule states, the state
of the generator that orders the data, and the caller's position (plain numbers and dicts of
floats, e.g. finished epochs, steps into the next one and that epoch's running loss sums). It is
saved with ``torch.save`` to a temporary file that replaces the old checkpoint with ``os.replace``,
so a process killed at any moment leaves either the previous or the new checkpoint, never a torn
one; it is read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import GNNAlignError
from .zoo.storage import atomic_write

_STATE_KEYS = ("model", "opt", "sched", "rng")


def save_training_state(path: str | Path, model: nn.Module, opt: torch.optim.Optimizer, sched, gen: torch.Generator,
                        **position) -> None:
    """Write a checkpoint of ``model``, ``opt``, ``sched`` (an LR scheduler) and ``gen``, plus
    ``position`` (keyword values: numbers, strings, or dicts/lists of them)."""
    clash = sorted(set(position) & set(_STATE_KEYS))
    if clash:
        raise ValueError(f"position keys {clash} clash with the checkpoint's own entries")
    state = {"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
             "rng": gen.get_state(), **position}
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_training_state(path: str | Path, model: nn.Module, opt: torch.optim.Optimizer, sched,
                        gen: torch.Generator) -> dict:
    """Restore a checkpoint written by :func:`save_training_state` in place; returns its position.

    Raises:
        GNNAlignError: an unreadable or truncated file, or one that needs real unpickling (named).
    """
    path = Path(path)
    try:
        state = torch.load(path, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is reported by file name
        raise GNNAlignError(f"{path}: cannot read checkpoint ({type(e).__name__}: {str(e)[:200]})") from None
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise GNNAlignError(f"{path}: not a training checkpoint (missing {', '.join(missing)})")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    gen.set_state(state["rng"])
    return {k: v for k, v in state.items() if k not in _STATE_KEYS}
