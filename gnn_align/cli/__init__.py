"""The ``gnn-align`` command line: one entry point for every job.

``inspect``, ``align``, ``merge``, ``eval`` work on model files (:mod:`.models`); ``distance`` and
``nearest`` compare models after alignment (:mod:`.population`); ``demo``,
``bench``, ``warmstart``, ``speed`` study the symmetry and trained aligners (:mod:`.studies`);
``zoo`` and ``train`` run the zoo builder and ``train.py`` of a source checkout (:mod:`.jobs`).
Bad input ends with one line on stderr (``gnn-align: error: ...``) and exit code 2, and with
``--json`` also a JSON object ``{"error": ..., "file": ...}`` on stdout. Building the parser
imports neither torch nor the library's numerical modules, so ``--help`` and argument errors are fast.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import sys
import warnings

from . import jobs, models, population, studies

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class UsageError(Exception):
    """An argument error found by argparse (reported in one line by :func:`main`)."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message; main() prints it
        raise UsageError(self.prog, message)


def build_parser() -> argparse.ArgumentParser:
    """The ``gnn-align`` parser with every subcommand (imports no numerical module)."""
    parser = _Parser(prog="gnn-align", description="Learn to align neural networks: align, merge "
                     "and compare models, build zoos, train and benchmark aligners.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    models.add_parsers(sub)
    population.add_parsers(sub)
    jobs.add_parsers(sub)
    studies.add_parsers(sub)
    return parser


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = e.filename if e.filename is not None else ""
        text = f"{where}: {e.strerror.lower()}" if where else e.strerror.lower()
        if e.errno == errno.ENOSPC:
            text += " (nothing was written)"
    else:
        text = str(e) or type(e).__name__
    return " ".join(_ANSI.sub("", text).split())


def _file_of(e: BaseException, msg: str, argv: list) -> str | None:
    """The file an error is about: the exception's, else the leading ``path:`` of the message when it
    names an existing path or one of the command line's arguments."""
    if isinstance(e, OSError) and e.filename is not None:
        return str(e.filename)
    m = re.match(r"(?:-o |--out |--data )?(\S+?):? ", msg)
    if m is not None:
        cand = m.group(1).rstrip(":")
        if not cand.startswith("-") and (cand in argv or os.path.lexists(cand)):
            return cand
    return None


def _report(e: BaseException, argv: list, as_json: bool, prefix: str = "gnn-align") -> int:
    msg = _one_line(e)
    print(f"{prefix}: error: {msg}", file=sys.stderr)
    if as_json:
        print(json.dumps({"error": msg, "file": _file_of(e, msg, argv)}))
    return 2


def main(argv: list | None = None) -> int:
    """Run ``gnn-align`` on ``argv`` (default ``sys.argv[1:]``); returns the exit code (2: bad input)."""
    from ..errors import GNNAlignError

    if argv is None:  # run as the program: the process is ours (gnn_align.runtime); a caller's is not
        from ..runtime import keep_freed_memory

        keep_freed_memory()
    argv = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in argv
    parser = build_parser()
    try:
        if argv and argv[0] in ("zoo", "train"):  # forwarded untouched, --help included
            args, rest = parser.parse_known_args(argv[:1])
            rest = argv[1:]
        else:
            args, rest = parser.parse_args(argv), []
    except UsageError as e:
        e.args = (f"{e} (see {e.prog} --help)",)
        return _report(e, argv, as_json, prefix=e.prog)
    shown = warnings.formatwarning  # warnings (e.g. auto without data) print as one line
    warnings.formatwarning = lambda message, *_, **__: f"gnn-align: note: {' '.join(str(message).split())}\n"
    try:
        if hasattr(args, "forward"):
            return jobs.run(args, rest)
        if hasattr(args, "run"):
            return models.run(args)
        return args.func(args)
    except (GNNAlignError, ValueError, TypeError, OSError) as e:
        return _report(e, argv, as_json)
    except KeyboardInterrupt:
        print("gnn-align: interrupted (nothing was written)", file=sys.stderr)
        return 130
    except Exception as e:  # anything else: one line; the traceback on request
        if os.environ.get("GNN_ALIGN_TRACEBACK"):
            raise
        e.args = (f"unexpected {type(e).__name__}: {_one_line(e)} (set GNN_ALIGN_TRACEBACK=1 for the traceback)",)
        return _report(e, argv, as_json)
    finally:
        warnings.formatwarning = shown


if __name__ == "__main__":
    sys.exit(main())
