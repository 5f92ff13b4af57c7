"""wmbench.memory: the mmap threshold is pinned on glibc, and can be switched off."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wmbench.memory import pin_mmap_threshold

PROBE = """
import ctypes, ctypes.util, sys
from wmbench.memory import pin_mmap_threshold
print(pin_mmap_threshold())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_pinned_in_a_fresh_process() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


@pytest.mark.parametrize("env", [{"WMBENCH_MMAP_THRESHOLD": "0"}, {"MALLOC_MMAP_THRESHOLD_": "65536"}])
def test_switched_off(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """0 disables it; glibc's own variable means the user chose, so wmbench leaves it."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert pin_mmap_threshold() is False


def test_zero_argument_is_a_no_op() -> None:
    assert pin_mmap_threshold(0) is False
