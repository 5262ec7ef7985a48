"""Weight matching's attention step scored by products: does it bring weight matching on transformers down?

Within a head, query and key dimension ``r`` act on the function only through the outer product
``q_r k_r^T`` (value and output projection likewise through ``v_r o_r^T``). Weight matching scores matching
dimension ``r`` of A to ``s`` of B by the sum ``<q_A,r, q_B,s> + <k_A,r, k_B,s>``; the inner product of the
outer products is the product ``<q_A,r, q_B,s> <k_A,r, k_B,s>``. This script gives the head step of weight
matching (:func:`gnn_align.baselines.weight_matching._head_step`; every other group's step unchanged) a
``combine`` that scores each within-head pair by the product of the two sides' inner products, each clipped at 0
(a pair that is anti-aligned on one side would cancel when interpolated; also unclipped), and the heads by
the sum of their best within-head products. On seeded *validation* pairs (never the reported test pairs) it
reports the mean Deep-Align barrier against naive and plain weight matching. Writes ``OUT/wm_product.{json,md}``.

    python benchmarks/transformer/wm_product.py --zoo transformers --pairs 30 --out benchmarks/transformer/transformers
"""

from __future__ import annotations

import argparse
import functools
import importlib
import statistics
from pathlib import Path

import torch

from gnn_align.baselines import weight_matching
from gnn_align.io import DEFAULT_ZOO_ROOT
from gnn_align.permute import identity_permutation
from gnn_align.provenance import provenance
from gnn_align.studies.bench import evaluate_alignment, zoo_pairs
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.zoo import ModelZoo

wm_module = importlib.import_module("gnn_align.baselines.weight_matching")  # the module, not the function
_PLAIN = wm_module._head_step


def products(parts: dict, clip: bool = True) -> torch.Tensor:
    """A within-head family's scores: the product of its two modules' inner products (each clipped at 0
    with ``clip``); a family of another number of modules keeps weight matching's sum."""
    if len(parts) != 2:
        return sum(parts.values())
    x, y = parts.values()
    return x.clamp_min(0) * y.clamp_min(0) if clip else x * y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="transformers")
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--pairs", type=int, default=30)
    p.add_argument("--out", default="benchmarks/transformer/transformers")
    args = p.parse_args()
    torch.set_num_threads(1)
    zoo = ModelZoo(str(Path(args.root) / args.zoo), split="val", log=False)
    rows = []
    for n, p in enumerate(zoo_pairs(zoo, args.pairs, progress=True)):
        m, task, spec, a, b, module = p.member, p.task, p.spec, p.a, p.b, p.module
        perms = {"naive": identity_permutation(spec)}
        for name, step in (("wm", _PLAIN), ("wm, products in attention", functools.partial(_PLAIN, combine=products)),
                           ("wm, products in attention, unclipped",
                            functools.partial(_PLAIN, combine=functools.partial(products, clip=False)))):
            wm_module._head_step = step
            perms[name] = weight_matching(a, b, spec, max_sweeps=100, generator=torch.Generator().manual_seed(n)).perm
        wm_module._head_step = _PLAIN
        rows.append({"member": zoo.members[m]["name"]} | {
            k: evaluate_alignment(module, a, b, perm, spec, task)[0]["barrier_deepalign"] for k, perm in perms.items()})
    names = [k for k in rows[0] if k != "member"]
    mean = {k: statistics.fmean(r[k] for r in rows) for k in names}
    res = {"zoo": args.zoo, "split": "val", "pairs": len(rows), "mean": mean, "per_pair": rows,
           "provenance": provenance()}
    md = (f"**{args.zoo}**, {len(rows)} validation pairs: mean Deep-Align barrier\n\n`{provenance()['command']}`\n\n"
          + markdown_table(["alignment", "barrier", "× naive"],
                           [[k, f"{v:.4f}", f"{v / mean['naive']:.3f}"] for k, v in mean.items()]))
    write_report(args.out, "wm_product", res, md + "\n", echo=True)


if __name__ == "__main__":
    main()
