"""``gnn-align zoo | train``: the zoo builder and the training entry point of a source checkout.

Both live outside the library (``datasets/`` and ``train.py`` at the repository root; the library
imports neither), so these subcommands run them as child processes with the same Python and
forward every argument. They need a checkout: the working directory or the one the package was
installed from in editable mode.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ..errors import GNNAlignError


def checkout_root() -> Path:
    """The source checkout holding ``train.py`` and ``datasets/``: the working directory, else the
    folder above the (editable-installed) package.

    Raises:
        GNNAlignError: when neither has them.
    """
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        if (root / "train.py").is_file() and (root / "datasets" / "__main__.py").is_file():
            return root
    raise GNNAlignError("`gnn-align zoo` and `gnn-align train` run the zoo builder and train.py of a gnn_align "
                        "source checkout: run them inside one (git clone ...; pip install -e .)")


def _forward(cmd: list, rest: list) -> int:
    root = checkout_root()
    return subprocess.call([sys.executable] + cmd + rest, cwd=root)


def add_parsers(sub) -> None:
    """Add zoo and train to the subcommands ``sub`` (their options are those of the forwarded tools)."""
    p = sub.add_parser("zoo", help="build, list or verify model zoos (python -m datasets ...)", add_help=False,
                       description="Forwards every argument to `python -m datasets` of the source checkout: "
                       "`gnn-align zoo build digits-mlp`, `gnn-align zoo --help`.")
    p.set_defaults(forward=["-m", "datasets"])
    p = sub.add_parser("train", help="train an aligner (python train.py ...)", add_help=False,
                       description="Forwards every argument to train.py of the source checkout: "
                       "`gnn-align train --preset mixed`, `gnn-align train --help`.")
    p.set_defaults(forward=["train.py"])


def run(args, rest: list) -> int:
    """Run a job command: forward ``rest`` to the script behind it; its exit status."""
    return _forward(args.forward, rest)
