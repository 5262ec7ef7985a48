"""Populations of models: retrieval, meaning and cost of aligned distances, and many-model merging.

On a zoo's test split (issue 20's acceptance, every number from fixed seeds):

* retrieval: a permuted and augmented copy (``planted_pair``: noise 0.01, dropout 0.05, rescaling
  0.9-1.1, quantile dropout up to 0.1) of each of ``--queries`` networks is searched among the
  split's originals; hit when its nearest neighbour is the network it was made from;
* meaning: Spearman correlation, over ``--pairs`` independent test pairs, between a distance and
  the loss barrier (on the test inputs) after the same alignment (gnn, wm, and raw weights with no
  alignment): the weight distance, and the midpoint disagreement on the first 1024 *training* inputs
  (no labels; :func:`gnn_align.metrics.midpoint_disagreement`);
* scale: the wall and CPU time of the full distance matrix of the split with gnn, and weight
  matching's time projected from ``--wm-sample`` pairs;
* many-model merging: ``--groups`` groups of 8 networks merged with no data: naive average,
  reference-based (gnn, to model 0), MergeMany (from gnn), synchronised gnn alignments, and Git
  Re-Basin's MergeMany from the identity; test accuracy and the barrier of every model to the
  merged centre.

    python benchmarks/population/population.py --zoo digits-mlp --out benchmarks/population
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from gnn_align.api import merge
from gnn_align.archs import build_arch
from gnn_align.metrics import accuracy, barrier, interpolation_curve, midpoint_disagreement
from gnn_align.permute import apply_permutation, identity_permutation
from gnn_align.population import distance, distances_to, pairwise
from gnn_align.pretrained import load_pretrained
from gnn_align.provenance import provenance
from gnn_align.runtime import keep_freed_memory
from gnn_align.studies.report import markdown_table, write_report
from gnn_align.tasks import network_task
from gnn_align.trace import spec_from_module
from gnn_align.zoo import ModelZoo, independent_pairs, planted_pair


def retrieval(zoo, net, aligner, queries: int, wm_queries: int, seed: int) -> dict:
    n = len(zoo)
    gen = torch.Generator().manual_seed(seed)
    picked = torch.randperm(n, generator=gen)[:queries].tolist()
    copies = [planted_pair(zoo, i, gen).b for i in picked]
    originals = [zoo.state_dict(i) for i in range(n)]
    out = {"gallery": n, "queries": queries}
    t0 = time.perf_counter()
    m = distances_to(copies, originals, "gnn", aligner=aligner, module=net, progress=True)
    hit = lambda d, k: int(torch.argmin(d).item()) == picked[k]
    out["gnn"] = {"hits": sum(hit(m.weight[k], k) for k in range(queries)), "of": queries,
                  "seconds": time.perf_counter() - t0}
    out["raw"] = {"hits": sum(hit(m.raw[k], k) for k in range(queries)), "of": queries}
    t0 = time.perf_counter()
    w = distances_to(copies[:wm_queries], originals, "wm", module=net, progress=True)
    out["wm"] = {"hits": sum(hit(w.weight[k], k) for k in range(wm_queries)), "of": wm_queries,
                 "seconds": time.perf_counter() - t0}
    return out


def _pairs_among(indices: list, num_pairs: int, seed: int) -> list:
    """``num_pairs`` distinct seeded pairs of distinct networks among ``indices``."""
    gen, pairs = torch.Generator().manual_seed(seed), set()
    while len(pairs) < num_pairs:
        i, j = torch.randperm(len(indices), generator=gen)[:2].tolist()
        pairs.add((indices[min(i, j)], indices[max(i, j)]))
    return sorted(pairs)


def meaning(zoo, net, aligner, num_pairs: int, seed: int, indices: list | None = None) -> dict:
    task = network_task(zoo, 0 if indices is None else indices[0])
    data = (task.x_test, task.y_test)
    unlabelled = task.x_train[:1024]
    spec = spec_from_module(net, unlabelled[:2])
    rows = []
    pairs = (independent_pairs(zoo, num_pairs, torch.Generator().manual_seed(seed)) if indices is None
             else _pairs_among(indices, num_pairs, seed))
    for i, j in tqdm(pairs, desc="pairs"):
        a, b = zoo.state_dict(i), zoo.state_dict(j)
        g = distance(a, b, "gnn", data, aligner=aligner, module=net)
        w = distance(a, b, "wm", data, module=net)
        raw_bar = barrier(interpolation_curve(net, a, b, *data, task.loss, 11)["loss"])
        mids = {k: midpoint_disagreement(net, a, apply_permutation(b, p, spec), unlabelled, task.loss)
                for k, p in (("gnn", g.perm), ("wm", w.perm), ("raw", identity_permutation(spec)))}
        rows.append({"gnn": (g.weight, mids["gnn"], g.barrier), "wm": (w.weight, mids["wm"], w.barrier),
                     "raw": (g.raw, mids["raw"], raw_bar)})
    out = {"pairs": num_pairs}
    for k in ("gnn", "wm", "raw"):
        d, mid, bar = zip(*(r[k] for r in rows), strict=True)
        out[k] = {"spearman": float(spearmanr(d, bar).statistic), "mean_distance": statistics.fmean(d),
                  "mean_barrier": statistics.fmean(bar), "midpoint_spearman": float(spearmanr(mid, bar).statistic),
                  "mean_midpoint": statistics.fmean(mid)}
    return out


def scale(zoo, net, aligner, wm_sample: int, seed: int) -> dict:
    states = [zoo.state_dict(i) for i in range(len(zoo))]
    n = len(states)
    c0, t0 = time.process_time(), time.perf_counter()
    pairwise(states, "gnn", aligner=aligner, module=net)
    out = {"networks": n, "pairs": n * (n - 1) // 2,
           "gnn": {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}}
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randperm(n, generator=gen)[:wm_sample + 1].tolist()
    c0, t0 = time.process_time(), time.perf_counter()
    distances_to([states[sample[0]]], [states[k] for k in sample[1:]], "wm", module=net)
    per_pair = (time.perf_counter() - t0) / wm_sample
    out["wm"] = {"sample_pairs": wm_sample, "seconds_per_pair": per_pair,
                 "projected_seconds": per_pair * out["pairs"],
                 "projected_cpu_seconds": (time.process_time() - c0) / wm_sample * out["pairs"]}
    return out


def merging(zoo, net, aligner, groups: int, size: int, seed: int) -> dict:
    task = network_task(zoo, 0)
    gen = torch.Generator().manual_seed(seed)
    variants = {"reference (gnn)": ("gnn", "reference"), "MergeMany from gnn": ("gnn", "mergemany"),
                "sync of gnn": ("gnn", "sync"), "MergeMany from identity (wm)": ("wm", "mergemany")}
    rows = {"naive": [], **{v: [] for v in variants}}
    members = []
    for _ in tqdm(range(groups), desc="groups"):
        idx = torch.randperm(len(zoo), generator=gen)[:size].tolist()
        states = [zoo.state_dict(i) for i in idx]
        members.append([zoo.network_ids[i] for i in idx])
        naive = {k: sum(s[k] for s in states) / size for k in states[0]}
        rows["naive"].append({"acc": accuracy(net, naive, task.x_test, task.y_test),
                              "barriers": [barrier(interpolation_curve(net, s, naive, task.x_test, task.y_test,
                                                                        task.loss, 11)["loss"]) for s in states]})
        for name, (method, many) in variants.items():
            t0 = time.perf_counter()
            res = merge(states, method=method, many=many, aligner=aligner, module=net)
            seconds = time.perf_counter() - t0
            if many == "reference":
                moved = [states[0]] + [r.state for r in res.alignments]
            else:
                moved = [r.state for r in res.alignments]
            bars = [barrier(interpolation_curve(net, s, res.state, task.x_test, task.y_test, task.loss, 11)["loss"])
                    for s in moved]
            rows[name].append({"acc": accuracy(net, res.state, task.x_test, task.y_test), "barriers": bars,
                               "seconds": seconds})
    models_acc = statistics.fmean(accuracy(net, zoo.state_dict(zoo.network_ids.index(i)), task.x_test, task.y_test)
                                  for g in members for i in g)
    summary = {name: {"acc_mean": statistics.fmean(r["acc"] for r in rs), "acc": [r["acc"] for r in rs],
                      "barrier_to_centre_mean": statistics.fmean(b for r in rs for b in r["barriers"]),
                      "barrier_to_centre_max": max(b for r in rs for b in r["barriers"]),
                      "seconds_mean": statistics.fmean(r.get("seconds", 0.0) for r in rs)}
               for name, rs in rows.items()}
    return {"groups": groups, "size": size, "members": members, "models_acc_mean": models_acc, "methods": summary}


def _opt(row: dict, key: str, fmt: str) -> str:
    return format(row[key], fmt) if key in row else "–"


def markdown(res: dict) -> str:
    lines = [f"# Populations of `{res['zoo']}` (test split, shipped aligner `{res['aligner']}`)", "",
             f"`{res['provenance']['command']}`"]
    if "retrieval" in res:
        r = res["retrieval"]
        head = (f"Retrieval: a permuted, augmented copy of each of {r['queries']} networks among the "
                f"{r['gallery']} originals; nearest neighbour is the original:")
        lines += ["", head, "",
                  markdown_table(["distance", "hits", "seconds"],
                                 [[k, f"{r[k]['hits']}/{r[k]['of']}", f"{r[k].get('seconds', float('nan')):.1f}"]
                                  for k in ("gnn", "wm", "raw")])]
    if "meaning" in res:
        m = res["meaning"]
        among = f" among the networks of {', '.join(m['members'])}" if "members" in m else ""
        head = (f"Meaning: Spearman correlation of distance and barrier after the same alignment, "
                f"{m['pairs']} pairs{among}:")
        lines += ["", head, "",
                  markdown_table(["alignment", "Spearman: weight distance", "Spearman: midpoint disagreement",
                                  "mean distance", "mean midpoint disagreement", "mean barrier"],
                                 [[k, f"{m[k]['spearman']:.3f}", _opt(m[k], "midpoint_spearman", ".3f"),
                                   f"{m[k]['mean_distance']:.4f}", _opt(m[k], "mean_midpoint", ".4f"),
                                   f"{m[k]['mean_barrier']:.4f}"] for k in ("gnn", "wm", "raw")])]
    if "scale" in res:
        s = res["scale"]
        text = (f"Scale: the full matrix of {s['networks']} networks ({s['pairs']} pairs): gnn "
                f"{s['gnn']['seconds'] / 60:.1f} min wall ({s['gnn']['cpu_seconds'] / 60:.1f} min CPU); weight "
                f"matching {s['wm']['seconds_per_pair'] * 1000:.1f} ms a pair, projected "
                f"{s['wm']['projected_seconds'] / 60:.0f} min ({s['wm']['projected_cpu_seconds'] / 60:.0f} min CPU), "
                f"from {s['wm']['sample_pairs']} pairs.")
        lines += ["", text]
    if "merging" in res:
        g = res["merging"]
        head = (f"Merging {g['size']} networks with no data, {g['groups']} groups (mean test accuracy of the "
                f"models {g['models_acc_mean']:.4f}):")
        lines += ["", head, "",
                  markdown_table(["merge", "test accuracy (mean)", "barrier to the centre (mean / max)", "seconds"],
                                 [[k, f"{v['acc_mean']:.4f}",
                                   f"{v['barrier_to_centre_mean']:.4f} / {v['barrier_to_centre_max']:.4f}",
                                   f"{v['seconds_mean']:.1f}"]
                                  for k, v in g["methods"].items()])]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", default="digits-mlp")
    p.add_argument("--root", default="data/zoos")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--wm-queries", type=int, default=10)
    p.add_argument("--pairs", type=int, default=200)
    p.add_argument("--wm-sample", type=int, default=200)
    p.add_argument("--groups", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parts", default="retrieval,meaning,scale,merging")
    p.add_argument("--members", default=None, help="comma-separated zoo members (one architecture) whose pairs the "
                   "meaning part draws from, e.g. several training recipes (default: the zoo's test pairs)")
    p.add_argument("--stem", default="population", help="file stem of the results (default population)")
    p.add_argument("--out", default="results/population")
    args = p.parse_args()
    zoo = ModelZoo(str(Path(args.root) / args.zoo), split="test", log=False)
    indices = None
    if args.members:
        names = args.members.split(",")
        indices = [i for i in range(len(zoo)) if zoo.members[zoo.member_of(i)]["name"] in names]
    net = build_arch(zoo.members[zoo.member_of(indices[0]) if indices else 0]["arch"]).eval()
    aligner = load_pretrained()
    res = {"zoo": args.zoo, "aligner": "pretrained/mixed",
           "provenance": provenance(aligner="pretrained/mixed", aligner_model=aligner)}
    parts = args.parts.split(",")
    if "retrieval" in parts:
        res["retrieval"] = retrieval(zoo, net, aligner, args.queries, args.wm_queries, args.seed)
    if "meaning" in parts:
        res["meaning"] = meaning(zoo, net, aligner, args.pairs, args.seed, indices)
        if indices is not None:
            res["meaning"]["members"] = args.members.split(",")
    if "scale" in parts:
        res["scale"] = scale(zoo, net, aligner, args.wm_sample, args.seed)
    if "merging" in parts:
        res["merging"] = merging(zoo, net, aligner, args.groups, 8, args.seed)
    write_report(args.out, args.stem, res, markdown(res), echo=True)


if __name__ == "__main__":
    keep_freed_memory()  # a program of its own, as gnn-align and train.py (gnn_align.runtime)
    main()
