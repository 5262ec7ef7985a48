"""Which weight distance after alignment tracks the barrier? Spearman correlations on validation pairs.

Aligns seeded *validation* pairs of a one-architecture MLP zoo with the shipped aligner, then ranks
several weight distances of A and aligned B against the Deep-Align barrier of the same alignment:
the library's overall distance (``gnn_align.population.weight_distance``), its per-tensor mean,
per-weight-matrix mean and max, the mean cosine distance of neurons' incoming weights (bias included:
invariant to rescaling a ReLU neuron), each weight matrix alone, and one distance that is not of
weights: 1 minus the mean cosine of the aligner's own embeddings of matched neurons (its scores over
the head's scale squared). With ``--functional``, also distances of outputs on 1024 unlabelled training
inputs (:func:`functional_variants`): the shipped midpoint disagreement and label-free barriers, where the
labels are the ensemble's predictions. Writes ``distance_variants.json`` and ``.md`` to ``--out``.

    python benchmarks/population/distance_variants.py --out benchmarks/population
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch.func import functional_call
from torch.nn.functional import cosine_similarity

from gnn_align.io import DEFAULT_ZOO_ROOT
from gnn_align.metrics import _Line, barrier, interpolation_curve, midpoint_disagreement
from gnn_align.permute import apply_permutation, identity_permutation
from gnn_align.population import weight_distance
from gnn_align.pretrained import load_pretrained
from gnn_align.provenance import provenance
from gnn_align.studies.bench import evaluate_alignment, zoo_pairs
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.zoo import ModelZoo


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
def functional_variants(module, a: dict, b: dict, x: torch.Tensor, num_lambdas: int = 11) -> dict:
    """Output distances of ``a`` and ``b`` (already aligned) on unlabelled inputs ``x`` (classifiers).

    The label-free barriers are Deep-Align's barrier of the curve of cross-entropies against the ensemble's
    softmax ``p = (p_A + p_B) / 2`` (soft) or its argmax (hard), over ``num_lambdas`` points or at the
    midpoint alone (``CE(mid, p) - (CE(A, p) + CE(B, p)) / 2``, clipped at 0).
    """
    line = _Line(module, a, b, None)
    lams = torch.linspace(0, 1, num_lambdas, dtype=torch.float64).tolist()
    logp = [functional_call(line.net, line(lam), (x,)).double().log_softmax(-1) for lam in lams]
    ens = (logp[0].exp() + logp[-1].exp()) / 2
    hard = ens.argmax(-1)
    soft = [float(-(ens * lp).sum(-1).mean()) for lp in logp]
    hard_ce = [float(F.nll_loss(lp, hard)) for lp in logp]
    mid = num_lambdas // 2
    return {"midpoint disagreement (shipped)": midpoint_disagreement(module, a, b, x),
            "label-free barrier, soft": barrier(soft), "label-free barrier, hard": barrier(hard_ce),
            "label-free barrier at the midpoint, soft": max(0.0, soft[mid] - (soft[0] + soft[-1]) / 2),
            "label-free barrier at the midpoint, hard": max(0.0, hard_ce[mid] - (hard_ce[0] + hard_ce[-1]) / 2)}


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
    p.add_argument("--functional", action="store_true", help="also output distances on unlabelled inputs")
    p.add_argument("--stem", default="distance_variants")
    p.add_argument("--out", default="benchmarks/population")
    args = p.parse_args()
    torch.set_num_threads(1)
    zoo = ModelZoo(str(Path(args.root) / args.zoo), split="val", log=False)
    al = load_pretrained(args.aligner)
    rows, barriers, halves = [], [], []
    for p in zoo_pairs(zoo, args.pairs, args.seed, progress=True):
        spec, module, task, a, b = p.spec, p.module, p.task, p.a, p.b
        perm = al.align(a, b, spec)
        aligned = apply_permutation(b, perm, spec)
        barriers.append(evaluate_alignment(module, a, aligned, identity_permutation(spec), spec, task)[0][
            "barrier_deepalign"])
        rows.append(variants(a, aligned, spec) | {"aligner embedding (1 - cos of matched neurons)":
                                                  embedding_distance(al, a, b, spec, perm)})
        if args.functional:
            rows[-1] |= functional_variants(module, a, aligned, task.x_train[:1024])
            halves.append([barrier(interpolation_curve(module, a, aligned, task.x_test[h::2], task.y_test[h::2],
                                                       task.loss, 11)["loss"]) for h in (0, 1)])
    rho = {k: float(spearmanr([r[k] for r in rows], barriers)[0]) for k in rows[0]}
    md = (f"# Weight distances after alignment against the barrier\n\n`{provenance()['command']}`\n\n"
          f"{len(rows)} validation pairs of `{args.zoo}`, aligned by `{args.aligner}`; Spearman correlation of each "
          "distance with the Deep-Align barrier of the same alignment:\n\n"
          + markdown_table(["distance", "Spearman"], [[k, f"{v:.3f}"] for k, v in rho.items()]) + "\n")
    report = {"provenance": provenance(), "pairs": len(rows), "spearman": rho}
    if halves:  # how well the barrier on half of the test inputs ranks the pairs as on the other half
        report["split_half_spearman"] = float(spearmanr(*zip(*halves, strict=True))[0])
        md += ("\nThe barrier's own split-half agreement (Spearman of the barrier on the even and on the odd test "
               f"inputs): {report['split_half_spearman']:.3f}.\n")
    write_report(args.out, args.stem, report, md)
    print(md)


if __name__ == "__main__":
    main()
