"""Where Sinkhorn re-basin should take the interpolated loss: U(0, 1) against the midpoint, on validation pairs.

For seeded *validation* pairs of a zoo (never the reported test pairs), runs ``gnn+sinkhorn`` (or another
Sinkhorn-based method) once per ``lam_range`` (``sinkhorn_settings.run_settings``, a setting each) and reports
the mean Deep-Align barrier (BatchNorm statistics reset), per architecture family. Writes
``OUT/lam_range-ZOO.{json,md}`` with provenance.

    python benchmarks/refine/lam_range.py --zoo digits-mlp --aligner mixed --pairs 30 --out benchmarks/refine
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sinkhorn_settings import run_settings  # this folder's script (on sys.path when run as a script)

from gnn_align.aligner import load_aligner
from gnn_align.io import DEFAULT_ZOO_ROOT
from gnn_align.provenance import provenance
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
    keys = [f"{lo:g},{hi:g}" for lo, hi in ranges]
    found = run_settings(zoo, aligner, args.method, [{"lam_range": r} for r in ranges], args.pairs,
                         lambda s: "{:g},{:g}".format(*s["lam_range"]))
    rows = [{"family": r["family"]} | {k: r[k] for k in keys} for r in found]
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
