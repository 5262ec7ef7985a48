"""Memory of a call: how far the peak resident memory (RSS) of this process rose during it.

:func:`peak_memory` (a context manager) and :func:`measure_peak` measure the rise above the level
at the start of a block or call. Linux only: the peak (``VmHWM`` in ``/proc/self/status``) is reset
to the current RSS by writing ``5`` to ``/proc/self/clear_refs``. Elsewhere, or where that file
cannot be written, the figures are ``None`` and :attr:`PeakMemory.note` says why (a peak that cannot
be reset would include whatever ran before, so none is reported rather than a wrong one).
:func:`available_memory_mb` reads ``MemAvailable`` of ``/proc/meminfo``. MB are 2**20 bytes.
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


def available_memory_mb() -> float | None:
    """Memory the kernel can give new allocations without swapping (``MemAvailable`` of
    ``/proc/meminfo``) in MB, or ``None`` where that file does not exist (not Linux)."""
    kb = _proc_kb(_MEMINFO, "MemAvailable")
    return None if kb is None else kb / 1024


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
