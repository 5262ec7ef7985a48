"""Seconds per pair of ``gnn_align.align`` on torchvision's ``resnet18`` and ``vgg11_bn`` (issue 18, item 19).

Each pair is two random initialisations (10 classes) of one model, seeds ``2p`` and ``2p + 1``; the
models come from :func:`big_models.build` (torchvision when it imports, else local copies). Every
pair runs ``align(state_a, state_b, METHOD, module=model_a)`` in a fresh process, so that no run pays
for another's memory; the row records the wall time of the whole call (tracing, checks, the method
and the function check), the method's own seconds, how the answer came out (sha256 of the
permutation, to show that a speed-up did not change it) and, with ``--profile``, the functions that
took the most time.

``am`` (activation matching) gets 64 random 32x32 images as its data.

Usage: python benchmarks/hostile_inputs/timing.py [--models resnet18 vgg11_bn] [--methods wm gnn am]
       [--pairs 1] [--threads 1] [--profile 12] [--out DIR] [--stem timing] [--label TEXT] [--before JSON]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def perm_sha(perm: dict) -> str:
    """sha256 (first 16 hex digits) of a permutation: every group's name and indices, in order."""
    h = hashlib.sha256()
    for g, p in perm.items():
        h.update(g.encode())
        h.update(p.numpy().tobytes())
    return h.hexdigest()[:16]


#: activation matching's inputs: this many random images (``AM_SIZE`` pixels square; both models end in an
#: adaptive average pool, so they take any size); the other methods get none
AM_INPUTS, AM_SIZE = 64, 32


def _data(method: str):
    """Random inputs for the methods that need them (``am``), else None."""
    import torch

    if method != "am":
        return None
    return torch.randn(AM_INPUTS, 3, AM_SIZE, AM_SIZE, generator=torch.Generator().manual_seed(0))


def one(name: str, method: str, pair: int, threads: int, profile: int) -> dict:
    """Align one pair in this process; the row of the table (or the one-line error it raised)."""
    import torch
    from big_models import build

    import gnn_align
    from gnn_align.errors import GNNAlignError

    torch.set_num_threads(threads)
    torch.manual_seed(2 * pair)
    a, source = build(name)
    torch.manual_seed(2 * pair + 1)
    b, _ = build(name)
    row = {"model": name, "source": source, "method": method, "pair": pair, "threads": threads,
           "load_average": os.getloadavg()[0],  # 1-minute load of the machine as the call starts
           "parameters": sum(p.numel() for p in a.parameters()), "gnn_align": str(Path(gnn_align.__file__).parent)}
    prof = cProfile.Profile() if profile else None
    t0 = time.perf_counter()
    try:
        if prof:
            prof.enable()
        res = gnn_align.align(a.state_dict(), b.state_dict(), method, module=a, data=_data(method))
    except GNNAlignError as e:
        return row | {"wall_seconds": time.perf_counter() - t0, "error": str(e)}
    finally:
        if prof:
            prof.disable()
    row |= {"wall_seconds": time.perf_counter() - t0, "method_seconds": res.seconds,
            "max_abs_diff": res.max_abs_diff, "groups": len(res.spec.group_sizes),
            "largest_group": max(res.spec.group_sizes.values()), "perm_sha256": perm_sha(res.perm)}
    if prof:
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(profile)
        row["profile"] = [line.rstrip() for line in text.getvalue().splitlines() if line.strip()][-profile - 1:]
    return row


def _cells(r: dict | None) -> list:
    """The wall s, method s and permutation sha256 cells of a row (dashes for a missing row)."""
    if r is None:
        return ["–", "–", "–"]
    if "error" in r:
        return [f"{r['wall_seconds']:.1f}", "refused (below)", "–"]
    return [f"{r['wall_seconds']:.1f}", f"{r['method_seconds']:.1f}", f"`{r['perm_sha256']}`"]


def markdown(result: dict) -> str:
    """The table (with the ``--before`` run's columns when given) and the profiles."""
    from gnn_align.studies.report import markdown_table

    before = {(r["model"], r["method"], r["pair"]): r for r in (result.get("before") or {}).get("rows", [])}
    threads = sorted({r["threads"] for r in result["rows"]})
    lines = [result["label"], ""] if result.get("label") else []
    lines += [(f"Seconds per pair of `gnn_align.align` (two random initialisations, 10 classes; torch threads "
               f"{threads}); wall: the whole call, method: the alignment method alone."), ""]
    loads = [r["load_average"] for r in result["rows"] if "load_average" in r]
    if loads:
        lines += [(f"Load average (1 min) as the calls started: {min(loads):.1f}–{max(loads):.1f} on "
                   f"{os.cpu_count()} CPUs."), ""]
    head = ["model", "source", "parameters", "method", "pair", "wall s", "method s", "permutation sha256"]
    if before:
        lines += [f"Compared with {result['before'].get('label') or 'the --before run'}.", ""]
        head += ["before: wall s", "method s", "permutation sha256"]
    rows = [[r["model"], r["source"], f"{r['parameters']:,}", r["method"], r["pair"], *_cells(r),
             *(_cells(before.get((r["model"], r["method"], r["pair"]))) if before else [])] for r in result["rows"]]
    lines.append(markdown_table(head, rows))
    refusals = dict.fromkeys(f"{r['model']} / {r['method']}: {r['error']}" for r in result["rows"] if "error" in r)
    lines += ["", *(f"Refused: {text}" for text in refusals)] if refusals else []
    for r in result["rows"]:
        if r.get("profile"):
            lines += ["", f"Profile of {r['model']} / {r['method']} (pair {r['pair']}), by own time:", "", "```",
                      *r["profile"], "```"]
    return "\n".join(lines) + "\n"


def main(argv: list | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "vgg11_bn"])
    p.add_argument("--methods", nargs="+", default=["wm", "gnn"])
    p.add_argument("--pairs", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", type=int, default=0, metavar="N", help="record the N functions with most own time")
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--stem", default="timing")
    p.add_argument("--label", default="", help="what code was measured (recorded with the result)")
    p.add_argument("--before", type=Path, help="a result JSON of this script to compare with (same pairs)")
    p.add_argument("--one", nargs=3, metavar=("MODEL", "METHOD", "PAIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    if args.one:
        print(json.dumps(one(args.one[0], args.one[1], int(args.one[2]), args.threads, args.profile)))
        return
    from gnn_align.provenance import provenance
    from gnn_align.studies.report import write_report

    rows = []
    for name in args.models:
        for method in args.methods:
            for pair in range(args.pairs):
                cmd = [sys.executable, __file__, "--one", name, method, str(pair), "--threads", str(args.threads),
                       "--profile", str(args.profile)]
                run = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)  # stderr: progress
                if run.returncode:
                    sys.exit(f"timing.py: {name} / {method} / pair {pair} failed (exit {run.returncode})")
                rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "profile"}), file=sys.stderr)
    before = json.loads(args.before.read_text()) if args.before else None
    result = {"label": args.label, "rows": rows, "before": before, "provenance": provenance()}
    write_report(args.out, args.stem, result, markdown(result), echo=True)


if __name__ == "__main__":
    main()
