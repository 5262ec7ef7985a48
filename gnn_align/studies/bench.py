"""The benchmark harness: align fixed, seeded test pairs of a zoo with several methods and score them.

For every pair (A, B) of networks drawn from the zoo's *test* split (same architecture) and every
method, the harness times the alignment (wall clock, one process), permutes B with the single
group action, evaluates the interpolation curve on the task's test data and computes the barrier
and AUC (both definitions, named), the accuracy barrier and the losses. Results are written
atomically as JSON, as a Markdown table and as a PNG of the mean curves (± std).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..archs import build_arch
from ..baselines import weight_matching
from ..graph import to_graph
from ..methods import METHODS, PairContext, has_method, lookup
from ..metrics import curve_metrics, input_batches, interpolation_curve
from ..permute import apply_permutation
from ..tasks import NETWORK_TASKS, loss_label, network_task
from ..zoo.dataset import ModelZoo
from ..zoo.pairs import independent_pairs
from ..zoo.storage import ZooError
from .report import curves_figure, markdown_table, write_report

METRICS = ("barrier_deepalign", "auc_deepalign", "barrier_rebasin", "acc_barrier", "loss_mid")


def pair_generator(seed: int, i: int, j: int) -> torch.Generator:
    """The random source a method gets for the pair ``(i, j)`` of a study seeded ``seed``: every study
    (benchmark, warm starts) gives a pair the same draws."""
    return torch.Generator().manual_seed(seed * 1_000_003 + i * 1009 + j)


def evaluate_alignment(module: torch.nn.Module, state_a: dict, state_b: dict, perm: dict, spec, task,
                       num_lambdas: int = 25, reset_bn: list | None = None) -> tuple:
    """Interpolate A and B aligned by ``perm`` on the task's test data: ``(curve_metrics, curve)``."""
    curve = interpolation_curve(module, state_a, apply_permutation(state_b, perm, spec), task.x_test, task.y_test,
                                loss=task.loss, num_lambdas=num_lambdas, reset_bn=reset_bn)
    return curve_metrics(curve), curve


@dataclass
class ZooPair:
    """One seeded pair of a zoo with what evaluating it needs: zoo-local indices ``i``, ``j``, the member
    index, the architecture (eval mode, shared by the member's pairs), its spec, A's task and both states."""

    i: int
    j: int
    member: int
    module: torch.nn.Module
    spec: object
    task: object
    a: dict
    b: dict


def zoo_pairs(zoo: ModelZoo, num_pairs: int, seed: int = 0, member: int | None = None,
              progress: bool = False, desc: str = "pairs") -> Iterator[ZooPair]:
    """The seeded pairs of :func:`~gnn_align.zoo.pairs.independent_pairs` (``torch.Generator`` seeded
    with ``seed``; of one member when ``member`` is given), each as a :class:`ZooPair`."""
    modules: dict = {}
    pairs = independent_pairs(zoo, num_pairs, torch.Generator().manual_seed(seed), member=member)
    for i, j in tqdm(pairs, desc=desc, disable=not progress):
        m = zoo.member_of(i)
        if m not in modules:
            modules[m] = build_arch(zoo.members[m]["arch"]).eval()
        yield ZooPair(i, j, m, modules[m], zoo.spec(m), network_task(zoo, i), zoo.state_dict(i), zoo.state_dict(j))


