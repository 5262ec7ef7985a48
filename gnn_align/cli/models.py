"""``gnn-align inspect | align | merge | eval``: work on model files.

Model files are safetensors or ``.pt``/``.pth`` state dicts (read with ``weights_only=True``); the
architecture comes from ``--model`` (see :mod:`gnn_align.models`). Every check runs before anything
is written, and outputs are written atomically.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path

from ..errors import GNNAlignError
from ..io import DEFAULT_RESULTS_ROOT
from .data import DATA_SUFFIXES, check_fits, load_data
from .jsonout import dumps_json, strict

# torch and the library are imported inside the commands: `gnn-align --help` and argument errors must not
# wait for them. The default of --budget is the library's (gnn_align.refine.AUTO_BUDGET; a test checks it).
AUTO_BUDGET = None
MODEL_HELP = ("architecture: mlp:IN,H1,..,OUT | mlp-ln:... | resmlp:IN,WIDTH,BLOCKS,OUT | "
              "cnn1d/cnn2d:CIN,C1,..,CLASSES | resnet1d/resnet2d:CIN,STEM,C1,..,CLASSES | a JSON object "
              "{\"family\": ...} | package.module:factory")
DATA_HELP = ("a built-in task (digits, digits-2d, mnist1d, mnist1d-1d, ...): its training inputs feed am/sinkhorn and "
             "BatchNorm resets, its test split the evaluation; or your own data file "
             f"({'/'.join(DATA_SUFFIXES)}: inputs x, optionally labels y; see `gnn-align eval --help`)")
DATA_FILES_HELP = ("Data files: .npy (inputs only), .npz (arrays x and optionally y), .pt/.pth (read with "
                   "weights_only=True: a tensor of inputs, an (x, y) pair or a dict with x and y), .safetensors "
                   "(tensors x and optionally y), .csv (numbers; a column named label or y holds the labels). "
                   "A data file is used whole: for am/sinkhorn/ste/auto, BatchNorm resets and the evaluation.")


def _load(args, paths: list, data_name: str | None = None) -> tuple:
    """The architecture, the model files (each checked against it) and the ``--data`` (checked
    against it too), in that order: nothing is computed on a file that does not fit."""
    from ..models import build_model, check_state, load_state_file

    module = build_model(args.model)
    states = []
    for p in paths:
        s = load_state_file(p)
        check_state(module, s, str(p))
        states.append(s)
    data = None
    if data_name is not None:
        data = load_data(data_name)
        check_fits(module, data, args.model)
    return module, states, data


def _aligner(spec: str | None):
    if spec is None:
        return None
    from ..aligner import load_aligner

    return load_aligner(spec)


def _data(task):
    if task is None:
        return None
    return task.x_train if task.y_train is None else (task.x_train, task.y_train)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _out_ok(path: str, inputs: list = (), force: bool = False) -> Path:
    """Check ``-o`` before any work: a model file name that is not an input (unless ``force``) and
    not a directory, in a folder this process can write to (probed with a temporary file)."""
    out = Path(path)
    if out.suffix not in (".safetensors", ".pt", ".pth"):
        raise GNNAlignError(f"-o {out}: use a .safetensors, .pt or .pth file name")
    if out.is_dir():
        raise GNNAlignError(f"-o {out}: is a directory; name a file (.safetensors, .pt or .pth) to write")
    for i, p in enumerate(inputs):
        if _same_file(out, Path(p)) and not force:
            which = "the reference model A" if i == 0 else "an input model file"
            raise GNNAlignError(f"-o {out}: is {which} ({p}); refusing to overwrite an input (write to another "
                                "file, or pass --force)")
    return _writable(out, f"-o {out}")


def _writable(out: Path, label: str) -> Path:
    """Check that ``out`` can be written (its nearest existing folder takes a temporary file)."""
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise GNNAlignError(f"{label}: {folder} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".gnn-align-probe.", suffix=".tmp")
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise GNNAlignError(f"{label}: cannot write to {folder} ({(e.strerror or str(e)).lower()})") from None
    return out


def _weights(text: str | None, n: int) -> list | None:
    """``--weights`` as ``n`` finite, non-negative floats with a positive sum (checked before any work)."""
    if text is None:
        return None
    parts = [w.strip() for w in text.split(",")]
    vals = []
    for w in parts:
        try:
            v = float(w)
        except ValueError:
            raise GNNAlignError(f"--weights {text}: '{w}' is not a number") from None
        if not math.isfinite(v) or v < 0:
            raise GNNAlignError(f"--weights {text}: '{w}' is not a finite non-negative number")
        vals.append(v)
    if len(vals) != n:
        raise GNNAlignError(f"--weights {text}: {len(vals)} weights for {n} model files")
    if sum(vals) <= 0:
        raise GNNAlignError(f"--weights {text}: the weights must have a positive sum")
    return vals


def _budget(args) -> dict:
    """``auto``'s budget and weight matching's caps, where given on the command line."""
    out = {} if args.budget is None else {"budget": args.budget}
    return out | {k: getattr(args, k) for k in ("max_sweeps", "time_limit") if getattr(args, k, None) is not None}


def _inspect(args) -> dict:
    import torch

    from ..models import build_model, check_state, example_input, load_state_file
    from ..trace import spec_from_module

    module = build_model(args.model)
    if args.file:
        check_state(module, load_state_file(args.file), args.file)

    spec = spec_from_module(module, example_input(module, generator=torch.Generator().manual_seed(0)))
    graph = dict(spec.graph_spec.group_sizes)  # attention: the flat view a learned aligner reads
    if not args.json:
        print(spec.describe())
        if spec.flat is not None:
            print("graph groups (flat view, read by learned aligners): "
                  + ", ".join(f"{g} {n}" for g, n in graph.items()))
    return {"model": args.model, "file": args.file, "groups": dict(spec.group_sizes), "graph_groups": graph,
            "parameters": sum(p.numel() for p in module.parameters())}


def _align(args) -> dict:
    from ..api import align
    from ..models import save_state_file

    out = _out_ok(args.output, [args.a, args.b], args.force)
    module, (a, b), task = _load(args, [args.a, args.b], args.data)
    res = align(a, b, args.method, aligner=_aligner(args.aligner), data=_data(task), module=module,
                loss=task.loss if task else "ce", seed=args.seed, **_budget(args))
    dist = lambda s: float(sum(((a[k] - s[k]).double() ** 2).sum() for k in a if a[k].is_floating_point())) ** 0.5
    info = res.summary() | {"a": args.a, "b": args.b, "output": str(out), "distance_before": dist(b),
                            "distance_after": dist(res.state)}
    save_state_file(res.state, out)
    if not args.json:
        print(f"aligned {args.b} to {args.a} with {args.method} in {res.seconds:.3f} s\n"
              f"  weight distance |A - B|: {info['distance_before']:.4f} -> {info['distance_after']:.4f}\n"
              f"  function check: max |B(x) - aligned B(x)| = {res.max_abs_diff:.2e}\n  written: {out}")
        _print_outcome(res.info)
        if res.info.get("stopped"):
            print(f"  weight matching stopped by --{res.info['stopped'].replace('_', '-')} after "
                  f"{res.info.get('wm_sweeps', '?')} sweeps (not converged)")
    return info


def _print_outcome(info: dict) -> None:
    """The candidates a refining method or ``auto`` scored, and which it kept."""
    if info.get("scores"):
        from ..studies.report import markdown_table

        rows = [[name + (" (kept)" if name == info["kept"] else ""), f"{score:.4f}",
                 f"{info['seconds'].get(name, float('nan')):.3f}"] for name, score in info["scores"].items()]
        print(markdown_table(["candidate", "midpoint loss (held out)", "seconds"], rows))
    elif info.get("kept"):
        print(f"  kept: {info['kept']}" + (f" ({info['note']})" if info.get("note") else ""))


def _merge(args) -> dict:
    from ..api import merge
    from ..metrics import accuracy
    from ..models import save_state_file

    out = _out_ok(args.output, args.models, args.force)
    if len(args.models) < 2:
        raise GNNAlignError(f"merge needs at least 2 model files, got {len(args.models)}")
    weights = _weights(args.weights, len(args.models))
    module, states, task = _load(args, args.models, args.data)
    res = merge(states, weights, args.method, _data(task), aligner=_aligner(args.aligner), module=module,
                many=args.many, loss=task.loss if task else "ce", seed=args.seed, progress=not args.json,
                **_budget(args))
    aligned = args.models if args.many != "reference" else args.models[1:]
    info = {"models": args.models, "method": args.method, "many": args.many, "output": str(out),
            "bn_reset": res.bn_reset, "seconds": sum(r.seconds for r in res.alignments),
            "alignments": [dict(model=p, **r.info) for p, r in zip(aligned, res.alignments, strict=True) if r.info]}
    if task is not None and task.loss == "ce" and task.y_test is not None:
        naive = merge(states, weights, "naive", _data(task), module=module).state  # same BatchNorm reset
        acc = lambda s: accuracy(module, s, task.x_test, task.y_test)
        info |= {"test_accuracy": {"models": [acc(s) for s in states], "naive_average": acc(naive),
                                   "aligned_average": acc(res.state)}}
    save_state_file(res.state, out)
    if not args.json:
        print(f"merged {len(states)} models ({args.method}, {info['seconds']:.2f} s aligning) -> {out}")
        stopped = [r.info["stopped"] for r in res.alignments if r.info.get("stopped")]
        if stopped:
            print(f"  weight matching stopped by --{stopped[0].replace('_', '-')} (not converged) in "
                  f"{len(stopped)} of {len(res.alignments)} alignments")
        if "test_accuracy" in info:
            from ..studies.report import markdown_table

            t = info["test_accuracy"]
            rows = [[p, f"{acc:.4f}"] for p, acc in zip(args.models, t["models"], strict=True)]
            rows += [["naive average", f"{t['naive_average']:.4f}"], ["aligned average", f"{t['aligned_average']:.4f}"]]
            print(markdown_table(["model", "test accuracy"], rows))
    return info


def _eval(args) -> dict:
    from ..metrics import curve_metrics, interpolation_curve
    from ..studies.report import curves_figure, markdown_table, write_report

    if args.lambdas < 2:
        raise GNNAlignError(f"--lambdas {args.lambdas}: must be at least 2")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise GNNAlignError(f"--out {out}: is a file; name a folder")
    _writable(out / "curve.json", f"--out {out}")
    methods = [m.strip() for m in (args.align or "naive").split(",") if m.strip()] or ["naive"]
    module, (a, b), task = _load(args, [args.a, args.b], args.data)
    if task.y_test is None:
        raise GNNAlignError(f"--data {args.data}: has no labels (y); eval needs inputs and labels")
    curves = {}
    for m in methods:  # every method's alignment first: a bad name fails before anything is written
        aligned = b
        if m != "naive":
            from ..api import align

            aligned = align(a, b, m, aligner=_aligner(args.aligner), data=_data(task), module=module,
                            loss=task.loss, seed=args.seed).state
        curves[m] = interpolation_curve(module, a, aligned, task.x_test, task.y_test, loss=task.loss,
                                        num_lambdas=args.lambdas)
    first = curves[methods[0]]
    per = {m: curve_metrics(c) | {"curve": c} for m, c in curves.items()}
    info = {"a": args.a, "b": args.b, "aligned_with": args.align, "data": args.data} | per[methods[0]] | {
        "methods": per}
    rows = [[f"{lam:.3f}"] + [f"{curves[m]['loss'][k]:.4f}" for m in methods]
            + ([f"{first['acc'][k]:.4f}"] if len(methods) == 1 and "acc" in first else [])
            for k, lam in enumerate(first["lambdas"])]
    head = ["λ"] + [f"test loss ({m})" for m in methods] + (["test accuracy"] if len(methods) == 1 and "acc" in first
                                                            else [])
    md = markdown_table(head, rows) + "\n\n" + "\n".join(
        f"barrier (Deep-Align), {m}: {per[m]['barrier_deepalign']:.4f}" for m in methods) + "\n"
    fig = curves_figure(first["lambdas"], {m: (curves[m]["loss"], None) for m in methods}, f"test loss ({task.loss})",
                        f"{Path(args.a).name} → {Path(args.b).name}",
                        "λ  (0: A, 1: B aligned)" if methods != ["naive"] else "λ  (0: A, 1: B)")
    write_report(out, "curve", strict(info), md, fig)  # strict JSON, as the CLI prints it
    if not args.json:
        print(md + f"written: {out / 'curve.json'}, {out / 'curve.md'}, {out / 'curve.png'}")
    return info


def _common(p: argparse.ArgumentParser, methods: bool = True, output: bool = False) -> None:
    if output:
        p.add_argument("-o", "--output", required=True, help="output file (.safetensors, .pt or .pth); never one of "
                       "the input files unless --force")
        p.add_argument("--force", action="store_true", help="allow -o to name an input file (it is replaced)")
        p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--model", required=True, help=MODEL_HELP)
    if methods:
        p.add_argument("--method", default="auto", help="auto (default: with --data, the best of gnn, wm, am and "
                       "gnn+wm on held-out data, refined; without, gnn), gnn (the pretrained aligner), "
                       "wm, am, sinkhorn, ste, gnn+wm, gnn+sinkhorn, gnn+ste (am, sinkhorn and ste need --data)")
        p.add_argument("--budget", type=float, default=AUTO_BUDGET, help="seconds auto may spend per pair, "
                       "refining from further starts until they are spent (default: the fixed plan, the best "
                       "candidate refined once by each refiner: the same answer on any machine)")
        p.add_argument("--aligner", default=None, help="a train.py run folder or the name of a shipped aligner "
                       "(default: the shipped one)")
        p.add_argument("--max-sweeps", type=int, default=None, metavar="N", help="weight matching (wm, gnn+wm, "
                       "auto's candidates) stops after N sweeps (default 100); the result says when this stopped it")
        p.add_argument("--time-limit", type=float, default=None, metavar="S", help="weight matching starts no new "
                       "assignment after S seconds (default: none); the result says when this stopped it")
        p.add_argument("--seed", type=int, default=0, help="seed of the method's random choices")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")


def add_parsers(sub) -> None:
    """Add inspect, align, merge and eval to the subcommands ``sub``."""
    p = sub.add_parser("inspect", help="print the permutation groups of a model",
                       description="Derive the permutation symmetry of an architecture (torch.fx) and print the "
                       "table of its groups and the tensors each acts on. With a model file, check that it fits.")
    p.add_argument("file", nargs="?", default=None, help="a model file to check against the architecture")
    _common(p, methods=False)
    p.set_defaults(run=_inspect)
    p = sub.add_parser("align", help="write model B aligned to model A",
                       description="Find the permutation of B's hidden neurons that best matches A, check that "
                       "the permuted B computes exactly what B computes, and write it (atomically) to -o.")
    p.add_argument("a", help="model file A (the reference)")
    p.add_argument("b", help="model file B (the one permuted)")
    _common(p, output=True)
    p.set_defaults(run=_align)
    p = sub.add_parser("merge", help="align models to the first (or to a shared frame) and average them",
                       description="Align every model to the first one, average them (optionally weighted) and "
                       "write the result. With --data: BatchNorm statistics are recomputed, and the test accuracy "
                       "of each model, of the naive average and of the aligned average is printed.")
    p.add_argument("models", nargs="+", help="model files (the first is the reference)")
    p.add_argument("--weights", default=None, help="comma-separated averaging weights (default equal)")
    p.add_argument("--many", default="reference", choices=["reference", "mergemany", "sync"],
                   help="reference (default: align every model to the first), mergemany (Git Re-Basin's MergeMany "
                   "from the method's alignments to the first; with gnn the aligner matches each model to the "
                   "average of the others) or sync (cycle-consistent synchronisation of every pair's alignment)")
    _common(p, output=True)
    p.set_defaults(run=_merge)
    p = sub.add_parser("eval", help="interpolation curve of two models: table + PNG",
                       description="Evaluate (1-λ)·A + λ·B on the test split of --data (a data file: all of it; "
                       "it needs labels) for evenly spaced λ, optionally after aligning B to A (--align METHOD, or "
                       "several methods compared in one table and one plot: --align naive,wm,gnn). "
                       "Writes curve.json, curve.md and curve.png to --out and prints the table and the barrier. "
                       + DATA_FILES_HELP)
    p.add_argument("a", help="model file A")
    p.add_argument("b", help="model file B")
    p.add_argument("--data", required=True, help=DATA_HELP)
    p.add_argument("--align", default=None, help="align B to A first with this method, or compare several: "
                   "comma-separated, e.g. naive,wm,gnn (naive: no alignment; the default)")
    p.add_argument("--aligner", default=None, help="a train.py run folder or a shipped aligner's name")
    p.add_argument("--seed", type=int, default=0, help="seed of the method's random choices")
    p.add_argument("--lambdas", type=int, default=11, help="points on the curve (default 11)")
    p.add_argument("--out", default=f"{DEFAULT_RESULTS_ROOT}/eval",
                   help=f"output folder (default {DEFAULT_RESULTS_ROOT}/eval)")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    p.set_defaults(run=_eval)


def run(args) -> int:
    """Run a model command (``args.run``), printing its result as JSON with ``--json``; exit status 0."""
    info = args.run(args)
    if args.json:
        print(dumps_json(info))
    return 0
