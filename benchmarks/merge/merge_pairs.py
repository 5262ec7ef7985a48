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
from gnn_align.metrics import accuracy
from gnn_align.pretrained import DEFAULT
from gnn_align.provenance import provenance
from gnn_align.tasks import network_task
from gnn_align.zoo import ModelZoo, independent_pairs
from gnn_align.zoo.storage import atomic_write, write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="digits-mlp")
    p.add_argument("--root", default="data/zoos")
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--methods", default="gnn,wm,am")
    p.add_argument("--aligner", default=None, help="a train.py run folder (default: the shipped aligner)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/merge")
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
    md = (f"**{args.zoo}**: test accuracy of merged pairs ({len(rows)} test pairs, seed {args.seed}; gnn = "
          f"{res['aligner']})\n\n| | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n| mean ± std | "
          + " | ".join(f"{summary[c]['mean']:.4f} ± {summary[c]['std']:.4f}" for c in cols) + " |\n"
          + "| pairs where aligned ≥ naive | – | – | – | " + " | ".join(f"{wins[m]}/{len(rows)}" for m in methods)
          + " |\n")
    out = Path(args.out)
    write_json(out / "merge.json", res)
    atomic_write(out / "merge.md", lambda tmp: Path(tmp).write_text(md))
    print(md)


if __name__ == "__main__":
    main()
