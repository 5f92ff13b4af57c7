"""The Ray executor: the same table as the local executor, and a killed driver resumes with no duplicate rows.

One local Ray instance is shared by the in-process tests (``ray.init(num_cpus=2)``: the actors take half a CPU
each, leaving Ray a CPU for its own tasks). The kill test runs the CLI in a subprocess, which starts its own
instance, as a user's command would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_cut_invariance import assert_same_values

from wmbench.runner import Runner, RunOptions
from wmbench.store import RunStore
from wmbench.suite import load_suite

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_instance():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("WMBENCH_HOME", str(tmp_path / "home"))


def _suite(tmp_path: Path, count: int = 6) -> Path:
    data = {
        "name": "rayt",
        "seed": 2,
        "images": {"source": "builtin", "count": count, "size": 64},
        "methods": [
            {"name": "hidden"},
            {"name": "hidden", "label": "hidden-half", "params": {"strength": 0.5}},
        ],
        "attacks": [
            {"name": "jpeg", "strengths": [50]},
            {"name": "gaussian_noise", "strengths": [0.05]},
            {"name": "crop", "strengths": [0.7]},
            {"name": "resize", "strengths": [0.5]},
        ],
        "metrics": ["bit_acc", "psnr", "ssim"],
        "batch_size": 4,
    }
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_ray_executor_equals_local(tmp_path, ray_instance):
    p = _suite(tmp_path)
    local = Runner(load_suite(p), RunOptions(out=tmp_path / "local", progress=False)).run()
    opts = RunOptions(
        out=tmp_path / "ray", progress=False, executor="ray", workers=2, shard_size=4, batch_size=3
    )
    remote = Runner(load_suite(p), opts).run()
    assert remote.errors == [] and len(remote.rows) == len(local.rows) == 6 * 2 * 6
    assert_same_values(local.rows, remote.rows)
    assert remote.manifest["attempts"][-1]["executor"] == "ray"


def test_killed_ray_driver_resumes(tmp_path):
    """kill -9 the driver of a Ray run mid-way; the same command finishes it, equal to an uninterrupted run."""
    p = _suite(tmp_path, count=12)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "wmbench.cli", "run", str(p), "--out", str(out), "--no-progress"]
    cmd += ["--executor", "ray", "--workers", "2", "--shard-size", "2"]
    env = {**os.environ, "RAY_DISABLE_IMPORT_WARNING": "1"}
    with (tmp_path / "first.log").open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 240
        while time.time() < deadline and len(RunStore(out).done()) < 6 and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    first = {k: (out / "parts" / f"{k}.parquet").stat().st_mtime_ns for k in RunStore(out).done()}
    assert 6 <= len(first) < 2 * 6 * 6, (tmp_path / "first.log").read_text()[-3000:]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 12 * 2 * 6
    assert not df.duplicated(["image_id", "method", "attack", "strength", "source"]).any()
    for k, mtime in first.items():  # finished parts were not recomputed
        assert (out / "parts" / f"{k}.parquet").stat().st_mtime_ns == mtime
    straight = Runner(load_suite(p), RunOptions(out=tmp_path / "straight", progress=False)).run().rows
    assert_same_values(straight, df)
