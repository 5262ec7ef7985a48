"""Align two residual CNNs with BatchNorm and look at the path between them.

Trains two small ResNets on 8x8 digits, aligns the second to the first with the shipped aligner
(one forward pass), checks that the aligned network computes exactly what it computed before, and
prints the test loss barrier on the straight line between them, before and after alignment
(BatchNorm statistics recomputed at every point of the line, as one must for BatchNorm nets).

    python examples/align_resnets.py
"""


import gnn_align
from gnn_align.archs import ResNet
from gnn_align.metrics import curve_metrics, input_batches, interpolation_curve
from gnn_align.tasks import load_task
from gnn_align.zoo import train_networks, unstack_state


def main() -> None:
    task = load_task("digits-2d")
    arch = {"family": "resnet", "in_channels": 1, "stem_channels": 8, "channels": [8, 16], "num_classes": 10,
            "dim": 2}
    stacked, _ = train_networks(arch, task.x_train, task.y_train, seeds=[0, 1], epochs=6, lr=1e-2, progress=False)
    a, b = unstack_state(stacked, 0), unstack_state(stacked, 1)
    net = ResNet(1, 8, [8, 16], 10, dim=2).eval()
    res = gnn_align.align(a, b, "gnn", module=net, data=(task.x_train, task.y_train))
    print(f"aligned in {res.seconds * 1000:.1f} ms; groups: {dict(res.spec.group_sizes)}")
    print(f"function check: max |B(x) - aligned B(x)| = {res.max_abs_diff:.2e}")
    batches = input_batches(task.x_train)  # the first 512 training inputs
    for name, state in (("naive", b), ("aligned", res.state)):
        curve = interpolation_curve(net, a, state, task.x_test, task.y_test, num_lambdas=11, reset_bn=batches)
        m = curve_metrics(curve)
        print(f"{name:>8}: loss barrier {m['barrier_deepalign']:.4f}, accuracy at the midpoint "
              f"{curve['acc'][5]:.4f} (endpoints {curve['acc'][0]:.4f}, {curve['acc'][-1]:.4f})")


if __name__ == "__main__":
    main()
