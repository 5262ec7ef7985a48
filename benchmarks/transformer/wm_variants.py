"""Weight matching on transformers with the weights rescaled per tensor: does another weighting of its
objective bring it to 0.5 x naive?

On seeded *validation* pairs of ``digits-transformer`` (never the reported test pairs), runs weight
matching on the weights as they are and on rescaled copies (the permutation found is applied to the
original B), and reports the mean Deep-Align barrier against the naive one. Variants: ``cos`` (each
tensor divided by its norm: the objective becomes a sum of cosines), ``rms`` (divided by its RMS:
large tensors weigh more), ``sqrt`` (by its norm, times ``numel ** 0.25``), ``no-norm`` (LayerNorm
parameters left out). Writes ``OUT/wm_variants.{json,md}`` with provenance.

    python benchmarks/transformer/wm_variants.py --pairs 30 --out benchmarks/transformer
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gnn_align.baselines import weight_matching
from gnn_align.io import DEFAULT_ZOO_ROOT
from gnn_align.permute import identity_permutation
from gnn_align.provenance import provenance
from gnn_align.studies.bench import evaluate_alignment, zoo_pairs
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.zoo import ModelZoo


def _scaled(state: dict, keys: set, by) -> dict:
    return {k: (v / by(v).clamp_min(1e-12) if k in keys and v.is_floating_point() else v) for k, v in state.items()}


VARIANTS = {
    "wm": lambda s, keys: s,
    "cos": lambda s, keys: _scaled(s, keys, lambda v: v.norm()),
    "rms": lambda s, keys: _scaled(s, keys, lambda v: v.pow(2).mean().sqrt()),
    "sqrt": lambda s, keys: _scaled(s, keys, lambda v: v.norm() / v.numel() ** 0.25),
    "no-norm": lambda s, keys: {k: (v * 0 if ("ln" in k or "norm" in k) else v) for k, v in s.items()},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="digits-transformer")
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--pairs", type=int, default=30)
    p.add_argument("--out", default="benchmarks/transformer")
    args = p.parse_args()
    torch.set_num_threads(1)
    zoo = ModelZoo(str(Path(args.root) / args.zoo), split="val", log=False)
    rows = []
    for n, p in enumerate(zoo_pairs(zoo, args.pairs, progress=True)):
        task, spec, a, b, module = p.task, p.spec, p.a, p.b, p.module
        keys = set(spec.learnable_keys())
        perms = {"naive": identity_permutation(spec)} | {
            name: weight_matching(f(a, keys), f(b, keys), spec, generator=torch.Generator().manual_seed(n)).perm
            for name, f in VARIANTS.items()}
        rows.append({k: evaluate_alignment(module, a, b, perm, spec, task)[0]["barrier_deepalign"]
                     for k, perm in perms.items()})
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    res = {"zoo": args.zoo, "split": "val", "pairs": len(rows), "mean": mean, "per_pair": rows,
           "provenance": provenance()}
    table = [[k, f"{v:.4f}", f"{v / mean['naive']:.3f}"] for k, v in mean.items()]
    md = (f"**{args.zoo}**, {len(rows)} validation pairs: mean Deep-Align barrier of weight matching on "
          "rescaled weights\n\n" + markdown_table(["weights matched", "barrier", "× naive"], table))
    write_report(args.out, "wm_variants", res, md + "\n", echo=True)


if __name__ == "__main__":
    main()
