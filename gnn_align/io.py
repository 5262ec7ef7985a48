"""File helpers: atomic writes, JSON and text files, and content hashes.

Every file the library writes (zoo shards and manifests, model files, checkpoints, study reports)
goes through :func:`atomic_write`: the content is written to a temporary file next to the target,
which then replaces the target with ``os.replace``, so a process killed at any moment leaves either
the old file or the new one, never a torn one. :func:`sha256` hashes a file's bytes;
:func:`content_sha256` hashes a nest of tensors and plain values as loaded, for files written with
``torch.save``. :data:`DEFAULT_ZOO_ROOT` and :data:`DEFAULT_RESULTS_ROOT` are the default folders
of the commands, defined once here.

Nothing here imports torch at import time (:func:`content_sha256` imports it when called), so the
command line can use these helpers without paying for torch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

#: where built zoos live (relative to the working directory), unless a command is told otherwise:
#: ``python -m datasets build`` writes there (at the checkout's root), and ``gnn-align bench``,
#: ``train.py`` and the benchmark scripts read from there
DEFAULT_ZOO_ROOT = "data/zoos"
#: where ``gnn-align`` and the benchmark scripts write their results by default, one folder per
#: command or study (``results/bench-ZOO``, ``results/eval``, ...); ``train.py`` writes runs to ``runs/``
DEFAULT_RESULTS_ROOT = "results"


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then ``os.replace`` it there.

    An existing ``path`` keeps its permissions; a new one gets ``0o666`` less the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        try:  # overwriting: keep the file's permissions
            mode = os.stat(path).st_mode & 0o7777
        except OSError:  # a new file (mkstemp creates 0600): the usual permissions
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write the string ``text`` to ``path`` atomically (temporary file + ``os.replace``)."""
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temporary file + ``os.replace``)."""
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=False)
            f.write("\n")
    atomic_write(Path(path), write)


def sha256(path: str | Path) -> str:
    """Hex sha256 of the file ``path``, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: (path, size, mtime_ns, inode) -> sha256 of files hashed by this process (see :func:`verified_sha256`)
_SHA256_SEEN: dict = {}


def verified_sha256(path: str | Path) -> str:
    """:func:`sha256` of ``path``, hashed once per process while its size, mtime and inode stay the same.

    A process that opens several views of one zoo (train and validation splits) hashes each shard once;
    another process hashes it again.
    """
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _SHA256_SEEN:
        _SHA256_SEEN[key] = sha256(path)
    return _SHA256_SEEN[key]


def content_sha256(obj) -> str:
    """Hex sha256 of a nest of tensors, dicts, lists, tuples and plain scalars, as loaded.

    Covers every tensor's dtype, shape and bytes and every key and value in order, so a value changed
    anywhere in a file (a flipped byte in a weight) changes the digest. Used to check the contents of
    files written with ``torch.save`` (training checkpoints, processed zoo caches) when they are read back.
    """
    import torch  # this module itself needs no torch; its callers have it loaded already

    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(x, dict):
            h.update(f"D{len(x)};".encode())
            for k, v in x.items():
                feed(k)
                feed(v)
        elif isinstance(x, (list, tuple)):
            h.update(f"{type(x).__name__[0].upper()}{len(x)};".encode())
            for v in x:
                feed(v)
        elif x is None or isinstance(x, (bool, int, float, str, bytes)):
            h.update(f"{type(x).__name__}:{x!r};".encode())
        else:
            raise TypeError(f"cannot checksum a {type(x).__name__}")

    feed(obj)
    return h.hexdigest()
