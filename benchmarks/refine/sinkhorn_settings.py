r"""Steps, learning rate and warm-start scale of Sinkhorn re-basin, on validation pairs.

For seeded *validation* pairs of a zoo (never the reported test pairs), runs ``gnn+sinkhorn`` (or another
Sinkhorn-based method) once per setting, a setting being keyword arguments that override what the method
passes to :func:`gnn_align.baselines.sinkhorn_rebasin` (``steps``, ``lr``, ``init_scale``, ``batch_size``), and
reports the mean Deep-Align barrier (BatchNorm statistics reset) and the median seconds a pair. Writes
``OUT/sinkhorn_settings-ZOO.{json,md}`` with provenance.

    python benchmarks/refine/sinkhorn_settings.py --zoo digits-resnet --aligner v2 --pairs 20 \\
        --settings 'steps=300;steps=500;lr=0.2;init_scale=4' --out benchmarks/refine/sinkhorn-settings
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from gnn_align import methods
from gnn_align.aligner import load_aligner
from gnn_align.baselines import sinkhorn_rebasin
from gnn_align.io import DEFAULT_ZOO_ROOT
from gnn_align.metrics import input_batches
from gnn_align.provenance import provenance
from gnn_align.studies.bench import evaluate_alignment, pair_generator, zoo_pairs
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.zoo import ModelZoo

KINDS = {"steps": int, "lr": float, "init_scale": float, "batch_size": int}


def parse_settings(text: str) -> list:
    """``'steps=300;steps=500,lr=0.2'`` -> ``[{'steps': 300}, {'steps': 500, 'lr': 0.2}]``."""
    out = []
    for part in text.split(";"):
        setting = {}
        for item in filter(None, part.split(",")):
            key, value = item.split("=")
            if key not in KINDS:
                raise SystemExit(f"unknown setting '{key}' (choose from {', '.join(KINDS)})")
            setting[key] = KINDS[key](value)
        out.append(setting)
    return out


def label(setting: dict) -> str:
    return ",".join(f"{k}={v:g}" for k, v in setting.items()) or "default"


def run_settings(zoo: ModelZoo, aligner, method: str, settings: list, num_pairs: int, name=label) -> list:
    """For each of ``num_pairs`` seeded pairs of ``zoo``, ``method`` once per setting (keyword arguments that
    override what it passes to :func:`sinkhorn_rebasin`): ``{"pair", "family", name(setting): barrier,
    "seconds " + name(setting): seconds}`` per pair, BatchNorm statistics reset for the barrier."""
    table = methods.method_table(aligner)
    rows = []
    try:
        for p in zoo_pairs(zoo, num_pairs, progress=True):
            task, spec, a, b, module = p.task, p.spec, p.a, p.b, p.module
            row = {"pair": [int(p.i), int(p.j)], "family": zoo.members[p.member]["arch"]["family"]}
            for setting in settings:  # the method table calls methods.sinkhorn_rebasin: override its arguments
                methods.sinkhorn_rebasin = lambda *a, s=setting, **k: sinkhorn_rebasin(*a, **(k | s))
                ctx = methods.PairContext(module, spec, a, b, task.x_train, task.y_train, task.loss,
                                          pair_generator(0, p.i, p.j))
                t0 = time.perf_counter()
                perm = methods.lookup(table, method)(ctx)
                row[f"seconds {name(setting)}"] = time.perf_counter() - t0
                metrics, _ = evaluate_alignment(module, a, b, perm, spec, task, reset_bn=input_batches(task.x_train))
                row[name(setting)] = metrics["barrier_deepalign"]
            rows.append(row)
    finally:
        methods.sinkhorn_rebasin = sinkhorn_rebasin
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", required=True)
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--aligner", default="mixed")
    p.add_argument("--method", default="gnn+sinkhorn")
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--settings", default=";steps=500", help="settings separated by ';' (an empty one: the defaults)")
    p.add_argument("--out", default="benchmarks/refine/sinkhorn-settings")
    args = p.parse_args()
    torch.set_num_threads(1)
    settings = parse_settings(args.settings)
    zoo = ModelZoo(str(Path(args.root) / args.zoo), split="val", log=False)
    aligner = load_aligner(args.aligner)
    rows = [{k: v for k, v in r.items() if k != "family"}
            for r in run_settings(zoo, aligner, args.method, settings, args.pairs)]
    summary = {label(s): {"barrier": statistics.fmean(r[label(s)] for r in rows),
                          "median_seconds": statistics.median(r[f"seconds {label(s)}"] for r in rows)}
               for s in settings}
    res = {"zoo": args.zoo, "split": "val", "method": args.method, "aligner": args.aligner, "pairs": len(rows),
           "summary": summary, "per_pair": rows, "provenance": provenance(aligner=args.aligner, aligner_model=aligner)}
    md = (f"**{args.zoo}**, {len(rows)} validation pairs, `{args.method}` (gnn = `{args.aligner}`; defaults: "
          f"{methods.SINKHORN_STEPS} steps at lr {methods.SINKHORN_LR}, warm-start scale {methods.WARM_START_SCALE}):"
          " mean Deep-Align barrier by setting\n\n"
          + markdown_table(["setting", "barrier", "median s/pair"],
                           [[k, f"{v['barrier']:.4f}", f"{v['median_seconds']:.2f}"] for k, v in summary.items()]))
    write_report(args.out, f"sinkhorn_settings-{args.zoo}", res, md + "\n", echo=True)


if __name__ == "__main__":
    main()
