"""``gnn-align demo | bench | warmstart | speed``: the symmetry demo and the studies of a zoo."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..io import DEFAULT_RESULTS_ROOT, DEFAULT_ZOO_ROOT
from .jsonout import dumps_json

# torch and the library are imported inside the commands: `gnn-align --help` and argument errors
# must not wait for them
DEMO_NAMES = ("mlp", "mlp-layernorm", "cnn2d", "cnn1d-flatten", "residual-mlp", "resnet-bn", "siren")


def demo_networks() -> dict:
    """Small versions of every family: name -> (factory, example input shape without batch)."""
    from .. import archs

    return {
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
    import torch

    from ..graph import from_graph, to_graph
    from ..permute import apply_permutation, random_permutation
    from ..testing import output_change
    from ..trace import spec_from_module

    networks = demo_networks()
    torch.set_default_dtype(torch.float64)
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    rows, ok = [], True
    for name in args.networks or list(networks):
        if name not in networks:
            print(f"unknown network '{name}'; choose from {', '.join(networks)}", file=sys.stderr)
            return 2
        factory, shape = networks[name]
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
        rows.append({"network": name, "groups": len(spec.group_sizes), "nodes": graph.num_nodes,
                         "edges": graph.edge_index.shape[1], "max_weight_change": changed,
                         "max_output_change": delta, "graph_round_trip_exact": exact, "ok": good})
        if not args.json:
            print(f"== {name}: {type(net).__name__}\n{spec.describe()}\n")
    if args.json:
        print(dumps_json(rows, indent=2))
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


def _positive(args: argparse.Namespace, name: str, least: int) -> None:
    """Refuse ``--NAME`` below ``least`` in one line (before any work)."""
    from ..errors import GNNAlignError

    if getattr(args, name) < least:
        raise GNNAlignError(f"--{name} {getattr(args, name)}: must be at least {least}")


def _guarded(args: argparse.Namespace, compute):
    """Set the torch threads and run ``compute()``; a library error propagates to :func:`gnn_align.cli.main`,
    which prints it as one line and exits 2."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return compute()


def _bench(args: argparse.Namespace) -> int:
    from ..methods import method_table
    from ..provenance import provenance
    from ..studies.bench import dumps, run_benchmark, to_markdown, write_results
    from .models import _aligner

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    _positive(args, "pairs", 1)
    _positive(args, "lambdas", 2)

    if args.aligner is None and any(m.split("@")[0] == "auto" or m.split("+")[0] == "gnn" for m in methods):
        from ..pretrained import DEFAULT

        args.aligner = DEFAULT  # the shipped aligner, as in align and merge

    def compute() -> dict:
        aligner = _aligner(args.aligner)
        res = run_benchmark(Path(args.root) / args.zoo, methods, num_pairs=args.pairs, seed=args.seed,
                            num_lambdas=args.lambdas, reset_bn=args.reset_bn, progress=not args.json,
                            split=args.split, member=args.member, table=method_table(aligner))
        return res | {"provenance": provenance(aligner=args.aligner, aligner_model=aligner)}

    res = _guarded(args, compute)
    paths = write_results(res, args.out or Path(DEFAULT_RESULTS_ROOT) / f"bench-{args.zoo}")
    print(dumps_json(json.loads(dumps(res)), indent=1) if args.json
          else to_markdown(res) + "\nwritten: " + ", ".join(map(str, paths)))
    return 0


def _with_provenance(args: argparse.Namespace, study) -> dict:
    """``study(aligner)`` run on the aligner named by ``--aligner``, with the provenance block added."""
    from ..aligner import load_aligner
    from ..provenance import provenance

    aligner = load_aligner(args.aligner)
    return study(aligner) | {"provenance": provenance(aligner=args.aligner, aligner_model=aligner)}


def _warmstart(args: argparse.Namespace) -> int:
    from ..studies.warmstart import to_markdown, warm_start_study, write_warm_start

    _positive(args, "pairs", 1)
    res = _guarded(args, lambda: _with_provenance(args, lambda al: warm_start_study(
        Path(args.root) / args.zoo, al, num_pairs=args.pairs, seed=args.seed, progress=not args.json)))
    paths = write_warm_start(res, args.out or Path(DEFAULT_RESULTS_ROOT) / f"warmstart-{args.zoo}")
    print(dumps_json(res, indent=1) if args.json else to_markdown(res) + "\nwritten: " + ", ".join(map(str, paths)))
    return 0


def _speed(args: argparse.Namespace) -> int:
    from ..studies.bench import speed_comparison, speed_markdown
    from ..studies.report import write_report

    _positive(args, "pairs", 1)
    _positive(args, "batch", 1)
    res = _guarded(args, lambda: _with_provenance(args, lambda al: speed_comparison(
        Path(args.root) / args.zoo, al, num_pairs=args.pairs, batch_size=args.batch)))
    out = Path(args.out or Path(DEFAULT_RESULTS_ROOT) / f"speed-{args.zoo}")
    md = speed_markdown(res)
    write_report(out, "speed", res, md)
    print(md)
    return 0


