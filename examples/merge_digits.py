"""Merge two digits classifiers: the naive average of their weights vs the average after alignment.

Trains small MLPs on scikit-learn's bundled digits (seconds on a CPU), then for each pair prints the
test accuracy of both models, of their plain average and of their average after aligning the second
to the first with the shipped aligner (``gnn``) and with weight matching (``wm``).

    python examples/merge_digits.py [--pairs 3]
"""

import argparse

import gnn_align
from gnn_align.archs import MLP
from gnn_align.metrics import accuracy
from gnn_align.tasks import load_task
from gnn_align.zoo import train_networks, unstack_state


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=3, help="model pairs to merge (default 3)")
    args = p.parse_args()
    task = load_task("digits")
    arch = {"family": "mlp", "in_features": 64, "hidden": [64, 64, 64], "out_features": 10}
    stacked, _ = train_networks(arch, task.x_train, task.y_train, seeds=list(range(2 * args.pairs)), epochs=20,
                                lr=5e-3, progress=False)
    net = MLP(64, [64, 64, 64], 10).eval()
    print("| pair | model A | model B | naive average | aligned (gnn) | aligned (wm) |\n|---|---|---|---|---|---|")
    for k in range(args.pairs):
        a, b = unstack_state(stacked, 2 * k), unstack_state(stacked, 2 * k + 1)
        row = [accuracy(net, a, task.x_test, task.y_test), accuracy(net, b, task.x_test, task.y_test),
               accuracy(net, gnn_align.api.average_states([a, b]), task.x_test, task.y_test)]
        for method in ("gnn", "wm"):
            merged = gnn_align.merge([a, b], method=method, module=net)
            row.append(accuracy(net, merged.state, task.x_test, task.y_test))
        print(f"| {k} | " + " | ".join(f"{v:.4f}" for v in row) + " |")

if __name__ == "__main__":
    main()
