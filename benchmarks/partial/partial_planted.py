"""Planted partial matching on a zoo's trained MLPs: A is a random sub-network of B (a random subset of
each hidden group's neurons, in random order); weight matching (rectangular) and an aligner must
recover the subset and the order. Writes partial.json and partial.md to --out.

    python benchmarks/partial/partial_planted.py --zoo digits-mlp --aligner pretrained --width 48 --pairs 100 \
        --out benchmarks/partial/w48
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from gnn_align import spec_from_module
from gnn_align.aligner import load_aligner
from gnn_align.archs import build_arch
from gnn_align.baselines import weight_matching
from gnn_align.io import DEFAULT_RESULTS_ROOT, DEFAULT_ZOO_ROOT
from gnn_align.partial import extract_subnetwork
from gnn_align.pretrained import DEFAULT
from gnn_align.provenance import provenance
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.zoo import ModelZoo


def main(argv: list | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", required=True, help="a zoo of MLPs (member 0 is used)")
    p.add_argument("--aligner", default=None,
                   help="a train.py run folder, or pretrained (the shipped aligner); optional")
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--width", type=int, required=True, help="A's width in every hidden group")
    p.add_argument("--pairs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    zoo = ModelZoo(str(Path(args.root) / args.zoo), split="test", log=False)
    arch = zoo.members[0]["arch"]
    if arch.get("family") != "mlp":
        raise SystemExit(f"{args.zoo}: member 0 is a {arch.get('family')}; this benchmark narrows MLPs")
    shape = (1, arch["in_features"])
    spec_b = spec_from_module(build_arch(arch), torch.zeros(shape))
    narrow = dict(arch, hidden=[args.width] * len(arch["hidden"]))
    spec_a = spec_from_module(build_arch(narrow), torch.zeros(shape))
    al = load_aligner(DEFAULT if args.aligner == "pretrained" else args.aligner) if args.aligner else None
    gen = torch.Generator().manual_seed(args.seed)
    hits = {"wm": [], "gnn": []} if al else {"wm": []}
    for k in range(args.pairs):
        b = zoo.state_dict(zoo.indices_of(0)[k % len(zoo.indices_of(0))])
        planted = {g: torch.randperm(n, generator=gen)[:args.width] for g, n in spec_b.group_sizes.items()}
        a = extract_subnetwork(b, planted, spec_b, spec_a)
        preds = {"wm": weight_matching(a, b, spec_a, spec_b=spec_b, generator=torch.Generator().manual_seed(k)).perm}
        if al:
            preds["gnn"] = al.align(a, b, spec_a, spec_b=spec_b)
        for m, pr in preds.items():
            hits[m].append(all(torch.equal(pr[g], planted[g]) for g in planted))
    res = {"zoo": args.zoo, "width_b": arch["hidden"], "width_a": args.width, "pairs": args.pairs,
           "seed": args.seed, "aligner": args.aligner,
           "exact": {m: sum(h) / len(h) for m, h in hits.items()},
           "provenance": provenance(None if argv is None else [__file__, *argv], aligner=args.aligner,
                                    aligner_model=al)}
    write_report(args.out or Path(DEFAULT_RESULTS_ROOT) / f"partial-{args.zoo}", "partial", res, markdown(res))
    print(json.dumps(res))
    return res


def markdown(res: dict) -> str:
    """The report of a run: the fraction of sub-networks each method recovered exactly."""
    table = markdown_table(["method", "sub-networks recovered exactly"],
                           [[m, f"{v:.3f}"] for m, v in res["exact"].items()])
    return (f"**{res['zoo']}**: A = random {res['width_a']}-wide sub-network of B {res['width_b']} "
            f"({res['pairs']} test networks, seed {res['seed']})\n\n{table}\n")


if __name__ == "__main__":
    main()
