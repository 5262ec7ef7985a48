"""Why weight matching stays high on transformers: its own objective against the learned aligner's.

On seeded validation pairs of ``digits-transformer`` (never the reported test pairs), compares weight
matching's objective ``sum_k <A_k, P B_k>`` at weight matching's permutation, at the ``transformer``
aligner's (whose barrier is far lower) and at the best of 5 seeded restarts. Prints the counts and means.

    python benchmarks/transformer/wm_objective.py --pairs 30
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gnn_align.aligner import load_aligner
from gnn_align.baselines import weight_matching
from gnn_align.baselines.weight_matching import matching_objective
from gnn_align.io import DEFAULT_ZOO_ROOT
from gnn_align.zoo import ModelZoo
from gnn_align.zoo.pairs import independent_pairs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="digits-transformer")
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--aligner", default="transformer")
    p.add_argument("--pairs", type=int, default=30)
    p.add_argument("--restarts", type=int, default=5)
    args = p.parse_args()
    zoo = ModelZoo(str(Path(args.root) / args.zoo), split="val", log=False)
    al = load_aligner(args.aligner)
    rows = []
    for k, (i, j) in enumerate(independent_pairs(zoo, args.pairs, torch.Generator().manual_seed(0))):
        a, b, spec = zoo.state_dict(i), zoo.state_dict(j), zoo.spec(zoo.member_of(i))
        wm = weight_matching(a, b, spec, generator=torch.Generator().manual_seed(k)).perm
        best = max(matching_objective(a, b, weight_matching(a, b, spec, generator=torch.Generator().manual_seed(
            100 + r)).perm, spec) for r in range(args.restarts))
        rows.append((matching_objective(a, b, wm, spec), matching_objective(a, b, al.align(a, b, spec), spec), best))
    n = len(rows)
    print(f"{n} validation pairs: the aligner's permutation scores higher on weight matching's objective than "
          f"weight matching's own on {sum(g > w for w, g, _ in rows)}/{n}")
    wm, gnn, best = (sum(r[c] for r in rows) / n for c in range(3))
    print(f"mean objective: wm {wm:.3f}, aligner {gnn:.3f}, best of {args.restarts} wm restarts {best:.3f}")


if __name__ == "__main__":
    main()
