"""``gnn-align distance | nearest``: distances between networks after alignment, over files or a zoo.

``distance A B --model M`` prints the distance of two model files; ``distance --zoo Z`` writes the
distance matrix of a zoo split (resumable: finished chunks are kept in ``OUT/chunks``) with a PNG of
the matrix ordered by clustering and a 2-D embedding (classical MDS) coloured by test accuracy;
``nearest QUERY --zoo Z -k 5`` lists the zoo networks closest to a model file.
"""

from __future__ import annotations

import argparse
from fnmatch import fnmatch
from pathlib import Path

from ..errors import GNNAlignError
from ..io import DEFAULT_RESULTS_ROOT, DEFAULT_ZOO_ROOT
from .models import DATA_HELP, MODEL_HELP, _aligner, _load

METHOD_HELP = "alignment method: gnn (default; every network embedded once), wm, am, sinkhorn, ste, auto, ..."


def _zoo(args):
    """The zoo split's networks of one architecture (of one member, or of every member sharing the
    first one's architecture, e.g. one architecture trained by several recipes): ``(zoo, indices, module)``."""
    from ..archs import build_arch
    from ..zoo import ModelZoo

    path = Path(args.root) / args.zoo
    if not (path / "manifest.json").is_file():
        raise GNNAlignError(f"{path}: no built zoo here (build it with `gnn-align zoo build {args.zoo}`)")
    zoo = ModelZoo(str(path), split=args.split, log=False)
    members = list(dict.fromkeys(zoo.member_of(i) for i in range(len(zoo))))
    if args.member is not None:
        pats = [p.strip() for p in args.member.split(",") if p.strip()]
        members = [m for m in members if any(fnmatch(zoo.members[m]["name"], p) for p in pats)]
        if not members:
            raise GNNAlignError(f"{path}: no member of the {args.split} split matches --member {args.member}")
    if not members:
        raise GNNAlignError(f"{path}: the {args.split} split holds no networks")
    shapes = lambda m: {k: tuple(v.shape) for k, v in build_arch(zoo.members[m]["arch"]).state_dict().items()}
    first = shapes(members[0])  # dropout and the like do not make another architecture: the tensors do
    others = [zoo.members[m]["name"] for m in members[1:] if shapes(m) != first]
    if others:
        first_name = zoo.members[members[0]]["name"]
        raise GNNAlignError(f"{path}: the {args.split} split holds several architectures ({first_name}, "
                            f"{', '.join(others)}); choose one with --member")
    idx = [i for i in range(len(zoo)) if zoo.member_of(i) in members][:args.limit]
    return zoo, idx, build_arch(zoo.members[members[0]]["arch"]).eval()


def _pair(args) -> dict:
    from ..population import distance

    module, (a, b), task = _load(args, args.files, args.data)
    data = None if task is None else task.x_test if task.y_test is None else (task.x_test, task.y_test)
    d = distance(a, b, args.method, data, aligner=_aligner(args.aligner), module=module,
                 loss=task.loss if task else "ce", seed=args.seed)
    info = d.summary() | {"a": args.files[0], "b": args.files[1]}
    if not args.json:
        print(f"distance of {args.files[0]} and {args.files[1]} after {args.method} alignment: {d.weight:.4f} "
              f"(before alignment {d.raw:.4f}; per group "
              + ", ".join(f"{g} {v:.4f}" for g, v in d.groups.items()) + ")")
        if d.functional is not None:
            print(f"  functional distance on the test split of {args.data}: {d.functional:.4f}")
        if d.midpoint is not None:
            print(f"  midpoint disagreement after alignment: {d.midpoint:.4f}")
        if d.barrier is not None:
            print(f"  loss barrier after alignment: {d.barrier:.4f}")
    return info


