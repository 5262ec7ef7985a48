"""Zoo storage: shards of stacked tensors in safetensors plus a JSON manifest, written atomically.

A built zoo is a folder::

    manifest.json              recipe, members (architectures), shards, one record per network
    shard-00000.safetensors    key -> (n, *shape): the state dicts of n networks of one member
    shard-00000.json           the shard's own records (written after the shard; marks it finished)
    test_accuracy.png          histogram of the networks' test accuracy (or loss)
    build-log.json             training seconds per shard; not part of the zoo's content (every other
                               file is the same byte for byte however the build was split)

Network records carry ``id``, ``member``, ``shard``, ``row`` (index in the shard), ``seed``,
``split`` (``train``/``val``/``test``, or ``heldout`` for held-out architectures) and the metrics
measured after training (``train_loss``, ``test_loss``, ``train_acc``, ``test_acc``).

The general file helpers used here (atomic writes, JSON, sha256) live in :mod:`gnn_align.io`; this
module holds what is particular to zoos (shards, manifests, build logs, build locks, :class:`ZooError`).
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import GNNAlignError
from ..io import atomic_write, sha256, verified_sha256, write_json

MANIFEST = "manifest.json"
#: wall-clock training time of each shard; not part of the zoo (it differs between runs and machines)
BUILD_LOG = "build-log.json"
BUILD_LOG_ABOUT = "training seconds of each shard, keyed by shard file; not part of the zoo's content"


class ZooError(GNNAlignError):
    """A zoo folder, manifest or shard that is missing, truncated or inconsistent (names the file)."""


def read_json(path: str | Path) -> dict:
    """Parse the JSON file ``path``; a missing or malformed file raises :class:`ZooError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"{path}: file not found")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ZooError(f"{path}: not valid JSON ({e})") from None


def write_shard(path: str | Path, stacked: dict, metadata: dict | None = None) -> str:
    """Save stacked tensors to a safetensors file atomically; returns its sha256."""
    tensors = {k: v.detach().contiguous() for k, v in stacked.items()}
    # one metadata entry: safetensors writes its metadata map in no fixed order, which would make
    # two builds of the same zoo differ byte for byte
    meta = {"gnn_align": json.dumps(metadata, sort_keys=True)} if metadata else None
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))
    return sha256(path)


def read_shard(path: str | Path, expected_sha256: str | None = None) -> dict:
    """Load a shard; a missing, truncated or corrupt file (or a checksum mismatch) raises ZooError."""
    path = Path(path)
    if not path.is_file():
        raise ZooError(f"{path}: shard file not found")
    if expected_sha256 is not None and verified_sha256(path) != expected_sha256:
        raise ZooError(f"{path}: checksum mismatch (file changed or truncated since the build)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ZooError(f"{path}: cannot read safetensors file ({e})") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def read_lock(path: Path) -> dict | None:
    """The holder recorded in a lock file, ``{}`` when unreadable, ``None`` when there is no file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def lock_is_stale(holder: dict) -> bool:
    """Whether a lock's holder is a process of this host that no longer exists."""
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and pid != os.getpid() \
        and not _pid_alive(pid)


@contextmanager
def exclusive_lock(path: str | Path, what: str):
    """Hold the lock file ``path`` (created with ``O_EXCL``, recording pid, host and start time) for a block.

    A lock left by a process of this host that no longer exists is taken over; a lock held by a live
    process (or one of another host, whose liveness cannot be checked) raises. The file is removed
    when the block ends.

    Args:
        path: the lock file.
        what: the work it guards, for the message (``"zoo digits-mlp is being built"``).

    Raises:
        ZooError: naming the lock file and its holder, when another process holds it.
    """
    path = Path(path)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(100):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = read_lock(path)
            if holder is None:
                continue  # released meanwhile: try again
            if not lock_is_stale(holder):
                who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}" if holder
                       else "a process that has not yet recorded itself")
                raise ZooError(f"{path}: {what} by another process ({who}); wait for it to finish, or delete "
                               "the lock file if that process is gone") from None
            # take the stale lock over: move it aside, and put it back if it turns out not to be the stale one
            aside = path.with_name(f"{path.name}.{os.getpid()}.stale")
            try:
                os.rename(path, aside)
            except FileNotFoundError:
                continue
            if read_lock(aside) != holder:  # another process took it over between our read and rename
                try:
                    os.link(aside, path)
                except OSError:  # a new lock exists already (or no hard links here): leave it be
                    pass
            os.remove(aside)
            continue
        except OSError as e:
            raise ZooError(f"{path}: cannot create the lock file ({e.strerror})") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
            f.write("\n")
        break
    else:
        raise ZooError(f"{path}: could not take the lock ({what}); delete the file if no process holds it")
    try:
        yield path
    finally:
        if read_lock(path) == me:
            path.unlink()


def load_manifest(root: str | Path) -> dict:
    """Read and check a zoo's manifest: it must list members, shards and networks consistently."""
    root = Path(root)
    if not root.is_dir():
        raise ZooError(f"{root}: zoo folder not found (build it first)")
    man = read_json(root / MANIFEST)
    for key in ("name", "version", "members", "shards", "networks"):
        if key not in man:
            raise ZooError(f"{root / MANIFEST}: missing field '{key}'")
    if not man["networks"]:
        raise ZooError(f"{root / MANIFEST}: the zoo is empty (no networks)")
    for net in man["networks"]:
        if not 0 <= net["shard"] < len(man["shards"]):
            raise ZooError(f"{root / MANIFEST}: network {net['id']} points at shard {net['shard']}, "
                           f"which the manifest does not list")
    for sh in man["shards"]:
        if not (root / sh["file"]).is_file():
            raise ZooError(f"{root / sh['file']}: shard listed in the manifest is missing")
    return man


def read_build_log(root: str | Path) -> dict:
    """Read the zoo's :data:`BUILD_LOG`; an absent or unreadable log reads as empty.

    An unreadable log only costs the build times, so it is ignored with a warning naming the file.

    Args:
        root: the zoo folder.

    Returns:
        ``{"about": ..., "shards": {shard file: {"sha256": ..., "seconds": ...}}}``.
    """
    path = Path(root) / BUILD_LOG
    log: dict = {}
    if path.is_file():
        try:
            log = read_json(path)
        except ZooError as e:
            warnings.warn(f"{e}; ignoring it (it only records build times)", stacklevel=2)
    shards = log.get("shards") if isinstance(log, dict) else None
    return {"about": BUILD_LOG_ABOUT, "shards": dict(shards) if isinstance(shards, dict) else {}}


def log_seconds(root: str | Path, file: str, digest: str, seconds: float) -> None:
    """Record the training time of one shard in the zoo's :data:`BUILD_LOG` (atomically).

    The log is re-read just before each rewrite, so builds of several slices into one folder keep
    each other's entries, except when two of them rewrite it at the same instant (then one entry is
    lost; the zoo itself is unaffected).

    Args:
        root: the zoo folder.
        file: the shard's file name (the log's key).
        digest: the shard's sha256, so that a time is only reported for the shard it was measured on.
        seconds: wall-clock seconds spent training the shard.
    """
    log = read_build_log(root)
    log["shards"][file] = {"sha256": digest, "seconds": round(seconds, 3)}
    write_json(Path(root) / BUILD_LOG, log)


def build_seconds(root: str | Path, manifest: dict) -> float | None:
    """Training seconds of a zoo, summed over its shards; ``None`` when unknown.

    Args:
        root: the zoo folder.
        manifest: its manifest (:func:`load_manifest`).

    Returns:
        The sum over the manifest's shards of the times in the build log, when the log has a time
        for every shard as it is now (same sha256); else the manifest's ``build_seconds`` (written by
        builds before the log existed), else ``None``.
    """
    logged = read_build_log(root)["shards"]
    total = 0.0
    for sh in manifest["shards"]:
        entry = logged.get(sh["file"])
        if not isinstance(entry, dict) or entry.get("sha256") != sh.get("sha256") or \
                not isinstance(entry.get("seconds"), (int, float)):
            return manifest.get("build_seconds")
        total += entry["seconds"]
    return round(total, 2) if manifest["shards"] else manifest.get("build_seconds")
