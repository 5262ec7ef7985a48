"""Process settings for CPU work on large tensors: keeping freed memory for reuse.

PyTorch's CPU allocator takes every tensor from the C library's ``malloc`` and frees it there, with
no cache of its own. glibc serves a large block (from 128 KiB, a threshold that grows to 32 MiB) by
mapping fresh pages, unmaps it when it is freed, and trims the top of its heap when more than twice
that threshold is free there. A job that allocates and frees tensors of some megabytes again and
again (the aligner's batched forward; :func:`~gnn_align.to_graph` on a batch) then page-faults on
every one of them as it is first written. On the project's 2-core machine that was about half the
time of drawing a digits-mlp graph (0.50 to 0.27 ms) and made batched predictions noisy by 10-20%
(``docs/aligner-v2.md``, section 12).

:func:`keep_freed_memory` tells glibc to serve every block from its heap and to keep freed memory
for reuse; ``gnn-align`` and ``train.py`` call it at start. The price: the process holds on to its
peak heap (up to ``trim_threshold`` bytes of it free) until it exits. A Python program calls it once,
before its heavy work; off glibc it changes nothing.
"""

from __future__ import annotations

import ctypes
import sys

#: ``mallopt`` parameters of glibc's ``malloc.h``
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4

_state = {"kept": False}  # whether this process asked for it (recorded in result files' provenance)


def keep_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Ask glibc's ``malloc`` to serve large blocks from its heap, not fresh mappings, and to keep up
    to ``trim_threshold`` bytes of freed memory for reuse, for the rest of the process.

    Args:
        trim_threshold: free bytes at the top of the heap above which glibc gives memory back.

    Returns:
        True when glibc accepted both settings; False elsewhere (another C library, another system),
        where nothing changes.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, min(trim_threshold, 2**31 - 1)))
    _state["kept"] = _state["kept"] or ok
    return ok


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` took effect in this process."""
    return _state["kept"]
