"""`methods` and `attacks` install as wmbench.methods / wmbench.attacks in a non-editable install too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_non_editable_install_has_plugins_and_package_data(tmp_path):
    target = tmp_path / "site"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    code = (
        "import wmbench, wmbench.methods, wmbench.attacks, importlib.resources as ir;"
        "from wmbench.registry import methods, attacks;"
        "print(wmbench.__file__);"
        "print(sorted(methods().names())[:1], len(attacks().names()));"
        "attacks().get('jpeg'); methods().get('dwtdct');"
        "print(any(p.name.endswith('.safetensors') for p in ir.files('wmbench.weights').iterdir()))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert lines[0].startswith(str(target)), lines  # imported from the installed copy, not the checkout
    assert lines[-1] == "True"  # shipped weights are package data
