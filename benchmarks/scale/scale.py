"""Scale curve: seconds and peak memory per pair of the learned aligner against weight matching, as the graph grows.

For every model (an architecture string of :func:`gnn_align.models.build_model`; by default MLPs
64→W→W→W→10 of widths 64 to 2048 and two VGG-style 2-D CNNs with up to 512 channels), the size of its
graph is read first from a copy built on the ``meta`` device (nothing allocated), and the memory the
aligner would need is estimated and compared with the available memory
(:func:`gnn_align.memory.check_aligner_memory`): a model that does not fit is skipped for ``gnn``
with that message, before anything is built. Otherwise two independently initialised networks are
built (``torch.manual_seed(seed)`` and ``seed + 1``) and aligned with ``gnn_align.align`` by each
method: ``gnn`` (the shipped pretrained aligner) and ``wm`` (weight matching). Per method: the
seconds the method took (``AlignResult.seconds``; median of ``--repeats`` runs below
``--repeat-below`` edges, else one run) and the peak resident memory above the level before the
call (:func:`gnn_align.memory.peak_memory`, highest over the runs).

Peaks are measured in this one process: before every call, freed memory is handed back to the OS
(``gc`` and glibc's ``malloc_trim``) and the kernel's peak counter is reset, so a call's peak does not
include what earlier calls allocated (checked against fresh processes: within 15%). Models run in
the order given (smallest first by default). ``align``'s warnings (a model outside the aligner's
training signature) are recorded, not shown. Writes ``results.json``, ``results.md`` and
``scale.png`` (log-log: edges against seconds and against peak MB) to ``--out``, atomically.

    python benchmarks/scale/scale.py --threads 1
    python benchmarks/scale/scale.py --models mlp:64,4096,4096,4096,10 --methods gnn --max-edges 50000000
"""

from __future__ import annotations

import argparse
import os
import statistics
import warnings

import torch
from tqdm.auto import tqdm

from gnn_align.aligner import load_aligner
from gnn_align.api import align
from gnn_align.io import DEFAULT_RESULTS_ROOT
from gnn_align.memory import (
    available_memory_mb,
    check_aligner_memory,
    estimate_aligner_memory_mb,
    graph_size,
    peak_memory,
)
from gnn_align.models import build_model, example_input
from gnn_align.pretrained import DEFAULT, coverage_problems, signature
from gnn_align.provenance import provenance
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.trace import spec_from_module

VGG5 = "cnn2d:3,64,128,256,512,512,10"
VGG16 = "cnn2d:3,64,64,128,128,256,256,256,512,512,512,512,512,512,10"  # VGG-16's 13 convs, no pooling
MODELS = [f"mlp:64,{w},{w},{w},10" for w in (64, 128, 256, 512, 1024, 2048)] + [VGG5, VGG16] \
    + ["mlp:64,8192,8192,8192,10"]  # 134M edges: shows the memory pre-check; never built
METHODS = ("gnn", "wm")


def model_size(arch: str) -> tuple:
    """``(GraphSize, spec, module)`` of ``arch`` built on the ``meta`` device: shapes without storage."""
    with torch.device("meta"):
        module = build_model(arch)
        spec = spec_from_module(module, example_input(module, 2))
    return graph_size(spec), spec, module


def measure(method: str, model_a, model_b, aligner, repeats: int) -> dict:
    """Align ``model_b`` to ``model_a`` ``repeats`` times with ``method``: median seconds, peak MB."""
    runs = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(repeats):
            with peak_memory() as mem:
                res = align(model_a, model_b, method=method, aligner=aligner)
            runs.append((res.seconds, mem.seconds, mem.increase_mb, mem.note))
    peaks = [r[2] for r in runs if r[2] is not None]
    return {"status": "ok", "seconds": statistics.median(r[0] for r in runs), "seconds_all": [r[0] for r in runs],
            "wall_seconds": statistics.median(r[1] for r in runs), "peak_mb": max(peaks) if peaks else None,
            "peak_note": runs[0][3], "warnings": sorted({str(w.message) for w in caught})}


