"""Which of weight matching's groups cost transformers their barrier? WM with one kind of group taken from AM.

On seeded *validation* pairs of a transformer zoo (never the reported test pairs), aligns B to A by weight
matching and by activation matching, then swaps one kind of group between them: the residual stream
(``embed``), attention (the heads and every within-head ``qk`` and ``v`` group together) or the MLPs'
hidden groups (``fc1``). Any combination of group permutations is an element of the group, so each mix is a
valid alignment. Reports the mean Deep-Align barrier of each against the naive one. Writes
``OUT/wm_groups.{json,md}`` with provenance.

    python benchmarks/transformer/wm_groups.py --zoo transformers --pairs 30 --out benchmarks/transformer/transformers
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from gnn_align import methods
from gnn_align.io import DEFAULT_ZOO_ROOT
from gnn_align.permute import identity_permutation
from gnn_align.provenance import provenance
from gnn_align.studies.bench import evaluate_alignment, pair_generator, zoo_pairs
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.zoo import ModelZoo

#: the kinds of group, by the last part of a group's name
KINDS = {"residual": ("embed",), "attention": ("heads", "qk", "v"), "mlp": ("fc1",)}


def kind(group: str) -> str:
    return next(k for k, ends in KINDS.items() if group.rsplit(".", 1)[-1] in ends)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="transformers")
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--pairs", type=int, default=30)
    p.add_argument("--out", default="benchmarks/transformer/transformers")
    args = p.parse_args()
    torch.set_num_threads(1)
    zoo = ModelZoo(str(Path(args.root) / args.zoo), split="val", log=False)
    table = methods.method_table(None)
    rows = []
    for p in zoo_pairs(zoo, args.pairs, progress=True):
        i, j, m, task, spec, a, b, module = p.i, p.j, p.member, p.task, p.spec, p.a, p.b, p.module
        ctx = methods.PairContext(module, spec, a, b, task.x_train, task.y_train, task.loss, pair_generator(0, i, j))
        found = {name: methods.lookup(table, name)(ctx) for name in ("wm", "am")}
        perms = {"naive": identity_permutation(spec), "wm": found["wm"], "am": found["am"]}
        for k in KINDS:
            perms[f"wm, {k} from am"] = {g: found["am" if kind(g) == k else "wm"][g] for g in spec.group_sizes}
        rows.append({"pair": [int(i), int(j)], "member": zoo.members[m]["name"]}
                    | {name: evaluate_alignment(module, a, b, perm, spec, task)[0]["barrier_deepalign"]
                       for name, perm in perms.items()})
    names = [k for k in rows[0] if k not in ("pair", "member")]
    mean = {k: statistics.fmean(r[k] for r in rows) for k in names}
    res = {"zoo": args.zoo, "split": "val", "pairs": len(rows), "mean": mean, "per_pair": rows,
           "provenance": provenance()}
    md = (f"**{args.zoo}**, {len(rows)} validation pairs: mean Deep-Align barrier of weight matching with one kind "
          f"of group taken from activation matching\n\n`{provenance()['command']}`\n\n"
          + markdown_table(["alignment", "barrier", "× naive"],
                           [[k, f"{v:.4f}", f"{v / mean['naive']:.3f}"] for k, v in mean.items()]))
    write_report(args.out, "wm_groups", res, md + "\n", echo=True)


if __name__ == "__main__":
    main()
