"""Where Sinkhorn re-basin should take the interpolated loss: U(0, 1) against the midpoint, on validation pairs.

For seeded *validation* pairs of a zoo (never the reported test pairs), runs ``gnn+sinkhorn`` (or another
Sinkhorn-based method) once per ``lam_range`` and reports the mean Deep-Align barrier (BatchNorm statistics
reset), per architecture family. Writes ``OUT/lam_range-ZOO.{json,md}`` with provenance.

    python benchmarks/refine/lam_range.py --zoo digits-mlp --aligner mixed --pairs 30 --out benchmarks/refine
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import torch

from gnn_align import methods
from gnn_align.aligner import load_aligner
from gnn_align.baselines import sinkhorn_rebasin
from gnn_align.io import DEFAULT_ZOO_ROOT
from gnn_align.metrics import input_batches
from gnn_align.provenance import provenance
from gnn_align.studies.bench import evaluate_alignment, pair_generator, zoo_pairs
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.zoo import ModelZoo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", required=True)
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--aligner", default="mixed")
    p.add_argument("--method", default="gnn+sinkhorn")
    p.add_argument("--pairs", type=int, default=30)
    p.add_argument("--ranges", default="0,1;0.5,0.5;0.25,0.75", help="lam ranges 'lo,hi' separated by ';'")
    p.add_argument("--out", default="benchmarks/refine")
    args = p.parse_args()
    torch.set_num_threads(1)
    ranges = [tuple(map(float, r.split(","))) for r in args.ranges.split(";")]
    zoo = ModelZoo(str(Path(args.root) / args.zoo), split="val", log=False)
    aligner = load_aligner(args.aligner)
    table = methods.method_table(aligner)
    rows = []
    for p in zoo_pairs(zoo, args.pairs, progress=True):
        i, j, m, task, spec, a, b, module = p.i, p.j, p.member, p.task, p.spec, p.a, p.b, p.module
        row = {"family": zoo.members[m]["arch"]["family"]}
        for lo, hi in ranges:  # the method table calls methods.sinkhorn_rebasin: give it this range
            methods.sinkhorn_rebasin = functools.partial(sinkhorn_rebasin, lam_range=(lo, hi))
            ctx = methods.PairContext(module, spec, a, b, task.x_train, task.y_train, task.loss,
                                      pair_generator(0, i, j))
            perm = methods.lookup(table, args.method)(ctx)
            metrics, _ = evaluate_alignment(module, a, b, perm, spec, task, reset_bn=input_batches(task.x_train))
            row[f"{lo:g},{hi:g}"] = metrics["barrier_deepalign"]
        rows.append(row)
    methods.sinkhorn_rebasin = sinkhorn_rebasin
    keys = [f"{lo:g},{hi:g}" for lo, hi in ranges]
    groups = {"all": rows} | {f: [r for r in rows if r["family"] == f] for f in sorted({r["family"] for r in rows})}
    mean = {g: {k: sum(r[k] for r in rs) / len(rs) for k in keys} | {"pairs": len(rs)} for g, rs in groups.items()}
    res = {"zoo": args.zoo, "split": "val", "method": args.method, "aligner": args.aligner, "mean": mean,
           "per_pair": rows, "provenance": provenance(aligner=args.aligner, aligner_model=aligner)}
    md = (f"**{args.zoo}**, {len(rows)} validation pairs, `{args.method}` (gnn = `{args.aligner}`): mean "
          "Deep-Align barrier by the range λ is drawn from\n\n"
          + markdown_table(["pairs", "n", *[f"U({k})" for k in keys]],
                           [[g, v["pairs"], *(f"{v[k]:.4f}" for k in keys)] for g, v in mean.items()]))
    write_report(args.out, f"lam_range-{args.zoo}", res, md + "\n", echo=True)


if __name__ == "__main__":
    main()