def warm_up(aligner, methods: list) -> None:
    """Run every method once on a tiny pair, so that one-time lazy setup (imports, first BLAS and
    allocator work) is not counted in the first model's figures."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for arch in ("mlp:8,8,8,4", "cnn2d:2,4,4,3"):
            for method in methods:
                align(build_model(arch), build_model(arch), method=method, aligner=aligner)


def run_model(arch: str, args, aligner, bar) -> dict:
    """One row of the table: the graph's size, the memory verdict (against the memory available
    now) and every method's measurement."""
    size, spec, meta_module = model_size(arch)
    cfg, float_bytes = aligner.config, torch.get_default_dtype().itemsize  # the models' and the aligner's
    estimate = estimate_aligner_memory_mb(size.nodes, size.edges, cfg.edge_dim, cfg, group_widths=size.group_widths,
                                          params=size.params, float_bytes=float_bytes, edge_len=size.edge_len)
    available = available_memory_mb()
    verdict = check_aligner_memory(arch, size, cfg, available_mb=available, float_bytes=float_bytes,
                                   raise_error=False)
    row = {"model": arch, "nodes": size.nodes, "edges": size.edges, "params": size.params,
           "group_widths": list(size.group_widths), "gnn_estimate_mb": estimate, "available_mb": available,
           "memory_check": verdict or ("fits" if available is not None else "not checked (available memory unknown)"),
           "outside_training": coverage_problems(aligner.meta["trained_on"], signature(spec, meta_module)),
           "methods": {}}
    todo = []
    for method in args.methods:
        if method == "gnn" and verdict:
            row["methods"][method] = {"status": "skipped", "note": f"{verdict}: skipped"}
        elif size.edges > args.max_edges:
            row["methods"][method] = {"status": "skipped",
                                      "note": f"{size.edges:,} edges > --max-edges {args.max_edges:,}: not run"}
        else:
            todo.append(method)
    if todo:
        torch.manual_seed(args.seed)
        model_a = build_model(arch)
        torch.manual_seed(args.seed + 1)
        model_b = build_model(arch)
        repeats = args.repeats if size.edges < args.repeat_below else 1
        for method in todo:
            bar.set_description(f"{arch} {method}")
            row["methods"][method] = measure(method, model_a, model_b, aligner, repeats) | {"repeats": repeats}
            bar.update(1)
        del model_a, model_b
    bar.update(len(args.methods) - len(todo))
    return row


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}g}" if x < 10 ** digits else f"{x:.0f}"


def notes(row: dict) -> str:
    """The Markdown table's notes for a row: skips, and where the model lies outside the aligner's training."""
    out = [f"{m}: {r['note'].removeprefix(row['model'] + ': ')}" for m, r in row["methods"].items()
           if r["status"] == "skipped"]
    skipped_gnn = row["methods"].get("gnn", {}).get("status") == "skipped"
    if row["outside_training"] and not skipped_gnn:
        out.append("gnn outside training: " + "; ".join(row["outside_training"]))
    return "; ".join(out).replace("|", "/")


def to_markdown(res: dict) -> str:
    """The table of a scale run."""
    m = res["machine"]
    avail = "unknown memory" if m["available_mb"] is None else f"{m['available_mb'] / 1024:.1f} GB"
    lines = [(f"Scale curve: one pair of independently initialised networks per model (seeds {res['seed']} and "
             f"{res['seed'] + 1}); gnn = the shipped aligner `{res['aligner']}`; seconds = the method's own time "
             f"(median of {res['repeats']} below {res['repeat_below']:,} edges, else 1 run); peak MB = rise of "
             f"the peak RSS during the align call; est. = the pre-check's estimate for gnn. Machine: "
             f"{m['cpus']} CPU cores, torch threads {m['torch_threads']}, {avail} available at the start."), ""]
    rows = []
    for row in res["rows"]:
        cells = [f"`{row['model']}`", f"{row['nodes']:,}", f"{row['edges']:,}"]
        for method in METHODS:
            r = row["methods"].get(method, {})
            cells += [_fmt(r.get("seconds")), _fmt(r.get("peak_mb"))]
            if method == "gnn":
                cells.append(_fmt(row["gnn_estimate_mb"]))
        rows.append(cells + [notes(row)])
    lines.append(markdown_table(["model", "nodes", "edges", "gnn s/pair", "gnn peak MB", "gnn est. MB", "wm s/pair",
                                 "wm peak MB", "notes"], rows))
    ratios = estimate_ratios(res["rows"])
    if ratios:
        low, high = min(ratios.values()), max(ratios.values())
        lines += ["", f"gnn estimate / measured peak: {low:.2f} to {high:.2f} over the {len(ratios)} models measured."]
    return "\n".join(lines) + "\n"


