"""``python -m datasets {list,build,merge,info}``: list recipes, build a zoo (or one slice), print its card."""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from gnn_align.zoo.storage import ZooError, build_seconds, load_manifest

from .build import DEFAULT_ROOT, build, build_shards, merge
from .recipes import RECIPES, get_recipe


def _arch_str(arch: dict) -> str:
    return arch["family"] + "(" + ", ".join(f"{k}={v}" for k, v in arch.items() if k != "family") + ")"


def card(root: Path) -> str:
    """The zoo card: size, splits, architectures and the accuracy (or loss) distribution."""
    man = load_manifest(root)
    nets = man["networks"]
    seconds = build_seconds(root, man)
    splits: dict = {}
    for n in nets:
        splits[n["split"]] = splits.get(n["split"], 0) + 1
    order = ["train", "val", "test", "heldout"]
    lines = [f"zoo {man['name']} (version {man['version']}) at {root}",
             f"networks: {len(nets)}   splits: " + ", ".join(f"{k} {splits[k]}" for k in order if k in splits),
             "build time: " + ("unknown (no build-log.json time for every shard)" if seconds is None
                               else f"{seconds:.0f} s of training (summed over shards)"), ""]
    key = "test_acc" if all("test_acc" in n for n in nets) else "test_loss"
    lines.append(f"{'member':<26} {'task':<16} {'n':>5}  {key} mean ± std [min, median, max]   architecture")
    for mi, m in enumerate(man["members"]):
        v = [n[key] for n in nets if n["member"] == mi]
        sd = statistics.pstdev(v) if len(v) > 1 else 0.0
        tag = " (held out)" if m["heldout"] else ""
        f = ".4f" if key == "test_acc" else ".3e"
        lines.append(f"{m['name']:<26} {m['task']:<16} {len(v):>5}  {statistics.mean(v):{f}} ± {sd:{f}} "
                     f"[{min(v):{f}}, {statistics.median(v):{f}}, {max(v):{f}}]   {_arch_str(m['arch'])}{tag}")
    return "\n".join(lines)


def main(argv: list | None = None) -> int:
    """Run the command line ``python -m datasets ...``; returns the exit code (2 on a clear error)."""
    parser = argparse.ArgumentParser(prog="python -m datasets", description="Build and inspect model zoos.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the zoo recipes")
    b = sub.add_parser("build", help="train a zoo (resumes an interrupted build; skips finished shards)")
    g = sub.add_parser("merge", help="write the manifest of a zoo built in slices (--shard i/n); trains nothing")
    i = sub.add_parser("info", help="print a built zoo's card (size, splits, architectures, accuracy)")
    for p in (b, g, i):
        p.add_argument("name", help="recipe name (see `list`)")
        p.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="folder holding built zoos")
        p.add_argument("--tiny", action="store_true", help="the tiny version (4 networks a member, 1 epoch)")
    b.add_argument("--max-shards", type=int, default=None, help="stop after training this many new shards")
    b.add_argument("--shard", metavar="i/n", default=None,
                   help="build only slice i of n (shards k with k %% n == i) and no manifest; "
                        "run `merge` once every slice is done")
    args = parser.parse_args(argv)
    if args.cmd == "list":
        for name, r in RECIPES.items():
            n = sum(m["count"] for m in r["members"])
            print(f"{name:<18} v{r['version']}  {n:>5} networks  {len(r['members'])} architecture(s)")
        return 0
    try:
        recipe = get_recipe(args.name, tiny=args.tiny)
        if args.cmd == "build" and args.shard is not None:
            done = build_shards(recipe, args.root, part=args.shard, max_shards=args.max_shards)
            print(f"slice {args.shard} of zoo {recipe['name']}: " + (
                "every shard finished; run `merge` once all slices are done" if done else
                f"stopped after {args.max_shards} new shard(s); run the same command to resume"))
            return 0
        if args.cmd == "build" and build(recipe, args.root, max_shards=args.max_shards) is None:
            print(f"stopped after {args.max_shards} new shard(s); run the same command to resume")
            return 0
        if args.cmd == "merge":
            merge(recipe, args.root)
        print(card(args.root / recipe["name"]))
    except (ValueError, ZooError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