def run_benchmark(zoo_dir: str | Path, methods: list, num_pairs: int = 100, seed: int = 0,
                  num_lambdas: int = 25, reset_bn: bool = False, progress: bool = True, split: str = "test",
                  member: str | None = None, table=METHODS) -> dict:
    """Benchmark ``methods`` (names in ``table``: the registry, or a :func:`~gnn_align.methods.method_table`
    with learned aligners) on ``num_pairs`` pairs of the zoo at ``zoo_dir``; returns the results.

    Pairs come from ``split`` (``test``; ``heldout`` for a zoo's held-out architectures), of every
    member or only of the member named ``member``."""
    unknown = [m for m in methods if not has_method(table, m)]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(table)}")
    zoo = ModelZoo(str(zoo_dir), split=split, log=False)
    unsupported = sorted({str(m.get("task")) for m in zoo.members} - set(NETWORK_TASKS))
    if unsupported:
        raise ZooError(f"{zoo_dir}: the benchmark does not support task(s) {unsupported}; "
                       f"supported: {list(NETWORK_TASKS)}")
    rows = {m: [] for m in methods}
    run = {m: lookup(table, m) for m in methods}
    losses, count = set(), 0
    for p in zoo_pairs(zoo, num_pairs, seed, None if member is None else zoo.member_index(member), progress,
                       "benchmark pairs"):
        i, j, task, module, spec, a, b = p.i, p.j, p.task, p.module, p.spec, p.a, p.b  # j: A's task
        losses.add(task.loss)
        count += 1
        bn = input_batches(task.x_train) if reset_bn else None
        for name in methods:
            ctx = PairContext(module, spec, a, b, task.x_train, task.y_train, task.loss, pair_generator(seed, i, j))
            t0 = time.perf_counter()
            perm = run[name](ctx)
            seconds = time.perf_counter() - t0
            metrics, curve = evaluate_alignment(module, a, b, perm, spec, task, num_lambdas, bn)
            kept = {"kept": ctx.info["kept"]} if "kept" in ctx.info else {}  # refiners and auto
            rows[name].append(dict(metrics, seconds=seconds, pair=[zoo.network_ids[i],
                                   zoo.network_ids[j]], curve=curve["loss"], **kept))
    return {"zoo": zoo.manifest["name"], "zoo_version": zoo.manifest["version"], "split": split, "member": member,
            "pairs": count, "seed": seed, "num_lambdas": num_lambdas, "bn_reset": reset_bn,
            "loss": "+".join(sorted(losses)),
            "torch_threads": torch.get_num_threads(), "methods": {m: _summary(rows[m], run[m].needs)
                                                                   for m in methods}}


def _summary(rows: list, data: str) -> dict:
    out = {"data": data, "median_seconds": statistics.median(r["seconds"] for r in rows)}
    kept = [r["kept"] for r in rows if "kept" in r]
    if kept:  # how often each answer was kept, by a refiner's acceptance test or auto's choice
        out["kept"] = {k: kept.count(k) for k in sorted(set(kept))}
    for k in METRICS:
        vals = [r[k] for r in rows if k in r]
        if vals:
            out[k] = {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals)}
    curves = torch.tensor([r["curve"] for r in rows], dtype=torch.float64)
    out["curve_mean"], out["curve_std"] = curves.mean(0).tolist(), curves.std(0, unbiased=False).tolist()
    out["per_pair"] = [{k: v for k, v in r.items() if k != "curve"} for r in rows]
    return out


def to_markdown(res: dict) -> str:
    """The Markdown report of a :func:`run_benchmark` result: what was run, then one row per method."""
    head = ["method"] + [f"{k} (mean ± std)" for k in METRICS] + ["median s/pair", "data used", "kept (pairs)"]
    intro = (f"**{res['zoo']}**" + (f" / {res['member']}" if res.get("member") else "")
             + f" v{res['zoo_version']}: {res['pairs']} {res.get('split', 'test')} pairs (seed {res['seed']}), "
             f"{res['num_lambdas']} λ, test {loss_label(res.get('loss', 'ce'))}; torch threads {res['torch_threads']}"
             + ("; BatchNorm statistics reset on 512 training inputs per interpolated network"
                if res["bn_reset"] else ""))
    rows = []
    for name, s in res["methods"].items():
        cells = [name] + [f"{s[k]['mean']:.4f} ± {s[k]['std']:.4f}" if k in s else "–" for k in METRICS]
        kept = ", ".join(f"{k} {n}" for k, n in s.get("kept", {}).items()) or "–"
        rows.append(cells + [f"{s['median_seconds'] * 1000:.1f} ms", s["data"], kept])
    return f"{intro}\n\n{markdown_table(head, rows)}\n"


