"""Pseudo-labels for training the aligner: what a data-based optimiser finds on *training* pairs.

Draws seeded independent pairs of a zoo's training split (never validation or test networks), aligns each
with a method that uses the networks' training data (default ``gnn+sinkhorn``), and writes the permutations
as JSON: ``{"pairs": [[i, j, {group: perm}], ...], "provenance": ...}``, with ``i``, ``j`` positions in the
training split. ``train.py --pseudo-labels FILE --pseudo-per-step K`` then adds a cross-entropy loss towards
them (docs/aligner-v2.md, section 13). ``--shard k/n`` computes every n-th pair from the k-th; ``--merge``
joins the shard files.

    python benchmarks/aligner-v2/explore/pseudo_labels.py --zoo digits-mlp --pairs 400 --shard 0/2 --out /tmp/pl0.json
    python benchmarks/aligner-v2/explore/pseudo_labels.py --merge /tmp/pl0.json /tmp/pl1.json --out runs/pl.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gnn_align import methods
from gnn_align.aligner import load_aligner
from gnn_align.archs import build_arch
from gnn_align.io import DEFAULT_ZOO_ROOT, write_json
from gnn_align.provenance import provenance
from gnn_align.studies.bench import pair_generator
from gnn_align.tasks import network_task
from gnn_align.zoo import ModelZoo
from gnn_align.zoo.pairs import independent_pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="digits-mlp")
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--aligner", default="mixed")
    p.add_argument("--method", default="gnn+sinkhorn")
    p.add_argument("--pairs", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard", default="0/1")
    p.add_argument("--merge", nargs="*", default=None, help="shard files to join into --out")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    if args.merge:
        parts = [json.loads(Path(f).read_text()) for f in args.merge]
        pairs = sorted((q for part in parts for q in part["pairs"]), key=lambda q: q[3])
        res = parts[0] | {"pairs": pairs, "shards": [part["provenance"] for part in parts]}
        write_json(args.out, res)
        print(f"wrote {args.out}: {len(pairs)} pairs")
        return
    torch.set_num_threads(1)
    k, n = map(int, args.shard.split("/"))
    zoo = ModelZoo(str(Path(args.root) / args.zoo), split="train", log=False)
    aligner = load_aligner(args.aligner)
    table = methods.method_table(aligner)
    drawn = independent_pairs(zoo, args.pairs, torch.Generator().manual_seed(args.seed))
    out = []
    for t, (i, j) in enumerate(tqdm(drawn, desc="pairs")):
        if t % n != k:
            continue
        m = zoo.member_of(i)
        task, spec = network_task(zoo, i), zoo.spec(m)
        ctx = methods.PairContext(build_arch(zoo.members[m]["arch"]).eval(), spec, zoo.state_dict(i),
                                  zoo.state_dict(j), task.x_train, task.y_train, task.loss,
                                  pair_generator(args.seed, i, j))
        perm = methods.lookup(table, args.method)(ctx)
        out.append([int(i), int(j), {g: v.tolist() for g, v in perm.items()}, t])
    res = {"zoo": args.zoo, "split": "train", "method": args.method, "aligner": args.aligner, "pairs": out,
           "provenance": provenance(aligner=args.aligner, aligner_model=aligner)}
    write_json(args.out, res)
    print(f"wrote {args.out}: {len(out)} pairs")


if __name__ == "__main__":
    main()
