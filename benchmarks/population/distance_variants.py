"""Which weight distance after alignment tracks the barrier? Spearman correlations on validation pairs.

Aligns seeded *validation* pairs of a one-architecture MLP zoo with the shipped aligner, then ranks
several weight distances of A and aligned B against the Deep-Align barrier of the same alignment:
the library's overall distance (``gnn_align.population.weight_distance``), its per-tensor mean,
per-weight-matrix mean and max, the mean cosine distance of neurons' incoming weights (bias included:
invariant to rescaling a ReLU neuron), each weight matrix alone, and one distance that is not of
weights: 1 minus the mean cosine of the aligner's own embeddings of matched neurons (its scores over
the head's scale squared). Writes ``distance_variants.json`` and ``.md`` to ``--out``.

    python benchmarks/population/distance_variants.py --out benchmarks/population
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from scipy.stats import spearmanr
from torch.nn.functional import cosine_similarity

from gnn_align.archs import build_arch
from gnn_align.io import DEFAULT_ZOO_ROOT
from gnn_align.permute import apply_permutation, identity_permutation
from gnn_align.population import weight_distance
from gnn_align.pretrained import load_pretrained
from gnn_align.provenance import provenance
from gnn_align.studies.bench import evaluate_alignment
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.tasks import network_task
from gnn_align.zoo import ModelZoo, independent_pairs


def _rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / (x.pow(2).sum() + y.pow(2).sum()).sqrt())


def variants(a: dict, b: dict, spec) -> dict:
    """Distances of ``a`` and ``b`` (already aligned) by every variant."""
    keys = spec.learnable_keys()
    per = {k: _rel(a[k].double(), b[k].double()) for k in keys}
    mats = [k for k in keys if a[k].dim() == 2]
    cos = []
    for k in mats:
        x, y, bias = a[k].double(), b[k].double(), k.removesuffix("weight") + "bias"
        if bias in a:
            x, y = torch.cat([x, a[bias].double()[:, None]], 1), torch.cat([y, b[bias].double()[:, None]], 1)
        cos.append(float((1 - cosine_similarity(x, y, dim=1)).mean()))
    return {"overall (shipped)": weight_distance(a, b, spec)[0], "mean over tensors": statistics.fmean(per.values()),
            "mean over weight matrices": statistics.fmean(per[k] for k in mats),
            "max over weight matrices": max(per[k] for k in mats), "neuron cosine (mean)": statistics.fmean(cos),
            **{f"{k} alone": per[k] for k in mats}}


@torch.no_grad()
def embedding_distance(al, a: dict, b: dict, spec, perm: dict) -> float:
    """1 - the mean cosine of the aligner's embeddings of the neurons ``perm`` matches (``b`` unaligned)."""
    scores, _, groups = al.scores([al.graph(a, spec)], [al.graph(b, spec)])
    cos = torch.cat([s[torch.arange(len(perm[g])), perm[g]] for (_, g), s in zip(groups, scores, strict=True)])
    return float(1 - cos.mean() / al.head.scale ** 2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="digits-mlp")
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--aligner", default="mixed")
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--out", default="benchmarks/population")
    args = p.parse_args()
    torch.set_num_threads(1)
    zoo = ModelZoo(str(Path(args.root) / args.zoo), split="val", log=False)
    al = load_pretrained(args.aligner)
    rows, barriers = [], []
    for i, j in independent_pairs(zoo, args.pairs, torch.Generator().manual_seed(args.seed)):
        m = zoo.member_of(i)
        spec, module, task = zoo.spec(m), build_arch(zoo.members[m]["arch"]).eval(), network_task(zoo, i)
        a, b = zoo.state_dict(i), zoo.state_dict(j)
        perm = al.align(a, b, spec)
        aligned = apply_permutation(b, perm, spec)
        barriers.append(evaluate_alignment(module, a, aligned, identity_permutation(spec), spec, task)[0][
            "barrier_deepalign"])
        rows.append(variants(a, aligned, spec) | {"aligner embedding (1 - cos of matched neurons)":
                                                  embedding_distance(al, a, b, spec, perm)})
    rho = {k: float(spearmanr([r[k] for r in rows], barriers)[0]) for k in rows[0]}
    md = (f"# Weight distances after alignment against the barrier\n\n`{provenance()['command']}`\n\n"
          f"{len(rows)} validation pairs of `{args.zoo}`, aligned by `{args.aligner}`; Spearman correlation of each "
          "distance with the Deep-Align barrier of the same alignment:\n\n"
          + markdown_table(["distance", "Spearman"], [[k, f"{v:.3f}"] for k, v in rho.items()]) + "\n")
    write_report(args.out, "distance_variants", {"provenance": provenance(), "pairs": len(rows), "spearman": rho}, md)
    print(md)


if __name__ == "__main__":
    main()
