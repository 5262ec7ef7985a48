"""Why does the learned aligner lose on networks trained by other recipes? A measured diagnosis.

For every member of a zoo whose members vary the training recipe (``recipes``), draw seeded pairs
(test split, or ``heldout`` for held-out recipes), align them with weight matching, activation
matching and the aligner, and record per member what the recipe did to the networks: the effective
gain of each weight layer (RMS weight x sqrt(fan-in)), the bias RMS, the fraction of dead ReLU units
on the test inputs, the logit scale and the test accuracy. Aligner variants separate its two
inputs: ``gnn`` (as trained), ``gnn-probe`` (the probe responses only: the node read-out of the raw
node features switched off). Writes ``diagnosis.json``, ``diagnosis.md`` and ``diagnosis.png``
(the aligner's barrier relative to WM against each statistic).

    python benchmarks/recipe-diagnosis/recipe_diagnosis.py --zoo recipes --pairs 20 --out benchmarks/recipe-diagnosis
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from gnn_align.aligner import load_aligner
from gnn_align.archs import build_arch
from gnn_align.io import DEFAULT_RESULTS_ROOT, DEFAULT_ZOO_ROOT
from gnn_align.methods import METHODS, PairContext
from gnn_align.metrics import input_batches
from gnn_align.pretrained import DEFAULT
from gnn_align.provenance import provenance
from gnn_align.studies.bench import evaluate_alignment, pair_generator
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.tasks import network_task
from gnn_align.zoo import ModelZoo, independent_pairs

STATS = ("gain", "bias_rms", "dead", "logit_std", "test_acc")


@torch.no_grad()
def network_stats(module: torch.nn.Module, state: dict, x: torch.Tensor) -> dict:
    """What a recipe leaves in one network: mean effective gain and bias RMS of its weight layers,
    fraction of hidden ReLU units never active on ``x``, std of its logits."""
    module.load_state_dict(state)
    gains, biases, acts = [], [], []
    for m in module.modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)):
            w = m.weight
            gains.append(float(w.pow(2).mean().sqrt() * (w[0].numel() ** 0.5)))
            if m.bias is not None:
                biases.append(float(m.bias.pow(2).mean().sqrt()))
    hooks = [m.register_forward_hook(lambda _m, _i, out: acts.append(out))
             for m in module.modules() if isinstance(m, torch.nn.ReLU)]
    out = module(x)
    for h in hooks:
        h.remove()
    dead = [float((a.transpose(0, 1).flatten(1) <= 0).all(1).float().mean()) for a in acts]
    return {"gain": statistics.fmean(gains), "bias_rms": statistics.fmean(biases) if biases else 0.0,
            "dead": statistics.fmean(dead) if dead else 0.0, "logit_std": float(out.std())}


def probe_only(aligner):
    """A copy of ``aligner`` whose embedding is its probe responses alone (node read-out gain 0)."""
    al = copy.deepcopy(aligner)
    with torch.no_grad():
        al.encoder.gains[0] = 0.0
    return al


def run(args) -> dict:
    zoo_all = ModelZoo(str(Path(args.zoo_root) / args.zoo), log=False)
    aligner = load_aligner(DEFAULT if args.aligner == "pretrained" else args.aligner)
    variants = {"gnn": aligner, "gnn-probe": probe_only(aligner)}
    rows = []
    for mi, member in enumerate(zoo_all.members):
        split = "heldout" if member["heldout"] else "test"
        zoo = ModelZoo(str(Path(args.zoo_root) / args.zoo), split=split, log=False)
        m = zoo.member_index(member["name"])
        pairs = independent_pairs(zoo, args.pairs, torch.Generator().manual_seed(args.seed), member=m)
        module, spec = build_arch(member["arch"]).eval(), zoo.spec(m)
        barriers = {k: [] for k in ["wm", "am", *variants]}
        seconds = {k: 0.0 for k in barriers}
        stats = {k: [] for k in STATS}
        seen = set()
        for i, j in pairs:
            task = network_task(zoo, i)
            a, b = zoo.state_dict(i), zoo.state_dict(j)
            for k in (i, j):
                if k not in seen:
                    seen.add(k)
                    s = network_stats(copy.deepcopy(module), zoo.state_dict(k), task.x_test)
                    s["test_acc"] = zoo.record(k)["test_acc"]
                    for key in STATS:
                        stats[key].append(s[key])
            bn = input_batches(task.x_train) if any(k.endswith("running_mean") for k in a) else None
            ctx = PairContext(module, spec, a, b, task.x_train, task.y_train, task.loss,
                              pair_generator(args.seed, i, j))
            for name, values in barriers.items():
                t0 = time.perf_counter()
                perm = (METHODS[name](ctx) if name in ("wm", "am")
                        else variants[name].align(a, b, spec))
                seconds[name] += time.perf_counter() - t0
                values.append(evaluate_alignment(module, a, b, perm, spec, task, reset_bn=bn)[0]["barrier_deepalign"])
        row = {"member": member["name"], "recipe": member.get("recipe", "default"), "split": split,
               "family": member["arch"]["family"], "train": member["train"], "pairs": len(pairs),
               **{f"barrier_{k}": statistics.fmean(v) for k, v in barriers.items()},
               **{f"seconds_{k}": v / len(pairs) for k, v in seconds.items()},
               **{k: statistics.fmean(v) for k, v in stats.items()}}
        row["gnn_over_wm"] = row["barrier_gnn"] / row["barrier_wm"]
        row["gnn_over_am"] = row["barrier_gnn"] / row["barrier_am"]
        row["probe_over_wm"] = row["barrier_gnn-probe"] / row["barrier_wm"]
        rows.append(row)
        print(f"{member['name']:<40} gnn/wm {row['gnn_over_wm']:.3f} gnn/am {row['gnn_over_am']:.3f} "
              f"probe-only/wm {row['probe_over_wm']:.3f} gain {row['gain']:.2f} dead {row['dead']:.3f}", flush=True)
    corr = {}
    for fam in sorted({r["family"] for r in rows}):
        fr = [r for r in rows if r["family"] == fam]
        corr[fam] = {k: _spearman([r[k] for r in fr], [r["gnn_over_wm"] for r in fr]) for k in STATS}
    return {"zoo": args.zoo, "pairs_per_member": args.pairs, "seed": args.seed, "rows": rows,
            "spearman_gnn_over_wm": corr, "provenance": provenance(sys.argv, aligner=args.aligner,
                                                                   aligner_model=aligner)}


def _spearman(x: list, y: list) -> float:
    rank = lambda v: torch.tensor(v, dtype=torch.float64).argsort().argsort().double()
    rx, ry = rank(x), rank(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()).clamp_min(1e-12))


def markdown(res: dict) -> str:
    head = ["member", "split", "wm", "am", "gnn", "gnn-probe", "gnn/wm", "gnn/am", "gain", "bias rms",
            "dead", "logit std", "test acc"]
    rows = [[r["member"], r["split"], f"{r['barrier_wm']:.4f}", f"{r['barrier_am']:.4f}", f"{r['barrier_gnn']:.4f}",
             f"{r['barrier_gnn-probe']:.4f}", f"{r['gnn_over_wm']:.2f}", f"{r['gnn_over_am']:.2f}", f"{r['gain']:.2f}",
             f"{r['bias_rms']:.3f}", f"{r['dead']:.3f}", f"{r['logit_std']:.2f}", f"{r['test_acc']:.3f}"]
            for r in res["rows"]]
    spearman = [[fam, *(f"{c[k]:+.2f}" for k in STATS)] for fam, c in res["spearman_gnn_over_wm"].items()]
    lines = [(f"**{res['zoo']}**: {res['pairs_per_member']} seeded pairs per member (seed {res['seed']}), mean "
              "Deep-Align barrier (BatchNorm reset on data for every method where the net has it)"), "",
             markdown_table(head, rows),
             "", "Spearman correlation, across the members of a family, of gnn/wm with each statistic:", "",
             markdown_table(["family", *STATS], spearman)]
    return "\n".join(lines) + "\n"


def plot(res: dict):
    """gnn/WM barrier against each statistic, one point per member: a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(STATS), figsize=(4 * len(STATS), 3.6), sharey=True)
    marks = {"mlp": "o", "cnn": "s", "resnet": "^"}
    for ax, key in zip(axes, STATS, strict=True):
        for r in res["rows"]:
            ax.scatter(r[key], r["gnn_over_wm"], marker=marks.get(r["family"], "x"),
                       c="tab:red" if r["split"] == "heldout" else "tab:blue", alpha=0.8)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xlabel(key)
    axes[0].set_ylabel("gnn barrier / WM barrier")
    fig.suptitle(f"{res['zoo']}: aligner vs weight matching per member (o MLP, □ CNN, △ ResNet; red: held-out recipe)")
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="recipes")
    p.add_argument("--zoo-root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--aligner", default="pretrained", help="'pretrained' (the shipped one) or a run folder")
    p.add_argument("--pairs", type=int, default=20, help="pairs per member")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=f"{DEFAULT_RESULTS_ROOT}/recipe-diagnosis",
                   help=f"output folder (default {DEFAULT_RESULTS_ROOT}/recipe-diagnosis)")
    args = p.parse_args(argv)
    res = run(args)
    write_report(args.out, "diagnosis", res, markdown(res), plot(res), echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
