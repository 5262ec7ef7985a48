"""Provenance of a result file: the command, the commit, the software and the aligner that produced it."""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from .runtime import freed_memory_kept


def git_commit(path: str | Path = ".") -> str:
    """The commit checked out at ``path`` (with ``+dirty`` when the work tree has changes), or ``unknown``."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=path, capture_output=True, text=True, timeout=10, check=False)
        head = run("rev-parse", "HEAD")
        if head.returncode:
            return "unknown"
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def weights_hash(model) -> str:
    """sha256 (first 16 hex digits) of a model's state dict (or of a state dict): every tensor's name,
    dtype, shape and bytes."""
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def provenance(argv: list | None = None, aligner: str | None = None,
               aligner_model: torch.nn.Module | None = None) -> dict:
    """What a result file records about how it was made.

    Args:
        argv: the command line (default ``sys.argv``).
        aligner: how the aligner was named on the command line (a run folder, ``pretrained``, ...).
        aligner_model: the aligner itself, to record its weights hash and config.
    """
    argv = sys.argv if argv is None else argv
    command = ("gnn-align " + shlex.join(argv[1:]) if argv and Path(argv[0]).name == "gnn-align"
               else "python " + shlex.join(argv))
    out = {"command": command, "commit": git_commit(Path(__file__).resolve().parent),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "freed_memory_kept": freed_memory_kept()}
    if aligner is not None:
        out["aligner"] = aligner
    if aligner_model is not None:
        out["aligner_weights_sha256"] = weights_hash(aligner_model)
        config = getattr(aligner_model, "config", None)
        out["aligner_config"] = config.to_dict() if hasattr(config, "to_dict") else config
    return out

