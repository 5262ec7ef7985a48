"""Build a zoo from its recipe: train networks shard by shard, write shards + manifest atomically.

Re-running a build skips every finished shard (its ``.json`` record exists and the shard's checksum
matches), so an interrupted build resumes where it stopped and ends identical to an uninterrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gnn_align.tasks import load_task, sine_signals
from gnn_align.zoo.batched import StackedForward, evaluate, stable_seed, train_networks
from gnn_align.zoo.storage import MANIFEST, atomic_write, read_json, sha256, write_json, write_shard

DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "data" / "zoos"


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
    return dict(x_train=t.x_train, y_train=t.y_train, x_test=t.x_test, y_test=t.y_test, loss=t.loss,
                per_network=False, views=1)


def plan(recipe: dict) -> tuple:
    """(member entries for the manifest, network records without metrics, shard list)."""
    members, networks, shards = [], [], []
    for mi, m in enumerate(recipe["members"]):
        views = recipe.get("views", 1) if m["task"] == "sine" else 1
        units = _splits(recipe, m, -(-m["count"] // views))
        entry = {k: m[k] for k in ("name", "arch", "task", "activation", "heldout", "count", "train")}
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


def build(recipe: dict, root: str | Path = DEFAULT_ROOT, max_shards: int | None = None,
          progress: bool = True) -> Path | None:
    """Build (or resume) the zoo of ``recipe`` under ``root/<name>``.

    Args:
        max_shards: train at most this many new shards, then stop without writing the manifest
            (simulates an interrupted build; ``None`` = build everything).

    Returns:
        The zoo folder when complete, ``None`` when stopped early by ``max_shards``.
    """
    out = Path(root) / recipe["name"]
    members, networks, shards = plan(recipe)
    data_cache: dict = {}
    trained = 0
    bar = tqdm(shards, desc=f"zoo {recipe['name']}", disable=not progress, unit="shard")
    for sh in bar:
        side = out / sh["file"].replace(".safetensors", ".json")
        if side.is_file() and (out / sh["file"]).is_file():
            done = read_json(side)
            if done.get("sha256") == sha256(out / sh["file"]):
                sh.update(sha256=done["sha256"], seconds=done["seconds"], history=done["history"])
                for r in done["networks"]:
                    networks[r["id"]] = r
                continue
        if max_shards is not None and trained >= max_shards:
            return None
        m = recipe["members"][sh["member"]]
        if sh["member"] not in data_cache:
            data_cache = {sh["member"]: _member_data(recipe, m)}
        t0 = time.perf_counter()
        state, recs, history = _train_shard(m, data_cache[sh["member"]],
                                            [networks[i] for i in sh["ids"]], progress)
        digest = write_shard(out / sh["file"], state, {"zoo": recipe["name"], "version": recipe["version"],
                                                       "member": m["name"], "ids": sh["ids"]})
        sh.update(sha256=digest, seconds=round(time.perf_counter() - t0, 3), history=history)
        write_json(side, {"sha256": digest, "seconds": sh["seconds"], "history": history, "networks": recs})
        for r in recs:
            networks[r["id"]] = r
        trained += 1
    for m, entry in zip(recipe["members"], members, strict=True):
        entry["loss"] = "mse" if m["task"] == "sine" else "ce"
        entry["input_shape"] = [1] if m["task"] == "sine" else list(load_task(m["task"]).x_train.shape[1:])
    manifest = {"name": recipe["name"], "version": recipe["version"], "recipe": recipe, "members": members,
                "shards": [{k: v for k, v in sh.items() if k != "ids"} | {"num_networks": len(sh["ids"])}
                           for sh in shards],
                "networks": networks, "build_seconds": round(sum(sh["seconds"] for sh in shards), 2)}
    write_json(out / MANIFEST, manifest)
    plot_histogram(manifest, out / "test_accuracy.png")
    return out


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
        ax.hist(vals, bins=min(30, len(set(vals))), alpha=0.6 if len(members) < 6 else 0.35, label=m["name"] if len(members) < 8 else None)
    ax.set_xlabel(key.replace("_", " "))
    ax.set_ylabel("networks")
    ax.set_title(f"zoo {manifest['name']} v{manifest['version']}: {len(manifest['networks'])} networks")
    if len(members) < 8:
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)

