"""wmbench.memory: heap trimming works on glibc and can be switched off."""

from __future__ import annotations

import sys

import pytest

from wmbench.memory import trim_heap


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_trim_releases_freed_heap() -> None:
    """Many small blocks (served from the heap, not mmap) freed at once leave pages malloc_trim can return."""
    blocks = [bytearray(64 * 1024) for _ in range(2000)]  # 128 MB below the mmap threshold
    del blocks
    assert trim_heap() is True


def test_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WMBENCH_MALLOC_TRIM", "0")
    assert trim_heap() is False