def estimate_ratios(rows: list) -> dict:
    """Per model, the pre-check's estimate over the measured gnn peak, for the rows where gnn ran."""
    return {r["model"]: r["gnn_estimate_mb"] / r["methods"]["gnn"]["peak_mb"] for r in rows
            if r["methods"].get("gnn", {}).get("peak_mb")}


def plot(res: dict):
    """Two log-log panels, edges against seconds and against peak MB: one line per method and
    architecture family (colour: method; solid/dotted and marker: family), the gnn estimate as grey
    crosses: a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    rows = sorted(res["rows"], key=lambda r: r["edges"])
    families = list(dict.fromkeys(r["model"].split(":")[0] for r in rows))
    for color, method in zip(("C0", "C1"), METHODS, strict=True):
        for k, family in enumerate(families):
            done = [(r["edges"], r["methods"][method]) for r in rows if r["model"].split(":")[0] == family
                    and r["methods"].get(method, {}).get("status") == "ok"]
            for ax, key in zip(axes, ("seconds", "peak_mb"), strict=True):
                pts = [(e, m[key]) for e, m in done if m.get(key)]
                if pts:
                    ax.plot(*zip(*pts, strict=True), color=color, ls=("-", ":", "-.", "--")[k % 4],
                            marker="osD^"[k % 4], label=f"{method} ({family})")
    est = [(r["edges"], r["gnn_estimate_mb"]) for r in rows]
    axes[1].plot(*zip(*est, strict=True), ls="none", color="grey", marker="x", label="gnn estimate")
    if res["machine"]["available_mb"] is not None:
        axes[1].axhline(res["machine"]["available_mb"], color="red", lw=0.8, label="available at start")
    for ax, label in zip(axes, ("seconds per pair", "peak MB (rise of RSS)"), strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("edges of one network's graph")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"gnn (shipped aligner) vs weight matching, torch threads {res['machine']['torch_threads']}")
    fig.tight_layout()
    return fig


def main(argv: list | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=MODELS, metavar="ARCH",
                   help="architecture strings of build_model, e.g. mlp:64,512,512,512,10 (default: MLPs of "
                        "width 64-2048, two VGG-style CNNs, and one MLP too large to build)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of gnn,wm (default both)")
    p.add_argument("--max-edges", type=int, default=10_000_000,
                   help="models with more edges are not run (their memory pre-check is still reported)")
    p.add_argument("--repeats", type=int, default=3, help="runs per method for models below --repeat-below")
    p.add_argument("--repeat-below", type=int, default=1_000_000, help="edges below which --repeats are made")
    p.add_argument("--seed", type=int, default=0, help="model A is initialised with this seed, model B with seed+1")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", default=f"{DEFAULT_RESULTS_ROOT}/scale")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown or not args.methods:
        p.error(f"--methods: unknown {unknown or 'none given'}; choose from {', '.join(METHODS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    aligner = load_aligner(DEFAULT)
    warm_up(aligner, args.methods)
    available = available_memory_mb()
    rows = []
    with tqdm(total=len(args.models) * len(args.methods), desc="scale") as bar:
        for arch in args.models:
            rows.append(run_model(arch, args, aligner, bar))
    res = {"aligner": DEFAULT, "aligner_config": aligner.config.to_dict(), "seed": args.seed, "repeats": args.repeats,
           "repeat_below": args.repeat_below, "max_edges": args.max_edges, "methods": args.methods,
           "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "available_mb": available,
                       "torch": torch.__version__},
           "rows": rows, "gnn_estimate_over_measured": estimate_ratios(rows),
           "provenance": provenance(None if argv is None else [__file__, *argv], aligner=f"pretrained:{DEFAULT}",
                                    aligner_model=aligner)}
    md = to_markdown(res)
    write_report(args.out, "results", res, md, plot(res), figure_name="scale.png")
    print(md)
    return res


if __name__ == "__main__":
    main()
