"""Memory: measure the peak of a call (:mod:`.measure`), and estimate and check the learned
aligner's peak before it runs (:mod:`.estimate`)."""

from .estimate import FIXED_MB, SAFETY, GraphSize, check_aligner_memory, estimate_aligner_memory_mb, graph_size
from .measure import (
    MB,
    PeakMemory,
    available_memory_mb,
    measure_peak,
    memory_limits_mb,
    peak_memory,
    release_freed_memory,
    rss_mb,
)

__all__ = ["FIXED_MB", "MB", "SAFETY", "GraphSize", "PeakMemory", "available_memory_mb", "check_aligner_memory",
           "estimate_aligner_memory_mb", "graph_size", "measure_peak", "memory_limits_mb", "peak_memory",
           "release_freed_memory", "rss_mb"]
