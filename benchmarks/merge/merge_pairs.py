"""Merge numbers: test accuracy of the naive average vs the aligned average of two networks.

For fixed, seeded pairs of a zoo's test split: accuracy of A, of B, of the plain average of their
weights, and of the average after aligning B to A with each method (``gnn`` is the shipped
aligner unless ``--aligner RUN`` is given). BatchNorm statistics of every average are recomputed
on 512 training inputs. Writes merge.json and merge.md.

    python benchmarks/merge/merge_pairs.py --zoo digits-mlp --pairs 24 --out benchmarks/merge
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from gnn_align.aligner import load_aligner
from gnn_align.api import merge
from gnn_align.archs import build_arch
from gnn_align.io import DEFAULT_RESULTS_ROOT, DEFAULT_ZOO_ROOT
from gnn_align.metrics import accuracy
from gnn_align.pretrained import DEFAULT
from gnn_align.provenance import provenance
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.tasks import network_task
from gnn_align.zoo import ModelZoo, independent_pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="digits-mlp")
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--methods", default="gnn,wm,am")
    p.add_argument("--aligner", default=None, help="a train.py run folder (default: the shipped aligner)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=f"{DEFAULT_RESULTS_ROOT}/merge")
    args = p.parse_args()
    methods = args.methods.split(",")
    aligner = load_aligner(args.aligner or DEFAULT)
    zoo = ModelZoo(str(Path(args.root) / args.zoo), split="test", log=False)
    rows = []
    for i, j in independent_pairs(zoo, args.pairs, torch.Generator().manual_seed(args.seed)):
        m = zoo.member_of(i)
        net, task = build_arch(zoo.members[m]["arch"]).eval(), network_task(zoo, i)
        a, b = zoo.state_dict(i), zoo.state_dict(j)
        acc = lambda s, t=task, n=net: accuracy(n, s, t.x_test, t.y_test)
        row = {"pair": [zoo.network_ids[i], zoo.network_ids[j]], "a": acc(a), "b": acc(b)}
        for meth in ["naive"] + methods:  # naive: the plain average (BatchNorm reset alike)
            res = merge([a, b], method=meth, data=(task.x_train[:512], task.y_train[:512]), aligner=aligner,
                        module=net)
            row[meth] = acc(res.state)
        rows.append(row)
        print(row)
    cols = ["a", "b", "naive"] + methods
    summary = {c: {"mean": statistics.fmean(r[c] for r in rows), "std": statistics.pstdev(r[c] for r in rows)}
               for c in cols}
    wins = {m: sum(r[m] >= r["naive"] for r in rows) for m in methods}
    res = {"zoo": args.zoo, "pairs": len(rows), "seed": args.seed, "aligner": args.aligner or "shipped (mixed)",
           "summary": summary, "aligned_at_least_naive": wins, "per_pair": rows,
           "provenance": provenance(sys.argv, aligner=args.aligner or "pretrained:mixed", aligner_model=aligner)}
    md = markdown(res)
    write_report(args.out, "merge", res, md)
    print(md)


def markdown(res: dict) -> str:
    """The report of a run: mean ± std test accuracy per column, and how often aligning beat the plain average."""
    methods = list(res["aligned_at_least_naive"])
    cols, summary, n = ["a", "b", "naive"] + methods, res["summary"], res["pairs"]
    rows = [["mean ± std", *(f"{summary[c]['mean']:.4f} ± {summary[c]['std']:.4f}" for c in cols)],
            ["pairs where aligned ≥ naive", "–", "–", "–",
             *(f"{res['aligned_at_least_naive'][m]}/{n}" for m in methods)]]
    return (f"**{res['zoo']}**: test accuracy of merged pairs ({n} test pairs, seed {res['seed']}; gnn = "
            f"{res['aligner']})\n\n{markdown_table(['', *cols], rows)}\n")


if __name__ == "__main__":
    main()