def _aligner_study_args(p: argparse.ArgumentParser, pairs: int, out: str) -> None:
    """The options shared by the commands that study a trained aligner on a zoo's test pairs."""
    p.add_argument("--zoo", required=True, help="zoo name (a folder under --root)")
    p.add_argument("--aligner", required=True, help="a train.py run folder (its best aligner), a weights file or "
                   "a shipped aligner's name")
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT, help=f"folder holding built zoos (default {DEFAULT_ZOO_ROOT})")
    p.add_argument("--pairs", type=int, default=pairs, help=f"number of test pairs (default {pairs})")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--out", default=None, help=f"output folder (default {DEFAULT_RESULTS_ROOT}/{out}-ZOO)")


def add_parsers(sub) -> None:
    """Add demo, bench, warmstart and speed to the subcommands ``sub``."""
    demo = sub.add_parser("demo", help="derive the symmetry of each architecture family, permute a network "
                          "by it and prove its function is unchanged",
                          description="For each built-in architecture family: derive its PermutationSpec "
                          "with torch.fx, print the table of permutation groups, permute a random network "
                          "by a random group element, and check (float64) that its outputs are unchanged "
                          "and that weights -> graph -> weights is exact. Exits 1 if any check fails.")
    demo.add_argument("networks", nargs="*", help=f"subset of: {', '.join(DEMO_NAMES)}")
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
    bench.add_argument("--root", default=DEFAULT_ZOO_ROOT,
                       help=f"folder holding built zoos (default {DEFAULT_ZOO_ROOT})")
    bench.add_argument("--methods", default="naive,wm,am,sinkhorn", help="comma-separated: naive, wm, am, "
                       "sinkhorn, ste, auto, auto@SECONDS (auto with that budget a pair), gnn, gnn+wm, "
                       "gnn+sinkhorn, gnn+ste (gnn: --aligner)")
    bench.add_argument("--aligner", default=None, help="a train.py run folder or a shipped aligner's name "
                       "(default: the shipped aligner when a gnn method or auto is asked for): adds it as methods "
                       "gnn, gnn+wm, gnn+sinkhorn, gnn+ste (its prediction refined by the optimiser) "
                       "and makes auto consider it")
    bench.add_argument("--pairs", type=int, default=100, help="number of test pairs (default 100)")
    bench.add_argument("--split", default="test", help="split the pairs come from: test (default) or heldout "
                       "(a zoo's held-out architectures)")
    bench.add_argument("--member", default=None, help="only pairs of this member (architecture) of the zoo")
    bench.add_argument("--seed", type=int, default=0, help="seed of the pairs and of the methods")
    bench.add_argument("--lambdas", type=int, default=25, help="points on the interpolation curve")
    bench.add_argument("--reset-bn", action="store_true", help="reset BatchNorm statistics of every "
                       "interpolated network on 512 training inputs before evaluating it")
    bench.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    bench.add_argument("--out", default=None, help=f"output folder (default {DEFAULT_RESULTS_ROOT}/bench-ZOO)")
    bench.add_argument("--json", action="store_true", help="print the summary as JSON")
    bench.set_defaults(func=_bench)
    warm = sub.add_parser("warmstart", help="barrier against Sinkhorn re-basin steps and WM sweeps, started "
                          "from the identity, from WM and from a trained aligner",
                          description="For fixed, seeded test pairs of a zoo: run Sinkhorn re-basin from the "
                          "identity, from weight matching's result and from the aligner's prediction, and "
                          "weight matching from the identity and from the prediction; score the decode at "
                          "each checkpoint by its test barrier. Writes warmstart.json, warmstart.md (with the "
                          "steps each start needs to reach WM's barrier) and warmstart.png.")
    _aligner_study_args(warm, pairs=20, out="warmstart")
    warm.add_argument("--seed", type=int, default=0, help="seed of the pairs and of the optimisers")
    warm.add_argument("--json", action="store_true", help="print the results as JSON")
    warm.set_defaults(func=_warmstart)
    speed = sub.add_parser("speed", help="seconds per pair and batched throughput of an aligner vs weight "
                           "matching", description="On fixed test pairs of a zoo: median seconds per pair of the "
                           "aligner (batch of one, graphs and Hungarian included) and of weight matching, and "
                           "pairs per second with batched predictions. Writes speed.json and speed.md.")
    _aligner_study_args(speed, pairs=200, out="speed")
    speed.add_argument("--batch", type=int, default=50, help="pairs per batched forward (default 50)")
    speed.set_defaults(func=_speed)
