"""Issue 16 exploration on digits-mlp *validation* pairs: blend the shipped aligner's scores with weight
matching's assignment cost taken around its prediction (one or two consensus steps).

    python benchmarks/aligner-v2/explore/blend.py 40

Prints the running mean barrier (test inputs) for each (blend weight, steps) and for weight matching.
"""

import statistics
import sys

import torch

import gnn_align as ga
from gnn_align.archs import build_arch
from gnn_align.baselines.weight_matching import _Costs
from gnn_align.metrics import barrier, interpolation_curve
from gnn_align.ot import hungarian
from gnn_align.pretrained import load_pretrained
from gnn_align.tasks import network_task
from gnn_align.zoo import ModelZoo, independent_pairs

BETAS = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0)


def _z(m: torch.Tensor) -> torch.Tensor:
    return (m - m.mean()) / (m.std() + 1e-12)


def main(num_pairs: int) -> None:
    torch.set_num_threads(1)
    zoo = ModelZoo("data/zoos/digits-mlp", split="val", log=False)
    net = build_arch(zoo.members[0]["arch"]).eval()
    task = network_task(zoo, 0)
    al = load_pretrained()
    spec = ga.spec_from_module(net, task.x_train[:2])

    def bar(a, b, p):
        curve = interpolation_curve(net, a, ga.apply_permutation(b, p, spec), task.x_test, task.y_test, "ce", 11)
        return barrier(curve["loss"])

    res: dict = {(b, it): [] for b in BETAS for it in (1, 2)} | {"wm": []}
    for n, (i, j) in enumerate(independent_pairs(zoo, num_pairs, torch.Generator().manual_seed(7))):
        a, b = zoo.state_dict(i), zoo.state_dict(j)
        with torch.no_grad():
            scores, _, groups = al.scores([al.graph(a, spec)], [al.graph(b, spec)])
        s = {name: sc.double() for (_, name), sc in zip(groups, scores, strict=True)}
        start = {g: hungarian(s[g]) for g in s}
        for beta in BETAS:
            p = dict(start)
            for it in (1, 2):
                costs = _Costs(a, b, spec, spec, {g: 0 for g in spec.group_sizes})
                p = {g: hungarian(_z(s[g]) + beta * _z(costs.cost(g, p))) for g in spec.group_sizes}
                res[(beta, it)].append(bar(a, b, p))
        res["wm"].append(bar(a, b, ga.align(a, b, method="wm", module=net).perm))
        if n % 10 == 9:
            print(n + 1, {str(k): round(statistics.fmean(v), 4) for k, v in res.items()}, flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]))
