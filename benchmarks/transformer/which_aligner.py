r"""Which learned aligner to recommend for a transformer zoo: mean Deep-Align barrier on *validation* pairs.

Aligns seeded validation pairs of a zoo (never the reported test pairs) with each aligner (a shipped name or a
train.py run folder) and reports the mean Deep-Align barrier. Writes ``OUT/which_aligner.{json,md}``.

    python benchmarks/transformer/which_aligner.py --zoo transformers --aligners transformer,runs/transformers \\
        --pairs 48 --out benchmarks/transformer/transformers
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from gnn_align.aligner import load_aligner
from gnn_align.io import DEFAULT_ZOO_ROOT
from gnn_align.provenance import provenance, weights_hash
from gnn_align.studies.bench import evaluate_alignment, zoo_pairs
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.zoo import ModelZoo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="transformers")
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--aligners", default="transformer,runs/transformers", help="comma-separated")
    p.add_argument("--pairs", type=int, default=48)
    p.add_argument("--out", default="benchmarks/transformer/transformers")
    args = p.parse_args()
    torch.set_num_threads(1)
    zoo = ModelZoo(str(Path(args.root) / args.zoo), split="val", log=False)
    als = {n: load_aligner(n) for n in args.aligners.split(",")}
    rows = []
    for p in zoo_pairs(zoo, args.pairs, progress=True):
        task, spec, a, b, module = p.task, p.spec, p.a, p.b, p.module
        rows.append({n: evaluate_alignment(module, a, b, al.align(a, b, spec), spec, task)[0]["barrier_deepalign"]
                     for n, al in als.items()})
    mean = {n: statistics.fmean(r[n] for r in rows) for n in als}
    res = {"zoo": args.zoo, "split": "val", "pairs": len(rows), "mean": mean, "per_pair": rows,
           "provenance": provenance(), "aligners": {n: {"weights_sha256": weights_hash(al)} for n, al in als.items()}}
    md = (f"**{args.zoo}**, {len(rows)} validation pairs: mean Deep-Align barrier of each aligner\n\n"
          f"`{provenance()['command']}`\n\n"
          + markdown_table(["aligner", "barrier"], [[n, f"{v:.4f}"] for n, v in mean.items()]))
    write_report(args.out, "which_aligner", res, md + "\n", echo=True)


if __name__ == "__main__":
    main()
