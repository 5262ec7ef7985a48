r"""Several trained aligners scored on the same seeded pairs of every member of a zoo, next to weight
matching and activation matching: the ablation of the aligner's parts, and its acceptance tables.

Each ``--run NAME=RUN_DIR`` is a ``train.py`` run (e.g. probe pass only / message passing only /
both, trained with the same budget), or ``NAME=pretrained[:ALIGNER]`` for an aligner shipped in the
package. For every member of the zoo's test split (and, with ``--heldout-pairs``, its heldout split)
the same pairs are aligned by every method; BatchNorm statistics are reset on data for every
interpolated network. The table gives each member's mean Deep-Align barrier, and per family the
geometric mean over members of (method / WM). Writes ``ablation.json``, ``ablation.md`` and
``ablation.png``.

    python benchmarks/ablation/compare.py --zoo mixed-recipes --run probe=runs/abl-probe \
        --run mp=runs/abl-mp --run both=runs/abl-both --out benchmarks/ablation
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from gnn_align.aligner import load_aligner
from gnn_align.io import DEFAULT_RESULTS_ROOT, DEFAULT_ZOO_ROOT
from gnn_align.methods import method_table
from gnn_align.pretrained import DEFAULT
from gnn_align.provenance import provenance, weights_hash
from gnn_align.studies.bench import run_benchmark
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.zoo import ModelZoo
from gnn_align.zoo.storage import ZooError


def family(member: dict) -> str:
    """A member's family for the summary: mlp, cnn, resnet or resmlp, with a ``-heldout`` tag
    for held-out members."""
    fam = {"mlp": "mlp", "cnn": "cnn", "resnet": "resnet", "residual_mlp": "resmlp"}.get(member["arch"]["family"],
                                                                                      member["arch"]["family"])
    return fam + ("-heldout" if member["heldout"] else "")


def run(args) -> dict:
    runs = dict(r.split("=", 1) for r in args.run)
    names, table = [], method_table()
    info = {}
    for name, path in runs.items():
        shipped = path == "pretrained" or path.startswith("pretrained:")
        al = load_aligner((path.partition(":")[2] or DEFAULT) if shipped else path)
        table = method_table(al, name=name, base=table)
        names.append(name)
        info[name] = {"run": path, "weights_sha256": weights_hash(al), "config": al.config.to_dict()}
    methods = ["wm", "am", *names]
    root = Path(args.root) / args.zoo
    rows = []
    for split, pairs in (("test", args.pairs), ("heldout", args.heldout_pairs)):
        if not pairs:
            continue
        try:
            view = ModelZoo(str(root), split=split, log=False)
        except ZooError:
            continue
        for m, member in enumerate(view.members):
            if len(view.indices_of(m)) < 2:
                continue
            res = run_benchmark(root, methods, num_pairs=pairs, split=split, member=member["name"], progress=False,
                                reset_bn=True, seed=args.seed, table=table)
            bar = {k: s["barrier_deepalign"]["mean"] for k, s in res["methods"].items()}
            rows.append({"member": member["name"], "family": family(member), "split": split, "pairs": res["pairs"],
                         "barrier": bar})
            print(member["name"], {k: round(v, 4) for k, v in bar.items()}, flush=True)
    summary = {}
    for fam in sorted({r["family"] for r in rows}):
        fr = [r for r in rows if r["family"] == fam]
        summary[fam] = {k: math.exp(sum(math.log(max(r["barrier"][k], 1e-9) / max(r["barrier"]["wm"], 1e-9))
                                        for r in fr) / len(fr)) for k in methods}
    return {"zoo": args.zoo, "seed": args.seed, "runs": info, "methods": methods, "rows": rows,
            "summary_over_wm": summary, "provenance": provenance(sys.argv)}


def markdown(res: dict) -> str:
    m = res["methods"]
    families = [[fam, sum(r["family"] == fam for r in res["rows"]), *(f"{s[k]:.3f}" for k in m)]
                for fam, s in res["summary_over_wm"].items()]
    members = []
    for r in res["rows"]:
        best = min(r["barrier"].values())
        cells = [(f"**{r['barrier'][k]:.4f}**" if r["barrier"][k] == best else f"{r['barrier'][k]:.4f}") for k in m]
        members.append([r["member"], r["split"], r["pairs"], *cells])
    lines = [(f"**{res['zoo']}**: mean Deep-Align barrier on the same seeded pairs (seed {res['seed']}) for every "
              "method; BatchNorm reset on data for every interpolated network."), "",
             "Per family: geometric mean over its members of (method barrier / WM barrier); lower is better.", "",
             markdown_table(["family", "members", *m], families), "",
             "Aligners: " + "; ".join(f"`{k}` = {v['run']} (weights {v['weights_sha256']}, "
                                      f"probes {v['config']['probes']}, layers {v['config']['num_layers']}, "
                                      f"conv {v['config'].get('conv')})" for k, v in res["runs"].items()), "",
             markdown_table(["member", "split", "pairs", *m], members)]
    return "\n".join(lines) + "\n"


def plot(res: dict):
    """The bar chart of the family summary (method barrier / WM barrier): a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams, methods = list(res["summary_over_wm"]), [k for k in res["methods"] if k != "wm"]
    fig, ax = plt.subplots(figsize=(1.6 * len(fams) + 3, 3.8))
    width = 0.8 / len(methods)
    for k, meth in enumerate(methods):
        ax.bar([i + k * width for i in range(len(fams))], [res["summary_over_wm"][f][meth] for f in fams],
               width, label=meth)
    ax.axhline(1.0, color="gray", lw=0.8, label="wm")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(fams))], fams)
    ax.set_ylabel("barrier / WM barrier (geo. mean)")
    ax.set_title(f"{res['zoo']}: {', '.join(res['runs'])} against weight matching")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", required=True)
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--run", action="append", required=True, metavar="NAME=RUN_DIR",
                   help="an aligner to score: a train.py run folder, 'pretrained' (the shipped default) or "
                        "'pretrained:NAME'")
    p.add_argument("--pairs", type=int, default=16, help="pairs per trained-on member")
    p.add_argument("--heldout-pairs", type=int, default=16, help="pairs per held-out member (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--name", default="ablation", help="file stem of the results (default ablation)")
    p.add_argument("--out", default=f"{DEFAULT_RESULTS_ROOT}/compare",
                   help=f"output folder (default {DEFAULT_RESULTS_ROOT}/compare)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    res = run(args)
    write_report(args.out, args.name, res, markdown(res), plot(res), echo=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
