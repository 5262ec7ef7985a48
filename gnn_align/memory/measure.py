"""Memory of a call: how far the peak resident memory (RSS) of this process rose during it.

:func:`peak_memory` (a context manager) and :func:`measure_peak` measure the rise above the level
at the start of a block or call. Linux only: the peak (``VmHWM`` in ``/proc/self/status``) is reset
to the current RSS by writing ``5`` to ``/proc/self/clear_refs``. Elsewhere, or where that file
cannot be written, the figures are ``None`` and :attr:`PeakMemory.note` says why (a peak that cannot
be reset would include whatever ran before, so none is reported rather than a wrong one).
:func:`available_memory_mb` is the smallest of the bounds :func:`memory_limits_mb` knows: ``MemAvailable``
of ``/proc/meminfo``, the address-space limit ``RLIMIT_AS`` less the process's virtual size, and the
headroom under every cgroup memory limit that applies to the process (v2 ``memory.max``, v1
``memory.limit_in_bytes``, less the usage that cannot be reclaimed). MB are 2**20 bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MB = float(1 << 20)
_STATUS, _CLEAR_REFS, _MEMINFO = Path("/proc/self/status"), Path("/proc/self/clear_refs"), Path("/proc/meminfo")
#: the cgroup file systems' mount point, and this process's cgroups (``id:controllers:path`` lines)
_CGROUP, _SELF_CGROUP = Path("/sys/fs/cgroup"), Path("/proc/self/cgroup")
#: limits at or above this many bytes mean "no limit" (cgroup v1 writes 2**63 rounded down to a page)
_UNLIMITED = 1 << 60


def _getrlimit_as() -> tuple | None:
    """``(soft, hard)`` of ``RLIMIT_AS``, or ``None`` where the ``resource`` module does not exist."""
    try:
        import resource
    except ImportError:  # not Unix
        return None
    return resource.getrlimit(resource.RLIMIT_AS)


def _proc_kb(path: Path, key: str) -> float | None:
    """The ``key:  N kB`` entry of a /proc file, in kB; ``None`` when the file or key is missing."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(key + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    """The resident memory (``VmRSS``) of this process in MB, or ``None`` off Linux."""
    kb = _proc_kb(_STATUS, "VmRSS")
    return None if kb is None else kb / 1024


def _read_bytes(path: Path) -> int | None:
    """A cgroup file holding one number of bytes; ``None`` when missing, unreadable, ``max`` or unlimited."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    try:
        value = int(text)
    except ValueError:
        return None  # "max"
    return value if value < _UNLIMITED else None


