r"""Generalisation report of one aligner over every architecture (member) of a zoo.

For each member of the zoo's test split (architectures trained on) and of its heldout split
(architectures never trained on): the benchmark table of naive / WM / AM / the aligner (``gnn``,
``gnn+wm``) on fixed pairs of that member, plus, where ``--specialist MEMBER=RUN`` names an aligner
trained on that architecture alone, the specialist's prediction (method ``specialist``). BatchNorm
statistics are reset for every interpolated network (no-op without BatchNorm). Writes
``generalisation.json`` and ``generalisation.md`` to --out (atomically) and prints the table.

    python benchmarks/generalisation/generalisation.py --zoo mixed --aligner runs/mixed \
        --specialist digits-mlp-w64-d3=runs/digits-mlp --specialist digits-cnn-8-16-16=runs/digits-cnn
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from gnn_align.aligner import load_aligner
from gnn_align.io import DEFAULT_RESULTS_ROOT, DEFAULT_ZOO_ROOT
from gnn_align.methods import method_table
from gnn_align.provenance import provenance
from gnn_align.studies.bench import run_benchmark
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.zoo import ModelZoo
from gnn_align.zoo.storage import ZooError

METHODS = ["naive", "wm", "am", "gnn", "gnn+wm"]


def main(argv: list | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", required=True)
    p.add_argument("--aligner", required=True, help="a train.py run folder (the general aligner)")
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--pairs", type=int, default=50, help="pairs per trained-on architecture (default 50)")
    p.add_argument("--heldout-pairs", type=int, default=100, help="pairs per held-out architecture (default 100)")
    p.add_argument("--specialist", action="append", default=[], metavar="MEMBER=RUN",
                   help="an aligner trained on that member's architecture alone")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=f"{DEFAULT_RESULTS_ROOT}/generalisation")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.root) / args.zoo
    specialists = dict(s.split("=", 1) for s in args.specialist)
    aligner = load_aligner(args.aligner)
    general = method_table(aligner)
    rows = []
    for split, pairs in (("test", args.pairs), ("heldout", args.heldout_pairs)):
        try:
            view = ModelZoo(str(root), split=split, log=False)
        except ZooError:
            continue
        for m, name in enumerate(mb["name"] for mb in view.members):
            if len(view.indices_of(m)) < 2:  # e.g. a held-out architecture, in the test split
                continue
            methods, table = list(METHODS), general
            if name in specialists:
                table = method_table(load_aligner(specialists[name]), name="specialist", base=general)
                methods.append("specialist")
            res = run_benchmark(root, methods, num_pairs=pairs, split=split, member=name, progress=False,
                                reset_bn=True, table=table)
            bar = {m: s["barrier_deepalign"]["mean"] for m, s in res["methods"].items()}
            rows.append({"member": name, "split": split, "pairs": res["pairs"], "barrier": bar})
            print(json.dumps(rows[-1]), flush=True)
    result = {"zoo": args.zoo, "aligner": args.aligner, "specialists": specialists, "rows": rows,
              "torch_threads": torch.get_num_threads(),
              "provenance": provenance(None if argv is None else [__file__, *argv], aligner=args.aligner,
                                       aligner_model=aligner)}
    md = to_markdown(result)
    write_report(args.out, "generalisation", result, md)
    print(md)
    return result


def to_markdown(res: dict) -> str:
    cols = METHODS + ["specialist"]
    intro = (f"**{res['zoo']}**: mean Deep-Align barrier per architecture (aligner {res['aligner']}; "
             "split heldout = never trained on; BatchNorm statistics of every interpolated network reset "
             f"on 512 training inputs; torch threads {res['torch_threads']})")
    rows = []
    for r in res["rows"]:
        b = r["barrier"]
        rows.append([r["member"], r["split"], r["pairs"], *(f"{b[m]:.4f}" if m in b else "–" for m in cols),
                     "yes" if b["gnn"] <= b["wm"] else "no", "yes" if b["gnn+wm"] <= b["am"] else "no"])
    table = markdown_table(["architecture", "split", "pairs", *cols, "gnn ≤ wm", "gnn+wm ≤ am"], rows)
    return f"{intro}\n\n{table}\n"


if __name__ == "__main__":
    main()
