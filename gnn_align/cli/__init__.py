"""The ``gnn-align`` command line: one entry point for every job.

``inspect``, ``align``, ``merge``, ``eval`` work on model files (:mod:`.models`); ``demo``,
``bench``, ``warmstart``, ``speed`` study the symmetry and trained aligners (:mod:`.studies`);
``zoo`` and ``train`` run the zoo builder and ``train.py`` of a source checkout (:mod:`.jobs`).
Bad input ends with one line on stderr (``gnn-align: error: ...``) and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from . import jobs, models, studies


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gnn-align", description="Learn to align neural networks: align, merge "
                                     "and compare models, build zoos, train and benchmark aligners.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models.add_parsers(sub)
    jobs.add_parsers(sub)
    studies.add_parsers(sub)
    return parser


def main(argv: list | None = None) -> int:
    from ..errors import GNNAlignError

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if argv and argv[0] in ("zoo", "train"):  # forwarded untouched, --help included
        args, rest = parser.parse_known_args(argv[:1])
        rest = argv[1:]
    else:
        args, rest = parser.parse_args(argv), []
    shown = warnings.formatwarning  # warnings (e.g. auto without data) print as one line
    warnings.formatwarning = lambda message, *_, **__: f"gnn-align: note: {' '.join(str(message).split())}\n"
    try:
        if hasattr(args, "forward"):
            return jobs.run(args, rest)
        if hasattr(args, "run"):
            return models.run(args)
        return args.func(args)
    except (GNNAlignError, ValueError, TypeError, FileNotFoundError) as e:
        msg = " ".join(str(e).split())
        print(f"gnn-align: error: {msg}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = shown


if __name__ == "__main__":
    sys.exit(main())