def _stat_bytes(path: Path, key: str) -> int:
    """The ``key N`` entry of a cgroup ``memory.stat`` file (0 when missing)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return 0
    return 0


def _cgroup_levels(root: Path, self_cgroup: Path) -> list:
    """``(version, folder)`` of the cgroup levels whose memory limits apply to this process.

    Every level from the process's own cgroup up to the hierarchy's root counts (a parent's limit binds
    its children); where ``self_cgroup`` cannot be read, only the roots (a container's own view).
    """
    paths = {"v2": "/", "v1": "/"}
    try:
        for line in self_cgroup.read_text().splitlines():
            ident, controllers, path = line.split(":", 2)
            if ident == "0" and controllers == "":
                paths["v2"] = path
            elif "memory" in controllers.split(","):
                paths["v1"] = path
    except (OSError, ValueError):
        pass
    levels = []
    for version, base in (("v2", root), ("v2", root / "unified"), ("v1", root / "memory")):
        parts = [p for p in paths[version].split("/") if p]
        for depth in range(len(parts), -1, -1):
            folder = base.joinpath(*parts[:depth])
            if folder.is_dir() and (version, folder) not in levels:
                levels.append((version, folder))
    return levels


def memory_limits_mb(*, meminfo: Path | None = None, status: Path | None = None, cgroup_root: Path | None = None,
                     self_cgroup: Path | None = None, rlimit_as: Callable | None = None) -> dict:
    """Every bound this process knows on the memory new allocations can get, in MB, by source.

    Args (the sources, for tests; default: this machine's):
        meminfo: a ``/proc/meminfo``: ``MemAvailable``.
        status: a ``/proc/self/status``: ``VmSize``, the virtual size ``RLIMIT_AS`` bounds.
        cgroup_root: where the cgroup file systems are mounted (``/sys/fs/cgroup``).
        self_cgroup: a ``/proc/self/cgroup``.
        rlimit_as: returns ``(soft, hard)`` of ``RLIMIT_AS`` (``resource.getrlimit``), or ``None``.

    Returns:
        ``{source: MB}``, e.g. ``{"MemAvailable": 21000.0, "RLIMIT_AS": 3900.0,
        "cgroup /sys/fs/cgroup/memory.max": 1800.0}``; absent, unreadable or unlimited sources are left
        out. A cgroup's figure is its limit less its usage net of reclaimable page cache
        (``inactive_file``); ``RLIMIT_AS``'s is the soft limit less the process's ``VmSize``.
    """
    meminfo = _MEMINFO if meminfo is None else meminfo
    status = _STATUS if status is None else status
    root = _CGROUP if cgroup_root is None else cgroup_root
    self_cgroup = _SELF_CGROUP if self_cgroup is None else self_cgroup
    limits = {}
    kb = _proc_kb(meminfo, "MemAvailable")
    if kb is not None:
        limits["MemAvailable"] = kb / 1024
    rl = (rlimit_as or _getrlimit_as)()
    if rl is not None and 0 <= rl[0] < _UNLIMITED:
        used = _proc_kb(status, "VmSize")
        limits["RLIMIT_AS"] = max(rl[0] - (used or 0.0) * 1024, 0.0) / MB
    for version, folder in _cgroup_levels(root, self_cgroup):
        if version == "v2":
            limit_file, usage, inactive = folder / "memory.max", folder / "memory.current", "inactive_file"
        else:
            limit_file, usage, inactive = folder / "memory.limit_in_bytes", folder / "memory.usage_in_bytes", \
                "total_inactive_file"
        limit = _read_bytes(limit_file)
        if limit is None:
            continue
        used = max((_read_bytes(usage) or 0) - _stat_bytes(folder / "memory.stat", inactive), 0)
        limits[f"cgroup {limit_file}"] = max(limit - used, 0) / MB
    return limits


def available_memory_mb(**sources) -> float | None:
    """Memory new allocations can get in MB: the smallest of :func:`memory_limits_mb` (``MemAvailable``,
    ``RLIMIT_AS``, cgroup limits), or ``None`` where none is known (not Linux, no limits).

    Args:
        sources: keyword overrides of :func:`memory_limits_mb`'s sources (for tests).
    """
    limits = memory_limits_mb(**sources)
    return min(limits.values()) if limits else None


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap memory back to the OS (glibc ``malloc_trim(0)``; a no-op
    with another C library), so that the next measurement starts from the memory in use and not
    from what the allocator kept of earlier, larger calls."""
    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:
        trim = getattr(ctypes.CDLL(libc), "malloc_trim", None)
        if trim is not None:
            trim(0)


def _reset_peak() -> str:
    """Reset ``VmHWM`` to the current RSS; returns ``""`` or the reason it could not be done."""
    if _proc_kb(_STATUS, "VmHWM") is None:
        return "no VmHWM in /proc/self/status (not Linux): peak memory not measured"
    try:
        _CLEAR_REFS.write_text("5")
    except OSError as e:
        return f"cannot reset the peak ({_CLEAR_REFS}: {e.strerror}): peak memory not measured"
    return ""


@dataclass
class PeakMemory:
    """The peak resident memory of a measured block.

    Attributes:
        start_mb: RSS when the block started (after :func:`release_freed_memory`).
        peak_mb: the highest RSS during the block (``VmHWM``), at least ``start_mb``.
        end_mb: RSS when the block ended.
        seconds: wall time of the block.
        note: empty, or why the memory figures are ``None``.
    """

    start_mb: float | None = None
    peak_mb: float | None = None
    end_mb: float | None = None
    seconds: float = 0.0
    note: str = ""

    @property
    def increase_mb(self) -> float | None:
        """How far the peak rose above the start (``None`` when not measured)."""
        if self.peak_mb is None or self.start_mb is None:
            return None
        return max(0.0, self.peak_mb - self.start_mb)


@contextmanager
def peak_memory() -> Iterator[PeakMemory]:
    """Measure the peak RSS of the block it wraps, relative to the RSS at its start.

    Freed memory is released first (:func:`release_freed_memory`) and the kernel's peak is reset,
    so the figure is what the block itself allocated at its worst moment, whatever ran before in
    the process. The record is filled in when the block exits (also when it raises).

    Example:
        >>> with peak_memory() as mem:                       # doctest: +SKIP
        ...     x = torch.ones(50 * 2**20 // 4)
        >>> mem.increase_mb                                  # doctest: +SKIP
        50.1

    Yields:
        a :class:`PeakMemory`; its memory figures stay ``None`` (and ``note`` says why) where the
        peak cannot be reset.
    """
    rec = PeakMemory()
    release_freed_memory()
    rec.note = _reset_peak()
    if not rec.note:
        rec.start_mb = rss_mb()
    t0 = time.perf_counter()
    try:
        yield rec
    finally:
        rec.seconds = time.perf_counter() - t0
        if not rec.note:
            hwm, rss = _proc_kb(_STATUS, "VmHWM"), _proc_kb(_STATUS, "VmRSS")
            rec.peak_mb = None if hwm is None else max(hwm / 1024, rec.start_mb)
            rec.end_mb = None if rss is None else rss / 1024


def measure_peak(fn: Callable, *args, **kwargs) -> tuple:
    """Call ``fn(*args, **kwargs)`` under :func:`peak_memory`; returns ``(its result, PeakMemory)``."""
    with peak_memory() as rec:
        out = fn(*args, **kwargs)
    return out, rec