def _matrix(args) -> dict:
    import torch
    from safetensors.torch import save_file

    from ..io import atomic_write, write_json
    from ..population import pairwise
    from ..provenance import provenance
    from ..studies.distance_plot import distance_figure
    from ..studies.report import write_png

    zoo, idx, module = _zoo(args)
    if len(idx) < 2:
        raise GNNAlignError(f"{args.zoo}: {len(idx)} network(s) in the {args.split} split; a matrix needs 2")
    out = Path(args.out or f"{DEFAULT_RESULTS_ROOT}/distance-{args.zoo}")
    aligner = _aligner(args.aligner)
    m = pairwise([zoo.state_dict(i) for i in idx], args.method, aligner=aligner, module=module, seed=args.seed,
                 cache=out / "chunks", progress=not args.json)
    ids = [int(zoo.record(i)["id"]) for i in idx]
    members = [zoo.members[zoo.member_of(i)]["name"] for i in idx]
    acc = [float(zoo.record(i).get("test_acc", float("nan"))) for i in idx]
    tensors = {"weight": m.weight, "raw": m.raw, "network_ids": torch.tensor(ids)}
    tensors |= {f"group.{g}": v for g, v in m.groups.items()}
    atomic_write(out / "distances.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    off = ~torch.eye(len(idx), dtype=torch.bool)
    info = {"zoo": args.zoo, "split": args.split, "networks": len(idx), "pairs": len(idx) * (len(idx) - 1) // 2,
            "method": args.method, "seconds": m.seconds, "mean_distance": float(m.weight[off].mean()),
            "mean_raw_distance": float(m.raw[off].mean()), "network_ids": ids, "members": members,
            "files": [str(out / n) for n in ("distances.safetensors", "distances.json", "distances.png")],
            "provenance": provenance(aligner=args.aligner or "pretrained", aligner_model=aligner)}
    write_json(out / "distances.json", info)
    write_png(out / "distances.png", distance_figure(m.weight, acc, f"{args.zoo} ({args.split}), {args.method}",
                                                     labels=members if len(set(members)) > 1 else None))
    if not args.json:
        print(f"{info['pairs']} pairs of {len(idx)} networks in {m.seconds:.1f} s: mean distance "
              f"{info['mean_distance']:.4f} after alignment, {info['mean_raw_distance']:.4f} before\n"
              f"  written: {', '.join(info['files'])}")
    return info


def _distance(args) -> dict:
    if args.zoo is not None:
        if args.files:
            raise GNNAlignError("give either two model files (with --model) or --zoo, not both")
        return _matrix(args)
    if len(args.files) != 2 or args.model is None:
        raise GNNAlignError("distance needs two model files and --model, or --zoo NAME for a zoo's matrix")
    return _pair(args)


def _nearest(args) -> dict:
    from ..models import check_state, load_state_file
    from ..population import distances_to

    zoo, idx, module = _zoo(args)
    query = load_state_file(args.query)
    check_state(module, query, args.query)
    d = distances_to([query], [zoo.state_dict(i) for i in idx], args.method, aligner=_aligner(args.aligner),
                     module=module, seed=args.seed, progress=not args.json)
    rows = d.nearest(0, args.k)
    found = [{"network_id": int(zoo.record(idx[j])["id"]), "distance": dist, "raw_distance": float(d.raw[0, j]),
              "test_acc": zoo.record(idx[j]).get("test_acc")} for j, dist in rows]
    if not args.json:
        from ..studies.report import markdown_table

        print(f"the {len(found)} networks of {args.zoo} ({args.split}, {len(idx)} searched) nearest to {args.query} "
              f"after {args.method} alignment:")
        print(markdown_table(["network id", "distance", "before alignment", "test accuracy"],
                             [[r["network_id"], f"{r['distance']:.4f}", f"{r['raw_distance']:.4f}",
                               f"{r['test_acc']:.4f}" if r["test_acc"] is not None else "–"] for r in found]))
    return {"query": args.query, "zoo": args.zoo, "split": args.split, "method": args.method, "nearest": found}


def _zoo_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", default=DEFAULT_ZOO_ROOT, help=f"folder holding built zoos (default {DEFAULT_ZOO_ROOT})")
    p.add_argument("--split", default="test", help="the zoo split (default test)")
    p.add_argument("--member", default=None, help="zoo members to use, comma-separated names or globs (e.g. "
                   "'digits-mlp-sgd-*,digits-mlp-adam*'), all of one architecture (default: every member, when "
                   "they share one)")
    p.add_argument("--limit", type=int, default=None, help="only the first N networks of the split")


def _method_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="gnn", help=METHOD_HELP)
    p.add_argument("--aligner", default=None, help="a train.py run folder or a shipped aligner's name")
    p.add_argument("--seed", type=int, default=0, help="seed of the method's random choices")
    p.add_argument("--json", action="store_true", help="print the result as JSON only")


def add_parsers(sub) -> None:
    """Add distance and nearest to the subcommands ``sub``."""
    p = sub.add_parser("distance", help="distance of two models after alignment, or a zoo's distance matrix",
                       description="Align two model files and print their normalised weight distance "
                       "(|A - pi B| / sqrt(|A|^2 + |B|^2), overall and per group; with --data also the functional "
                       "distance and the loss barrier), or with --zoo write the distance matrix of a zoo split to "
                       "--out: distances.safetensors, distances.json and distances.png (clustered heatmap and MDS).")
    p.add_argument("files", nargs="*", help="two model files (with --model)")
    p.add_argument("--model", default=None, help=MODEL_HELP)
    p.add_argument("--data", default=None, help=DATA_HELP)
    p.add_argument("--zoo", default=None, help="a built zoo: write its distance matrix instead")
    p.add_argument("--out", default=None, help=f"output folder of --zoo (default {DEFAULT_RESULTS_ROOT}/distance-ZOO); "
                   "a rerun continues from its finished chunks")
    _zoo_args(p)
    _method_args(p)
    p.set_defaults(run=_distance)
    p = sub.add_parser("nearest", help="the zoo networks closest to a model after alignment",
                       description="Align a model file to every network of a zoo split and list the k nearest "
                       "by normalised weight distance after alignment.")
    p.add_argument("query", help="a model file of the zoo's architecture")
    p.add_argument("--zoo", required=True, help="a built zoo to search")
    p.add_argument("-k", type=int, default=5, help="how many to list (default 5)")
    _zoo_args(p)
    _method_args(p)
    p.set_defaults(run=_nearest)
