"""Keep a long run's resident memory near what it uses, not what glibc's heap once grew to.

Why: glibc serves a freed large block back from its heap and raises its mmap threshold each time one is freed
(up to 32 MB), so after a few batches every image-sized tensor (a 16-image 256² float batch is 12.6 MB) lives in
the heap, and the heap fragments instead of shrinking. Measured on the issue-15 workload (96 photos at 256²): peak
RSS 1.14–1.29 GB with glibc's default and 0.97 GB with the threshold pinned at 1 MB, where RSS levels off instead
of climbing with every cell (docs/performance.md). Pinning the threshold makes each large tensor its own mapping,
returned to the system when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

#: glibc's mallopt parameter number of M_MMAP_THRESHOLD (malloc.h)
_M_MMAP_THRESHOLD = -3
#: default threshold in bytes; ``WMBENCH_MMAP_THRESHOLD`` overrides it (0 leaves glibc's behaviour alone)
DEFAULT_THRESHOLD = 1 << 20


def pin_mmap_threshold(threshold: int | None = None) -> bool:
    """Pin glibc's mmap threshold (Linux/glibc only; elsewhere a no-op). -> whether it was set."""
    if threshold is None:
        raw = os.environ.get("WMBENCH_MMAP_THRESHOLD", "")
        threshold = int(raw) if raw.strip().isdigit() else DEFAULT_THRESHOLD
    if threshold <= 0 or not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False  # disabled, not glibc, or the user chose a value through glibc's own variable
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):  # musl has no mallopt
        return False
