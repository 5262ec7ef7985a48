"""Planted recovery on a transformer zoo: each test network, with Gaussian noise of 1% of each tensor's
std, permuted by a random element of its symmetry (heads and within-head groups included); weight
matching, activation matching and (``--aligner``) a learned aligner must recover the permutation.
Prints the mean fraction of neurons matched and the number of networks recovered exactly; with
``--out``, writes them to ``OUT/planted.json`` with provenance.

    python benchmarks/transformer/planted.py --zoo digits-transformer --networks 200 --aligner runs/tf
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from gnn_align import apply_permutation, random_permutation
from gnn_align.aligner import load_aligner
from gnn_align.archs import build_arch
from gnn_align.baselines import activation_matching, weight_matching
from gnn_align.io import DEFAULT_ZOO_ROOT, write_json
from gnn_align.metrics import exact_recovery, input_batches, matching_accuracy
from gnn_align.permute import invert_permutation
from gnn_align.provenance import provenance
from gnn_align.tasks import network_task
from gnn_align.zoo import ModelZoo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="digits-transformer")
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--networks", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--aligner", default=None, help="also score this aligner (run folder, weights file or shipped name)")
    p.add_argument("--out", default=None, help="folder for planted.json")
    args = p.parse_args()
    al = load_aligner(args.aligner) if args.aligner else None
    zoo = ModelZoo(str(Path(args.root) / args.zoo), split="test", log=False)
    gen = torch.Generator().manual_seed(args.seed)
    n = min(args.networks, len(zoo))
    names = ["wm", "am"] + (["gnn"] if al is not None else [])
    acc, exact = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0)
    for i in range(n):
        m = zoo.member_of(i)
        spec, a = zoo.spec(m), zoo.state_dict(i)
        perm = random_permutation(spec, gen)
        noisy = {k: v + 0.01 * v.std() * torch.randn(v.shape, generator=gen) if v.is_floating_point() and v.numel() > 1
                 else v for k, v in a.items()}
        b, target = apply_permutation(noisy, perm, spec), invert_permutation(perm, spec)
        net, task = build_arch(zoo.members[m]["arch"]).eval(), network_task(zoo, i)
        found = {"wm": weight_matching(a, b, spec, generator=torch.Generator().manual_seed(i)).perm,
                 "am": activation_matching(net, a, b, spec, input_batches(task.x_train)).perm}
        if al is not None:
            found["gnn"] = al.align(a, b, spec)
        for k, got in found.items():
            acc[k] += matching_accuracy(got, target) / n
            exact[k] += exact_recovery(got, target)
    for k, value in acc.items():
        print(f"{k}: {value:.4f} of neurons matched, {exact[k]}/{n} networks exact")
    if args.out:
        write_json(Path(args.out) / "planted.json", {
            "zoo": args.zoo, "networks": n, "seed": args.seed, "neuron_accuracy": acc, "networks_exact": exact,
            "provenance": provenance([__file__, *sys.argv[1:]], aligner=args.aligner, aligner_model=al)})


if __name__ == "__main__":
    main()
