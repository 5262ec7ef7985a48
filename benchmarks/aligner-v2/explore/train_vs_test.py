"""Issues 16/17 diagnosis on 8 digits-mlp *validation* pairs: the barrier on the training and on the test
inputs after weight matching, the shipped aligner and STE re-basin of several lengths, and seconds a pair.

    python benchmarks/aligner-v2/explore/train_vs_test.py
"""

import statistics
import time

import torch

import gnn_align as ga
from gnn_align.archs import build_arch
from gnn_align.baselines import ste_rebasin
from gnn_align.metrics import barrier, interpolation_curve
from gnn_align.tasks import network_task
from gnn_align.zoo import ModelZoo, independent_pairs

RUNS = {"wm": None, "gnn": None, "ste60": {"steps": 60}, "ste300": {"steps": 300},
        "ste300-b1024": {"steps": 300, "batch_size": 1024},
        "ste600-lr.02-b1024": {"steps": 600, "lr": 0.02, "batch_size": 1024}}


def main() -> None:
    torch.set_num_threads(1)
    zoo = ModelZoo("data/zoos/digits-mlp", split="val", log=False)
    net = build_arch(zoo.members[0]["arch"]).eval()
    task = network_task(zoo, 0)
    spec = ga.spec_from_module(net, task.x_train[:2])

    def bars(a, b, p):
        bb = ga.apply_permutation(b, p, spec)
        return tuple(barrier(interpolation_curve(net, a, bb, x, y, "ce", 11)["loss"])
                     for x, y in ((task.x_train, task.y_train), (task.x_test, task.y_test)))

    rows: dict = {}
    for n, (i, j) in enumerate(independent_pairs(zoo, 8, torch.Generator().manual_seed(11))):
        a, b = zoo.state_dict(i), zoo.state_dict(j)
        for name, kw in RUNS.items():
            t = time.perf_counter()
            if kw is None:
                p = ga.align(a, b, method=name, module=net).perm
            else:
                gen = torch.Generator().manual_seed(n)
                p = ste_rebasin(net, a, b, spec, task.x_train, task.y_train, generator=gen, **kw).perm
            rows.setdefault(name, []).append(bars(a, b, p) + (time.perf_counter() - t,))
    for k, v in rows.items():
        train, test = (statistics.fmean(r[c] for r in v) for c in (0, 1))
        print(f"{k:20s} train {train:.4f}  test {test:.4f}  s {statistics.median(r[2] for r in v):.2f}")


if __name__ == "__main__":
    main()
