"""``auto``'s refiners and score, compared on validation pairs.

For seeded *validation* pairs of a zoo (never the reported test pairs), runs ``auto`` (default budget)
once per variant and reports the mean Deep-Align barrier (BatchNorm statistics reset) and the median
seconds. Variants: ``u01`` (one Sinkhorn refiner, ``lambda ~ U(0, 1)``: ``auto`` before 54e709a) and
``u01+mid`` (then a second refiner at the midpoint: the shipped ``auto``). The committed results also hold
``u01+mid, 3 points`` (scored by the barrier at 0.25, 0.5 and 0.75 instead of the midpoint loss), from this
script at commit 0400127, when the library had that score. ``auto`` spends a time budget, so its answers
depend on the machine's speed. Writes ``OUT/auto_variants-ZOO.{json,md}`` with provenance.

    python benchmarks/refine/auto_variants.py --zoo digits-mlp --pairs 30 --out benchmarks/refine/auto-variants
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gnn_align import methods
from gnn_align.aligner import load_aligner
from gnn_align.archs import build_arch
from gnn_align.io import DEFAULT_ZOO_ROOT
from gnn_align.metrics import input_batches
from gnn_align.provenance import provenance
from gnn_align.studies.bench import evaluate_alignment, pair_generator
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.tasks import network_task
from gnn_align.zoo import ModelZoo
from gnn_align.zoo.pairs import independent_pairs

VARIANTS = {"u01": {"sinkhorn": (0.0, 1.0)}, "u01+mid": {"sinkhorn": (0.0, 1.0), "sinkhorn-mid": (0.5, 0.5)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", required=True)
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--aligner", default="mixed")
    p.add_argument("--pairs", type=int, default=30)
    p.add_argument("--out", default="benchmarks/refine/auto-variants")
    args = p.parse_args()
    torch.set_num_threads(1)
    zoo = ModelZoo(str(Path(args.root) / args.zoo), split="val", log=False)
    aligner = load_aligner(args.aligner)
    table, shipped = methods.method_table(aligner), methods.AUTO_REFINE_LAMS
    rows = []
    for i, j in tqdm(independent_pairs(zoo, args.pairs, torch.Generator().manual_seed(0)), desc="pairs"):
        m = zoo.member_of(i)
        task, spec, a, b = network_task(zoo, i), zoo.spec(m), zoo.state_dict(i), zoo.state_dict(j)
        module = build_arch(zoo.members[m]["arch"]).eval()
        row = {}
        for name, refiners in VARIANTS.items():  # auto reads this module default when it runs
            methods.AUTO_REFINE_LAMS = refiners
            ctx = methods.PairContext(module, spec, a, b, task.x_train, task.y_train, task.loss,
                                      pair_generator(0, i, j))
            t0 = time.perf_counter()
            perm = methods.lookup(table, "auto")(ctx)
            seconds = time.perf_counter() - t0
            metrics, _ = evaluate_alignment(module, a, b, perm, spec, task, reset_bn=input_batches(task.x_train))
            row[name] = {"barrier": metrics["barrier_deepalign"], "seconds": seconds, "kept": ctx.info["kept"]}
        rows.append(row)
    methods.AUTO_REFINE_LAMS = shipped
    summary = {v: {"barrier": statistics.fmean(r[v]["barrier"] for r in rows),
                   "median_seconds": statistics.median(r[v]["seconds"] for r in rows)} for v in VARIANTS}
    res = {"zoo": args.zoo, "split": "val", "pairs": len(rows), "aligner": args.aligner, "summary": summary,
           "per_pair": rows, "provenance": provenance(aligner=args.aligner, aligner_model=aligner)}
    md = (f"**{args.zoo}**, {len(rows)} validation pairs, `auto` (gnn = `{args.aligner}`, default budget): mean "
          "Deep-Align barrier and median seconds per pair\n\n"
          + markdown_table(["variant", "barrier", "median s"],
                           [[v, f"{s['barrier']:.4f}", f"{s['median_seconds']:.2f}"] for v, s in summary.items()]))
    write_report(args.out, f"auto_variants-{args.zoo}", res, md + "\n", echo=True)


if __name__ == "__main__":
    main()
