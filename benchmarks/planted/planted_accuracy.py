"""Planted matching accuracy of a trained aligner on a zoo's test split.

For every test network A (up to --pairs), B = pi . augment(A) with Deep-Align's augmentations and a
random pi; the aligner must return pi's inverse. Writes planted.json and planted.md to --out.

    python benchmarks/planted/planted_accuracy.py --zoo digits-mlp --aligner runs/digits-mlp --pairs 200
    python benchmarks/planted/planted_accuracy.py --zoo mixed --member digits-resnet-8-16 --aligner pretrained --wm
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from gnn_align.aligner import load_aligner
from gnn_align.baselines import weight_matching
from gnn_align.graph import to_graph
from gnn_align.io import DEFAULT_RESULTS_ROOT, DEFAULT_ZOO_ROOT
from gnn_align.metrics import exact_recovery, matching_accuracy
from gnn_align.pretrained import DEFAULT
from gnn_align.provenance import provenance
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.zoo import ModelZoo, planted_pair


def main(argv: list | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", required=True)
    p.add_argument("--aligner", required=True, help="a train.py run folder, or pretrained (the shipped aligner)")
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--batch", type=int, default=25, help="pairs per forward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--split", default="test", help="test (default) or heldout")
    p.add_argument("--member", default=None, help="only this member (architecture) of the zoo")
    p.add_argument("--wm", action="store_true", help="also score weight matching on the same planted pairs")
    args = p.parse_args(argv)
    al = load_aligner(DEFAULT if args.aligner == "pretrained" else args.aligner)
    zoo = ModelZoo(str(Path(args.root) / args.zoo), split=args.split, log=False)
    idx = zoo.indices_of(zoo.member_index(args.member)) if args.member else list(range(len(zoo)))
    gen, d = torch.Generator().manual_seed(args.seed), al.config.edge_dim
    pairs = [planted_pair(zoo, idx[i % len(idx)], gen) for i in range(args.pairs)]
    acc, exact = [], []
    for s in range(0, len(pairs), args.batch):
        chunk = pairs[s:s + args.batch]
        preds = al.predict([to_graph(q.a, zoo.spec(q.member), edge_dim=d) for q in chunk],
                           [to_graph(q.b, zoo.spec(q.member), edge_dim=d) for q in chunk],
                           [zoo.spec(q.member) for q in chunk])
        for pr, q in zip(preds, chunk, strict=True):
            acc.append(matching_accuracy(pr, q.target))
            exact.append(exact_recovery(pr, q.target))
    res = {"zoo": args.zoo, "member": args.member, "split": args.split, "aligner": args.aligner,
           "pairs": len(pairs), "seed": args.seed,
           "neuron_accuracy": sum(acc) / len(acc), "networks_exact": sum(exact) / len(exact),
           "provenance": provenance(None if argv is None else [__file__, *argv], aligner=args.aligner,
                                    aligner_model=al)}
    if args.wm:
        wm = [weight_matching(q.a, q.b, zoo.spec(q.member), generator=torch.Generator().manual_seed(k)).perm
              for k, q in enumerate(pairs)]
        truth = [q.target for q in pairs]
        res["wm"] = {"neuron_accuracy": sum(map(matching_accuracy, wm, truth)) / len(pairs),
                     "networks_exact": sum(map(exact_recovery, wm, truth)) / len(pairs)}
    write_report(args.out or Path(DEFAULT_RESULTS_ROOT) / f"planted-{args.zoo}", "planted", res, markdown(res))
    print(json.dumps(res))
    return res


def markdown(res: dict) -> str:
    """The report of a run: neuron accuracy and exact recoveries of the aligner (and of WM with --wm)."""
    rows = [["gnn", f"{res['neuron_accuracy']:.4f}", f"{res['networks_exact']:.4f}"]]
    if "wm" in res:
        rows.append(["wm", f"{res['wm']['neuron_accuracy']:.4f}", f"{res['wm']['networks_exact']:.4f}"])
    table = markdown_table(["method", "neuron accuracy", "networks recovered exactly"], rows)
    return (f"**{res['zoo']}**{' / ' + res['member'] if res['member'] else ''}: {res['pairs']} planted {res['split']} "
            f"pairs (seed {res['seed']})\n\n{table}\n")


if __name__ == "__main__":
    main()
