"""The ``gnn-align`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from . import archs
from .graph import from_graph, to_graph
from .permute import apply_permutation, random_permutation
from .testing import output_change
from .trace import spec_from_module

# name -> (factory, example input shape without batch); small versions of every family
DEMO_NETWORKS = {
    "mlp": (lambda: archs.MLP(64, [64, 64, 64], 10), (64,)),
    "mlp-layernorm": (lambda: archs.MLP(40, [48, 48], 10, layernorm=True), (40,)),
    "cnn2d": (lambda: archs.CNN(1, [8, 16, 16], 10, dim=2), (1, 8, 8)),
    "cnn1d-flatten": (lambda: archs.CNN(1, [16, 16], 10, dim=1, kernel_size=5, stride=2, head="flatten",
                                        input_size=40), (1, 40)),
    "residual-mlp": (lambda: archs.ResidualMLP(64, 32, 2, 10), (64,)),
    "resnet-bn": (lambda: archs.ResNet(1, 8, [8, 16], 10, dim=2), (1, 8, 8)),
    "siren": (lambda: archs.SIREN(1, [32, 32], 1), (1,)),
}


def _demo(args: argparse.Namespace) -> int:
    torch.set_default_dtype(torch.float64)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    rows, ok = [], True
    for name in args.networks or list(DEMO_NETWORKS):
        if name not in DEMO_NETWORKS:
            print(f"unknown network '{name}'; choose from {', '.join(DEMO_NETWORKS)}", file=sys.stderr)
            return 2
        factory, shape = DEMO_NETWORKS[name]
        net = factory().eval()
        x = torch.randn((16,) + shape, generator=gen)
        spec = spec_from_module(net, x)
        state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        perm = random_permutation(spec, gen)
        permuted = apply_permutation(state, perm, spec)
        delta = output_change(net, permuted, x)
        changed = max(float((permuted[k] - state[k]).abs().max()) for k in state if state[k].numel())
        graph = to_graph(state, spec)
        exact = all(torch.equal(v, state[k]) for k, v in from_graph(graph, spec).items())
        good = delta <= 1e-10 and exact and changed > 0
        ok &= good
        rows.append(dict(network=name, groups=len(spec.group_sizes), nodes=graph.num_nodes,
                         edges=graph.edge_index.shape[1], max_weight_change=changed,
                         max_output_change=delta, graph_round_trip_exact=exact, ok=good))
        if not args.json:
            print(f"== {name}: {type(net).__name__}\n{spec.describe()}\n")
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{'network':<14} {'groups':>6} {'nodes':>6} {'edges':>7} {'max|dW|':>9} {'max|dy|':>9}  "
              "round trip  ok")
        for r in rows:
            print(f"{r['network']:<14} {r['groups']:>6} {r['nodes']:>6} {r['edges']:>7} "
                  f"{r['max_weight_change']:>9.2e} {r['max_output_change']:>9.2e}  "
                  f"{'exact' if r['graph_round_trip_exact'] else 'BROKEN':<10}  {'yes' if r['ok'] else 'NO'}")
        print("\nEvery network was permuted by a random element of its derived symmetry group: the weights "
              "moved (max|dW|) but the outputs did not (max|dy|, float64)." if ok else "\nFAILED")
    return 0 if ok else 1


def _bench(args: argparse.Namespace) -> int:
    from .bench import dumps, run_benchmark, to_markdown, write_results
    from .errors import GNNAlignError

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        res = run_benchmark(Path(args.root) / args.zoo, methods, num_pairs=args.pairs, seed=args.seed,
                            num_lambdas=args.lambdas, reset_bn=args.reset_bn, progress=not args.json)
    except (GNNAlignError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = write_results(res, args.out or Path("results") / f"bench-{args.zoo}")
    print(dumps(res) if args.json else to_markdown(res) + "\nwritten: " + ", ".join(map(str, paths)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gnn-align", description="Learn to align neural networks.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="derive the symmetry of each architecture family, permute a network "
                          "by it and prove its function is unchanged",
                          description="For each built-in architecture family: derive its PermutationSpec "
                          "with torch.fx, print the table of permutation groups, permute a random network "
                          "by a random group element, and check (float64) that its outputs are unchanged "
                          "and that weights -> graph -> weights is exact. Exits 1 if any check fails.")
    demo.add_argument("networks", nargs="*", help=f"subset of: {', '.join(DEMO_NETWORKS)}")
    demo.add_argument("--seed", type=int, default=0, help="seed of networks, inputs and permutations")
    demo.add_argument("--json", action="store_true", help="print the results as JSON only")
    demo.set_defaults(func=_demo)
    bench = sub.add_parser("bench", help="benchmark alignment methods on test pairs of a built zoo",
                           description="Draw fixed, seeded pairs of networks of one architecture from a "
                           "zoo's test split, align each pair with every method, and report the loss "
                           "barrier and AUC of the interpolation curve (Deep-Align's and Git Re-Basin's "
                           "definitions), the accuracy barrier and the median seconds per pair. Writes "
                           "results.json, results.md and curves.png (atomically) to --out.")
    bench.add_argument("--zoo", required=True, help="zoo name (a folder under --root; build it with "
                       "`python -m datasets build NAME`)")
    bench.add_argument("--root", default="data/zoos", help="folder holding built zoos (default data/zoos)")
    bench.add_argument("--methods", default="naive,wm,am,sinkhorn", help="comma-separated: naive, wm, am, sinkhorn")
    bench.add_argument("--pairs", type=int, default=100, help="number of test pairs (default 100)")
    bench.add_argument("--seed", type=int, default=0, help="seed of the pairs and of the methods")
    bench.add_argument("--lambdas", type=int, default=25, help="points on the interpolation curve")
    bench.add_argument("--reset-bn", action="store_true", help="reset BatchNorm statistics of every "
                       "interpolated network on 512 training inputs before evaluating it")
    bench.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    bench.add_argument("--out", default=None, help="output folder (default results/bench-ZOO)")
    bench.add_argument("--json", action="store_true", help="print the summary as JSON")
    bench.set_defaults(func=_bench)
    return parser


def main(argv: list | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
