"""Weight matching on transformers, by training recipe and by width.

Part ``zoo``: the barriers of a benchmark result (``results.json`` of ``gnn-align bench`` on
``digits-transformer``) split by the member (training recipe) of each pair, each method also as a
ratio to the naive average of the same pairs. Part ``fresh``: small sets of freshly trained
transformers (no zoo, seeds 1000..; the digits as 8 row tokens), d_model 32 and 64, trained by AdamW
and by SGD; weight matching's barrier against the naive one on disjoint pairs. Writes
``recipes.json`` and ``recipes.md`` to ``--out``.

    python benchmarks/transformer/recipes.py --out benchmarks/transformer
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from gnn_align import spec_from_module
from gnn_align.archs import build_arch
from gnn_align.baselines import weight_matching
from gnn_align.io import DEFAULT_ZOO_ROOT
from gnn_align.permute import identity_permutation
from gnn_align.provenance import provenance
from gnn_align.studies.bench import evaluate_alignment
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.tasks import load_task
from gnn_align.zoo.batched import train_networks

ADAMW = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-2, "epochs": 20, "batch_size": 64}
SGD = {"optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4, "epochs": 20, "batch_size": 64}
#: (name, d_model, heads, MLP width, training recipe): the zoo's 1-block recipes at two widths
FRESH = [("d32 AdamW", 32, 2, 64, ADAMW), ("d32 SGD", 32, 2, 64, SGD),
         ("d64 AdamW", 64, 2, 256, ADAMW), ("d64 SGD", 64, 2, 256, SGD)]


def by_member(results: Path, zoo_dir: Path) -> dict:
    """``{member: {method: mean barrier}}`` (and ``pairs``) of a benchmark result."""
    res = json.loads(results.read_text())
    man = json.loads((zoo_dir / "manifest.json").read_text())
    member = {n["id"]: man["members"][n["member"]]["name"] for n in man["networks"]}
    rows: dict = {}
    for method, s in res["methods"].items():
        for row in s["per_pair"]:
            rows.setdefault(member[row["pair"][0]], {}).setdefault(method, []).append(row["barrier_deepalign"])
    return {m: {"pairs": len(next(iter(d.values())))} | {k: statistics.fmean(v) for k, v in d.items()}
            for m, d in sorted(rows.items())}


def fresh(name: str, d_model: int, heads: int, mlp: int, train: dict, networks: int) -> dict:
    """Naive and weight matching barriers of ``networks // 2`` disjoint pairs of fresh transformers."""
    arch = {"family": "transformer", "in_features": 8, "tokens": 8, "d_model": d_model, "heads": heads,
            "blocks": 1, "mlp": mlp, "num_classes": 10, "norm_first": True}
    task = load_task("digits-rows")
    state, _ = train_networks(arch, task.x_train, task.y_train, list(range(1000, 1000 + networks)), progress=False,
                              desc=name, **train)
    module = build_arch(arch).eval()
    spec = spec_from_module(module, task.x_train[:2])
    nets = [{k: v[m] for k, v in state.items()} for m in range(networks)]
    naive, wm = [], []
    for p in range(0, networks - 1, 2):
        a, b = nets[p], nets[p + 1]
        naive.append(evaluate_alignment(module, a, b, identity_permutation(spec), spec, task)[0]["barrier_deepalign"])
        perm = weight_matching(a, b, spec, generator=torch.Generator().manual_seed(p)).perm
        wm.append(evaluate_alignment(module, a, b, perm, spec, task)[0]["barrier_deepalign"])
    return {"arch": arch, "train": train, "pairs": len(wm), "naive": statistics.fmean(naive),
            "wm": statistics.fmean(wm)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", default="benchmarks/transformer/results.json")
    p.add_argument("--zoo", default="digits-transformer")
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--networks", type=int, default=16, help="fresh networks per setting (pairs: half of it; 0: none)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/transformer")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    zoo = by_member(Path(args.results), Path(args.root) / args.zoo)
    new = {name: fresh(name, d, h, m, t, args.networks) for name, d, h, m, t in FRESH} if args.networks else {}
    methods = [k for k in next(iter(zoo.values())) if k != "pairs"]
    ratio = lambda v, n: f"{v:.3f} ({v / n:.2f}×)"
    zoo_rows = [[m, str(d["pairs"])] + [ratio(d[k], d["naive"]) for k in methods] for m, d in zoo.items()]
    new_rows = [[n, str(r["pairs"]), f"{r['naive']:.3f}", ratio(r["wm"], r["naive"])] for n, r in new.items()]
    md = [f"# Weight matching on transformers by recipe and width\n\n`{provenance()['command']}`\n",
          (f"Test pairs of `{args.zoo}` ({args.results}) by member; each barrier (Deep-Align) and its ratio "
           "to the naive barrier of the same pairs:\n"),
          markdown_table(["member", "pairs"] + methods, zoo_rows)]
    if new:
        md += [(f"\nFreshly trained transformers (1 block, pre-LN; seeds 1000..; {args.networks // 2} disjoint "
                "pairs each):\n"),
               markdown_table(["setting", "pairs", "naive", "wm"], new_rows)]
    write_report(args.out, "recipes", {"provenance": provenance(), "zoo": zoo, "fresh": new}, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
