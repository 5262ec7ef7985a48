"""Build a zoo from its recipe: train networks shard by shard, write shards + manifest atomically.

Re-running a build skips every finished shard (its ``.json`` record exists and the shard's checksum
matches), so an interrupted build resumes where it stopped and ends identical to an uninterrupted one.
:func:`build_shards` with ``part="i/n"`` trains one slice of the shards (several machines can share a
folder), :func:`merge` then writes the manifest; :func:`build` does both. Wall-clock times go to the
build log (``build-log.json``), which is not part of the zoo: every other file depends only on the
recipe (and on the software and hardware that trained it), byte for byte the same however the work
was split.

A build holds a lock file in the zoo folder while it trains (``.build.lock``, or
``.build-slice-I-of-N.lock`` for a slice), so a second build of the same zoo (or slice) into the same
folder is refused with a message naming the running one instead of training every shard again; a
lock left by a killed build (its process is gone) is taken over. Temporary files of writes that a
killed build left behind (``.NAME.XXXXXXXX.tmp``) are removed when the next build starts.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gnn_align.io import DEFAULT_ZOO_ROOT, atomic_write, sha256, write_json
from gnn_align.tasks import load_task, sine_signals
from gnn_align.zoo.batched import StackedForward, evaluate, stable_seed, train_networks
from gnn_align.zoo.storage import (
    MANIFEST,
    ZooError,
    exclusive_lock,
    lock_is_stale,
    log_seconds,
    read_json,
    read_lock,
    write_shard,
)

#: the checkout's zoo folder: :data:`gnn_align.io.DEFAULT_ZOO_ROOT` at the repository root
DEFAULT_ROOT = Path(__file__).resolve().parent.parent / DEFAULT_ZOO_ROOT


def _splits(recipe: dict, member: dict, n_units: int) -> list:
    """Split label of each unit (network, or signal for INR zoos), by fixed seeded shuffling."""
    if member["heldout"]:
        return ["heldout"] * n_units
    order = torch.randperm(n_units, generator=torch.Generator().manual_seed(
        stable_seed(recipe["name"], recipe["version"], member["name"], "split")))
    labels, start = [None] * n_units, 0
    names = list(recipe["splits"])
    for k, name in enumerate(names):
        end = n_units if k == len(names) - 1 else start + round(recipe["splits"][name] * n_units)
        for u in order[start:end].tolist():
            labels[u] = name
        start = end
    return labels


def _member_data(recipe: dict, member: dict) -> dict:
    """Training/test tensors of a member; INR members get per-network targets."""
    if member["task"] == "sine":
        views = recipe.get("views", 1)
        n_signals = -(-member["count"] // views)
        sig = sine_signals(n_signals, torch.Generator().manual_seed(
            stable_seed(recipe["name"], recipe["version"], member["name"], "signals")))
        return dict(sig, loss="mse", per_network=True, views=views)
    t = load_task(member["task"])
    return {"x_train": t.x_train, "y_train": t.y_train, "x_test": t.x_test, "y_test": t.y_test, "loss": t.loss,
            "per_network": False, "views": 1}


def plan(recipe: dict) -> tuple:
    """(member entries for the manifest, network records without metrics, shard list)."""
    members, networks, shards = [], [], []
    for mi, m in enumerate(recipe["members"]):
        views = recipe.get("views", 1) if m["task"] == "sine" else 1
        units = _splits(recipe, m, -(-m["count"] // views))
        entry = {k: m[k] for k in ("name", "arch", "task", "activation", "heldout", "count", "train", "recipe")}
        members.append(entry)
        ids = []
        for i in range(m["count"]):
            rec = {"id": len(networks), "member": mi, "seed": stable_seed(recipe["name"], recipe["version"],
                                                                          m["name"], i),
                   "split": units[i // views]}
            if m["task"] == "sine":
                rec["signal"] = i // views
            networks.append(rec)
            ids.append(rec["id"])
        for s in range(0, len(ids), recipe["shard_size"]):
            shards.append({"file": f"shard-{len(shards):05d}.safetensors", "member": mi,
                           "ids": ids[s:s + recipe["shard_size"]]})
    for k, sh in enumerate(shards):
        for row, i in enumerate(sh["ids"]):
            networks[i].update(shard=k, row=row)
    return members, networks, shards


def _train_shard(member: dict, data: dict, recs: list, progress: bool) -> tuple:
    seeds = [r["seed"] for r in recs]
    y_train, y_test = data["y_train"], data["y_test"]
    if data["per_network"]:
        sig = torch.tensor([r["signal"] for r in recs])
        y_train, y_test = y_train[sig], y_test[sig]
    state, history = train_networks(member["arch"], data["x_train"], y_train, seeds, loss=data["loss"],
                                     per_network_targets=data["per_network"], progress=progress,
                                     desc=member["name"], **member["train"])
    fwd = StackedForward(member["arch"])
    metrics = {}
    for split, x, y in (("train", data["x_train"], y_train), ("test", data["x_test"], y_test)):
        for k, v in evaluate(fwd, state, x, y, data["loss"], per_network_targets=data["per_network"]).items():
            metrics[f"{split}_{k}"] = v.tolist()
    out = []
    for i, r in enumerate(recs):
        r = dict(r, **{k: v[i] for k, v in metrics.items()})
        if data["per_network"]:
            r["a"] = float(data["a"][r["signal"]])
        out.append(r)
    return state, out, history


def parse_part(text: str) -> tuple[int, int]:
    """Parse a ``--shard`` value ``"i/n"``: slice ``i`` of ``n``, the shards ``k`` with ``k % n == i``.

    Raises:
        ValueError: unless ``text`` is ``i/n`` with integers ``0 <= i < n``.
    """
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if m is None or not int(m[1]) < int(m[2]):
        raise ValueError(f"--shard must be i/n with 0 <= i < n, got '{text}'")
    return int(m[1]), int(m[2])


def _finished(out: Path, shard: dict, recs: list) -> dict | None:
    """The ``.json`` record of a finished shard, or ``None`` when the shard still has to be trained.

    A shard is finished when its record and file exist, the file's sha256 is the one recorded and the
    record holds the planned networks (same ids and seeds); an unreadable record counts as unfinished.
    """
    path, side = out / shard["file"], out / shard["file"].replace(".safetensors", ".json")
    if not (side.is_file() and path.is_file()):
        return None
    try:
        done = read_json(side)
    except ZooError:
        return None
    ok = isinstance(done, dict) and [(r.get("id"), r.get("seed")) for r in done.get("networks", [])] == \
        [(r["id"], r["seed"]) for r in recs]
    return done if ok and done.get("sha256") == sha256(path) else None


def build_shards(recipe: dict, root: str | Path = DEFAULT_ROOT, part: str | None = None,
                 max_shards: int | None = None, progress: bool = True) -> bool:
    """Train the unfinished shards of ``recipe`` (of one slice with ``part``) without writing the manifest.

    Each shard and its ``.json`` record are written atomically and its training time goes to the
    build log (:data:`gnn_align.zoo.storage.BUILD_LOG`). Finished shards are skipped, so several
    machines can build disjoint slices into one shared folder and re-running a slice trains nothing.

    Args:
        recipe: the zoo recipe (:func:`datasets.recipes.get_recipe`).
        root: folder holding built zoos; the shards go to ``root/<name>``.
        part: ``"i/n"``: build only slice ``i`` of ``n`` (the shards ``k`` with ``k % n == i``);
            ``None`` builds every shard.
        max_shards: train at most this many new shards, then stop (``None`` = no limit).
        progress: show progress bars.

    Returns:
        ``True`` when every shard of the slice is finished, ``False`` when stopped by ``max_shards``.

    Raises:
        ValueError: ``part`` is not ``i/n`` with ``0 <= i < n``, or ``max_shards`` is negative.
        ZooError: another live process is building the same zoo (or slice) into the same folder.
    """
    i, n = parse_part(part) if part is not None else (0, 1)
    if max_shards is not None and (isinstance(max_shards, bool) or not isinstance(max_shards, int)
                                   or max_shards < 0):
        raise ValueError(f"--max-shards must be a number of shards, 0 or more; got {max_shards!r}")
    out = Path(root) / recipe["name"]
    _, networks, shards = plan(recipe)
    mine = shards[i::n]
    lock = out / (".build.lock" if part is None else f".build-slice-{i}-of-{n}.lock")
    with exclusive_lock(lock, f"zoo {recipe['name']}" + ("" if part is None else f" slice {i}/{n}")
                        + " is being built"):
        _refuse_overlapping_builds(out, lock)
        names = {sh["file"] for sh in mine} | {sh["file"].replace(".safetensors", ".json") for sh in mine}
        remove_stale_tmp(out, None if part is None else names)
        return _build_shards(recipe, out, networks, mine, part, max_shards, progress)


def _refuse_overlapping_builds(out: Path, lock: Path) -> None:
    """Raise if a live build of another kind (the whole zoo vs a slice) holds a lock in ``out``."""
    pattern = ".build-slice-*.lock" if lock.name == ".build.lock" else ".build.lock"
    for other in sorted(out.glob(pattern)):
        holder = read_lock(other)
        if holder is not None and not lock_is_stale(holder):
            who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
            raise ZooError(f"{other}: another build of this zoo is running ({who}); a whole build and a "
                           "--shard slice of one zoo cannot run at once: wait for it to finish, or delete the "
                           "lock file if that process is gone")


def remove_stale_tmp(out: Path, targets: set | None = None) -> list:
    """Remove the temporary files (``.NAME.XXXXXXXX.tmp``) that killed atomic writes left in ``out``.

    Args:
        out: the zoo folder (its top level only; ``processed/`` belongs to the readers).
        targets: remove only the temporary files of these file names (a slice's shards and records,
            while other slices may be writing theirs); ``None``: every one.

    Returns:
        The paths removed.
    """
    removed = []
    for tmp in sorted(out.glob(".*.tmp")) if out.is_dir() else []:
        target = tmp.name[1:-len(".tmp")].rpartition(".")[0]
        if tmp.is_file() and (targets is None or target in targets):
            try:
                tmp.unlink()
            except FileNotFoundError:
                continue
            removed.append(tmp)
    return removed


def _build_shards(recipe: dict, out: Path, networks: list, mine: list, part: str | None, max_shards: int | None,
                  progress: bool) -> bool:
    """The training loop of :func:`build_shards` (run while holding the build's lock)."""
    i, n = parse_part(part) if part is not None else (0, 1)
    data_cache: dict = {}
    trained = 0
    desc = f"zoo {recipe['name']}" + (f" slice {i}/{n}" if part is not None else "")
    for sh in tqdm(mine, desc=desc, disable=not progress, unit="shard"):
        recs = [networks[k] for k in sh["ids"]]
        if _finished(out, sh, recs) is not None:
            continue
        if max_shards is not None and trained >= max_shards:
            return False
        m = recipe["members"][sh["member"]]
        if sh["member"] not in data_cache:
            data_cache = {sh["member"]: _member_data(recipe, m)}
        t0 = time.perf_counter()
        state, recs, history = _train_shard(m, data_cache[sh["member"]], recs, progress)
        digest = write_shard(out / sh["file"], state, {"zoo": recipe["name"], "version": recipe["version"],
                                                       "member": m["name"], "ids": sh["ids"]})
        write_json(out / sh["file"].replace(".safetensors", ".json"),
                   {"sha256": digest, "history": history, "networks": recs})
        log_seconds(out, sh["file"], digest, time.perf_counter() - t0)
        trained += 1
    return True


def _cli_args(recipe: dict, root: str | Path) -> str:
    """The zoo as named on the command line: ``digits-mlp``, plus ``--tiny`` and ``--root`` if needed."""
    base = recipe["name"].removesuffix("-tiny")
    args = base + (" --tiny" if base != recipe["name"] else "")
    return args if Path(root).resolve() == DEFAULT_ROOT.resolve() else f"{args} --root {root}"


def merge(recipe: dict, root: str | Path = DEFAULT_ROOT) -> Path:
    """Write the manifest and histogram of ``recipe``'s zoo from its finished shards; trains nothing.

    Args:
        recipe: the zoo recipe (:func:`datasets.recipes.get_recipe`).
        root: folder holding built zoos.

    Returns:
        The zoo folder ``root/<name>``.

    Raises:
        ZooError: some shard is missing or does not match its record; names every such shard file
            and writes nothing.
    """
    out = Path(root) / recipe["name"]
    members, networks, shards = plan(recipe)
    missing = []
    for sh in shards:
        done = _finished(out, sh, [networks[k] for k in sh["ids"]])
        if done is None:
            missing.append(sh["file"])
            continue
        sh.update(sha256=done["sha256"], history=done["history"])
        for r in done["networks"]:
            networks[r["id"]] = r
    if missing:
        raise ZooError(f"zoo {recipe['name']} ({out}): {len(missing)} of {len(shards)} shards not built yet "
                       f"(or not matching their .json record): {', '.join(missing)}; run `python -m datasets "
                       f"build {_cli_args(recipe, root)} --shard i/n` for the missing slices, then merge again")
    for m, entry in zip(recipe["members"], members, strict=True):
        entry["loss"] = "mse" if m["task"] == "sine" else "ce"
        entry["input_shape"] = [1] if m["task"] == "sine" else list(load_task(m["task"]).x_train.shape[1:])
    manifest = {"name": recipe["name"], "version": recipe["version"], "recipe": recipe, "members": members,
                "shards": [{k: v for k, v in sh.items() if k != "ids"} | {"num_networks": len(sh["ids"])}
                           for sh in shards],
                "networks": networks}
    write_json(out / MANIFEST, manifest)
    plot_histogram(manifest, out / "test_accuracy.png")
    return out


def build(recipe: dict, root: str | Path = DEFAULT_ROOT, max_shards: int | None = None,
          progress: bool = True) -> Path | None:
    """Build (or resume) the whole zoo of ``recipe`` under ``root/<name>``: every shard, then :func:`merge`.

    Args:
        recipe: the zoo recipe (:func:`datasets.recipes.get_recipe`).
        root: folder holding built zoos.
        max_shards: train at most this many new shards, then stop without writing the manifest
            (simulates an interrupted build; ``None`` = build everything).
        progress: show progress bars.

    Returns:
        The zoo folder when complete, ``None`` when stopped early by ``max_shards``.
    """
    return merge(recipe, root) if build_shards(recipe, root, max_shards=max_shards, progress=progress) else None


def plot_histogram(manifest: dict, path: Path) -> None:
    """Histogram of each member's test accuracy (test loss for regression zoos), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "test_acc" if all("test_acc" in n for n in manifest["networks"]) else "test_loss"
    fig, ax = plt.subplots(figsize=(7, 4))
    members = manifest["members"]
    for mi, m in enumerate(members):
        vals = [n[key] for n in manifest["networks"] if n["member"] == mi]
        ax.hist(vals, bins=min(30, len(set(vals))), alpha=0.6 if len(members) < 6 else 0.35,
                label=m["name"] if len(members) < 8 else None)
    ax.set_xlabel(key.replace("_", " "))
    ax.set_ylabel("networks")
    ax.set_title(f"zoo {manifest['name']} v{manifest['version']}: {len(manifest['networks'])} networks")
    if len(members) < 8:
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)

