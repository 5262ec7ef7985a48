"""Can a user without data refine the aligner's answer on inputs they invent? Validation pairs say no.

For seeded *validation* pairs of a zoo (never the reported test pairs), refines ``gnn``'s answer by Sinkhorn
re-basin (warm start, as ``gnn+sinkhorn``) with the task loss on invented inputs, labelled by the ensemble
of the two networks (the argmax of their mean softmax): standard normal inputs and uniform ones on [0, 1]
(the digits' range), against the same refinement on the training split's real inputs and labels. Reports the
mean Deep-Align barrier on the test inputs. Writes ``OUT/invented_inputs-ZOO.{json,md}`` with provenance.

    python benchmarks/refine/invented_inputs.py --zoo digits-mlp --pairs 20 --out benchmarks/refine/invented-inputs
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
from torch.func import functional_call

from gnn_align.aligner import load_aligner
from gnn_align.baselines import sinkhorn_rebasin
from gnn_align.io import DEFAULT_ZOO_ROOT
from gnn_align.methods import SINKHORN_LR, WARM_START_SCALE
from gnn_align.provenance import provenance
from gnn_align.studies.bench import evaluate_alignment, zoo_pairs
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.zoo import ModelZoo

#: invented inputs: name -> fn(n, shape, generator)
INVENTED = {"normal": lambda n, shape, g: torch.randn(n, *shape, generator=g),
            "uniform [0, 1]": lambda n, shape, g: torch.rand(n, *shape, generator=g)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="digits-mlp")
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT)
    p.add_argument("--aligner", default="mixed")
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--inputs", type=int, default=4096, help="invented inputs per pair")
    p.add_argument("--out", default="benchmarks/refine/invented-inputs")
    args = p.parse_args()
    torch.set_num_threads(1)
    zoo = ModelZoo(str(Path(args.root) / args.zoo), split="val", log=False)
    al = load_aligner(args.aligner)
    rows = []
    for n, p in enumerate(zoo_pairs(zoo, args.pairs, progress=True)):
        task, spec, a, b, module = p.task, p.spec, p.a, p.b, p.module
        start = al.align(a, b, spec)
        gen = torch.Generator().manual_seed(1000 + n)
        data = {"real (training split)": (task.x_train, task.y_train)}
        for name, draw in INVENTED.items():
            x = draw(args.inputs, task.x_train.shape[1:], gen)
            with torch.no_grad():
                y = sum(functional_call(module, s, (x,)).softmax(-1) for s in (a, b)).argmax(-1)
            data[name] = (x, y)
        perms = {"gnn": start} | {
            f"gnn+sinkhorn, {name} inputs": sinkhorn_rebasin(
                module, a, b, spec, x, y, loss=task.loss, steps=args.steps, lr=SINKHORN_LR, init=start,
                init_scale=WARM_START_SCALE, generator=torch.Generator().manual_seed(n)).perm
            for name, (x, y) in data.items()}
        rows.append({k: evaluate_alignment(module, a, b, perm, spec, task)[0]["barrier_deepalign"]
                     for k, perm in perms.items()})
    mean = {k: statistics.fmean(r[k] for r in rows) for k in rows[0]}
    res = {"zoo": args.zoo, "split": "val", "pairs": len(rows), "steps": args.steps, "mean": mean, "per_pair": rows,
           "provenance": provenance(aligner=args.aligner, aligner_model=al)}
    md = (f"**{args.zoo}**, {len(rows)} validation pairs, gnn = `{args.aligner}`, Sinkhorn re-basin {args.steps} steps "
          f"at lr {SINKHORN_LR}: mean Deep-Align barrier on the test inputs\n\n`{provenance()['command']}`\n\n"
          + markdown_table(["alignment", "barrier"], [[k, f"{v:.4f}"] for k, v in mean.items()]))
    write_report(args.out, f"invented_inputs-{args.zoo}", res, md + "\n", echo=True)


if __name__ == "__main__":
    main()
