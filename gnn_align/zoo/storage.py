"""Zoo storage: shards of stacked tensors in safetensors plus a JSON manifest, written atomically.

A built zoo is a folder::

    manifest.json              recipe, members (architectures), shards, one record per network
    shard-00000.safetensors    key -> (n, *shape): the state dicts of n networks of one member
    shard-00000.json           the shard's own records (written after the shard; marks it finished)

Network records carry ``id``, ``member``, ``shard``, ``row`` (index in the shard), ``seed``,
``split`` (``train``/``val``/``test``, or ``heldout`` for held-out architectures) and the metrics
measured after training (``train_loss``, ``test_loss``, ``train_acc``, ``test_acc``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import GNNAlignError

MANIFEST = "manifest.json"


class ZooError(GNNAlignError):
    """A zoo folder, manifest or shard that is missing, truncated or inconsistent (names the file)."""


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then ``os.replace`` it there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temporary file + ``os.replace``)."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False)
            f.write("\n")
    atomic_write(Path(path), write)


def read_json(path: str | Path) -> dict:
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
    if expected_sha256 is not None and sha256(path) != expected_sha256:
        raise ZooError(f"{path}: checksum mismatch (file changed or truncated since the build)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ZooError(f"{path}: cannot read safetensors file ({e})") from None


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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

