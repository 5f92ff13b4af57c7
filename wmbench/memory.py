"""Keep a long run's resident memory near what it uses, not what glibc's heap once grew to.

Why: glibc raises its mmap threshold each time a large block is freed (up to 32 MB), so after a few batches every
image-sized tensor (a 16-image 256² float batch is 12.6 MB) is carved from the heap, and the heap fragments
instead of shrinking: on the issue-15 workload (96 photos at 256²) RSS climbed with every cell to a 1.14–1.29 GB
peak. Two remedies were measured (docs/performance.md): pinning the mmap threshold at 1 MB (peak 0.97 GB, but
every temporary is then a fresh mapping whose pages fault in: PSNR + 8-bit rounding of a batch took 2× as long)
and ``malloc_trim`` once per cell, which hands free heap pages back without touching the allocation path. The
runner uses the second.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from functools import lru_cache


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None  # musl has none


def trim_heap() -> bool:
    """Return free heap pages to the system (glibc ``malloc_trim(0)``; a no-op elsewhere or when
    ``WMBENCH_MALLOC_TRIM=0``). Costs about a millisecond; call it between cells, not between batches.
    -> whether memory was released."""
    if os.environ.get("WMBENCH_MALLOC_TRIM", "1").strip() == "0":
        return False
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