def write_results(res: dict, out_dir: str | Path) -> list:
    """Write ``results.json``, ``results.md`` and ``curves.png`` atomically; returns the paths."""
    lams = torch.linspace(0, 1, res["num_lambdas"]).tolist()
    fig = curves_figure(lams, {n: (s["curve_mean"], s["curve_std"]) for n, s in res["methods"].items()},
                        "test loss", f"{res['zoo']}: {res['pairs']} test pairs")
    return write_report(out_dir, "results", res, to_markdown(res), fig, figure_name="curves.png")


def dumps(res: dict) -> str:
    """A benchmark result as indented JSON, without the per-pair values and the mean curves."""
    return json.dumps({k: v for k, v in res.items() if k != "methods"} | {
        "methods": {m: {k: v for k, v in s.items() if k not in ("per_pair", "curve_mean", "curve_std")}
                    for m, s in res["methods"].items()}}, indent=1)


def speed_comparison(zoo_dir: str | Path, aligner, num_pairs: int = 200, batch_size: int = 50,
                     seed: int = 0, repeats: int = 3) -> dict:
    """Wall-clock cost of the aligner against weight matching on the same test pairs.

    Per pair (batch of one: graphs built, one forward, Hungarian) gives the median seconds; the
    batched figure predicts ``batch_size`` pairs per forward (graph building included) and is
    reported as pairs per second (the median of ``repeats`` passes over all pairs, after one untimed
    batch: the first forward at a new size pays for allocations that later ones reuse), next to
    weight matching's pairs per second run one after another.
    """
    zoo = ModelZoo(str(zoo_dir), split="test", log=False)
    pairs = independent_pairs(zoo, num_pairs, torch.Generator().manual_seed(seed))
    states = [(zoo.state_dict(i), zoo.state_dict(j), zoo.spec(zoo.member_of(i))) for i, j in pairs]
    d = aligner.config.edge_dim
    single, wm = [], []
    for k, (a, b, spec) in enumerate(states):
        t0 = time.perf_counter()
        aligner.align(a, b, spec)
        single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        weight_matching(a, b, spec, generator=torch.Generator().manual_seed(k))
        wm.append(time.perf_counter() - t0)
    def predict_all(chunks: list) -> float:
        t0 = time.perf_counter()
        for chunk in chunks:
            aligner.predict([to_graph(a, sp, edge_dim=d) for a, _, sp in chunk],
                            [to_graph(b, sp, edge_dim=d) for _, b, sp in chunk], [sp for _, _, sp in chunk])
        return time.perf_counter() - t0

    chunks = [states[s:s + batch_size] for s in range(0, len(states), batch_size)]
    predict_all(chunks[:1])
    batched = statistics.median(predict_all(chunks) for _ in range(repeats))
    return {"zoo": zoo.manifest["name"], "pairs": len(pairs), "batch_size": batch_size, "batched_repeats": repeats,
            "torch_threads": torch.get_num_threads(),
            "gnn_median_seconds": statistics.median(single), "wm_median_seconds": statistics.median(wm),
            "gnn_batched_pairs_per_second": len(states) / batched, "wm_pairs_per_second": len(states) / sum(wm),
            "gnn_single_pairs_per_second": len(states) / sum(single)}


def speed_markdown(res: dict) -> str:
    """The table of a :func:`speed_comparison` result."""
    rows = [["wm", f"{res['wm_median_seconds'] * 1000:.1f} ms", f"{res['wm_pairs_per_second']:.1f}"],
            ["gnn, batch 1", f"{res['gnn_median_seconds'] * 1000:.1f} ms", f"{res['gnn_single_pairs_per_second']:.1f}"],
            [f"gnn, batch {res['batch_size']}", "–", f"{res['gnn_batched_pairs_per_second']:.1f}"]]
    warm = (f"; batched pairs/s: the median of {res['batched_repeats']} passes after one untimed batch"
            if "batched_repeats" in res else "")
    return (f"**{res['zoo']}**: {res['pairs']} test pairs, torch threads {res['torch_threads']}{warm}\n\n"
            + markdown_table(["method", "median s/pair (batch 1)", "pairs/s"], rows) + "\n")
