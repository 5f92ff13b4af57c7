"""End-to-end runs: tidy rows, determinism, cache, resume after kill -9, --fresh, errors kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wmtest_plugins
import yaml

from wmbench.api import WmbenchError
from wmbench.runner import Runner, RunOptions, message_for
from wmbench.store import RunStore
from wmbench.suite import load_suite

TESTS = Path(__file__).resolve().parent

REQUIRED = [
    "image_id",
    "method",
    "attack",
    "strength",
    "unit",
    "bit_acc",
    "word_acc",
    "p_value",
    "psnr",
    "ssim",
    "lpips",
    "psnr_attacked",
    "detected",
    "logits",
    "message",
    "source",
    "t_embed",
    "t_attack",
    "t_extract",
]


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("WMBENCH_HOME", str(tmp_path / "home"))
    wmtest_plugins.register()


def _suite(tmp_path: Path, **over) -> Path:
    data = {
        "name": "rt",
        "seed": 3,
        "images": {"source": "builtin", "count": 4, "size": 64},
        "methods": [{"name": "test_ss"}],
        "attacks": [{"name": "jpeg", "strengths": [90, 50]}, {"name": "gaussian_noise", "strengths": [0.02]}],
        "metrics": ["bit_acc", "psnr", "ssim", "lpips"],
        "batch_size": 3,
        **over,
    }
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _run(path: Path, out: Path, **kw) -> pd.DataFrame:
    return Runner(load_suite(path), RunOptions(out=out, progress=False, **kw)).run().rows


def test_rows_are_tidy_and_complete(tmp_path):
    df = _run(_suite(tmp_path), tmp_path / "run")
    for c in REQUIRED:
        assert c in df.columns, c
    # 4 images × (clean + identity + 2 jpeg + 1 noise)
    assert len(df) == 4 * 5
    assert not df.duplicated(["image_id", "method", "attack", "strength", "source"]).any()
    wm = df[df.source == "watermarked"]
    ident = wm[wm.attack == "identity"]
    assert ident.bit_acc.mean() > 0.95
    assert (ident.psnr > 30).all() and (ident.lpips > 0).all() and (ident.lpips < 0.3).all()
    assert set(df[df.source == "clean"].attack) == {"__clean__"}
    # messages come from the seed per image, logits are stored raw
    row = df.iloc[0]
    assert row.message == "".join(str(int(b)) for b in message_for(3, row.image_id, 16).tolist())
    assert len(row.logits) == 16
    assert (RunStore(tmp_path / "run").manifest_path).is_file()


def test_attack_stats_become_columns(tmp_path):
    """Per-image ``attack.last_stats`` (e.g. compressai's bpp) are kept as ``attack_<name>`` columns."""
    df = _run(_suite(tmp_path, attacks=[{"name": "test_stat", "strengths": [0.0]}]), tmp_path / "run")
    cell = df[df.attack == "test_stat"]
    assert cell.attack_mean_in.notna().all() and "attack_ignored_scalar" not in df
    assert df[df.attack == "identity"].attack_mean_in.isna().all()
    wm = df[df.source == "watermarked"]
    means = {r.image_id: r.attack_mean_in for r in cell.itertuples()}
    assert len(set(means.values())) == len(means) == 4, "one value per image, not per batch"
    assert wm.psnr.notna().all()


def test_same_seed_same_values_and_cache_reuse(tmp_path):
    p = _suite(tmp_path)
    a = _run(p, tmp_path / "a")
    b = _run(p, tmp_path / "b")  # second run reads the watermark cache
    cols = ["bit_acc", "p_value", "psnr", "ssim", "lpips", "psnr_attacked"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert np.array_equal(np.stack(a.logits), np.stack(b.logits))
    c = _run(_suite(tmp_path, seed=4), tmp_path / "c")
    assert not np.array_equal(np.stack(a.logits), np.stack(c.logits))


def test_changed_suite_in_same_folder_needs_fresh(tmp_path):
    _run(_suite(tmp_path), tmp_path / "run")
    with pytest.raises(WmbenchError, match="--fresh"):
        _run(_suite(tmp_path, seed=9), tmp_path / "run")
    df = _run(_suite(tmp_path, seed=9), tmp_path / "run", fresh=True)
    assert (df.seed == 9).all() and len(df) == 20


def test_readers_leave_a_live_writers_temp_file_alone(tmp_path):
    """``done()`` (reports, a poller) must not delete another process's half-written part; a new run sweeps it."""
    store = RunStore(tmp_path / "run")
    store.parts.mkdir(parents=True)
    tmp = store.parts / ".tmp-live.parquet"
    tmp.write_bytes(b"half")
    assert store.done() == set() and tmp.exists()
    _run(_suite(tmp_path), tmp_path / "run")
    assert not tmp.exists() and len(store.done()) == 5


def test_resume_after_kill_9(tmp_path):
    """Kill the run in the middle; the rerun keeps finished cells, adds the rest, no duplicates or gaps."""
    # one image per shard: four units of 8 parts each, so a kill after the first unit lands mid-run (a unit's
    # parts are written together, within milliseconds: one unit could not be caught half-written)
    slow = [{"name": "test_slow", "strengths": [0.3, 0.31, 0.32, 0.33, 0.34, 0.35]}]
    p = _suite(tmp_path, attacks=slow, shard_size=1)
    out = tmp_path / "run"
    code = (
        f"import sys; sys.path.insert(0, {str(TESTS)!r}); import wmtest_plugins; wmtest_plugins.register(); "
        "from wmbench.cli import app; sys.argv=['wmbench'] + sys.argv[1:]; app()"
    )
    cmd = [sys.executable, "-c", code, "run", str(p), "--out", str(out), "--no-progress"]
    env = {**os.environ}
    log = (tmp_path / "first.log").open("w")  # a file, not a pipe: a full pipe would block the child
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and len(RunStore(out).done()) < 8:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    log.close()
    first = {k: (out / "parts" / f"{k}.parquet").stat().st_mtime_ns for k in RunStore(out).done()}
    assert 8 <= len(first) < 4 * 8, (
        "the kill should land mid-run:\n" + (tmp_path / "first.log").read_text()[-3000:]
    )
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 4 * 8
    assert not df.duplicated(["image_id", "attack", "strength", "source"]).any()
    for k, mtime in first.items():  # finished cells were not recomputed
        assert (out / "parts" / f"{k}.parquet").stat().st_mtime_ns == mtime
    # and the resumed run equals an uninterrupted one
    full = _run(p, tmp_path / "full")
    key = ["attack", "strength", "image_id", "source"]
    a = df.sort_values(key).reset_index(drop=True)
    b = full.sort_values(key).reset_index(drop=True)
    pd.testing.assert_series_equal(a.bit_acc, b.bit_acc)
    pd.testing.assert_series_equal(a.psnr_attacked, b.psnr_attacked)


def test_failing_attack_is_recorded_and_others_kept(tmp_path, monkeypatch):
    from wmbench.attacks.noise import GaussianNoise

    def boom(self, *a, **k):
        raise RuntimeError("planted failure")

    monkeypatch.setattr(GaussianNoise, "apply", boom)
    res = Runner(load_suite(_suite(tmp_path)), RunOptions(out=tmp_path / "run", progress=False)).run()
    assert len(res.errors) == 1 and "planted failure" in res.errors[0]["error"]
    assert len(res.rows) == 4 * 4  # every other cell is there
    assert res.manifest["errors"][0]["attack"] == "gaussian_noise"


def test_resume_refuses_when_the_shipped_weights_changed(tmp_path):
    """A run records every shipped model's hash; resuming after one changed (a newer wmbench) would mix two
    models' results, so it is refused with the model named and --fresh offered. Models added since, or a run from
    before the hashes were recorded, resume as before."""
    import json

    suite, out = _suite(tmp_path), tmp_path / "run"
    first = _run(suite, out)
    man_path = out / "manifest.json"
    man = json.loads(man_path.read_text())
    stem = sorted(man["shipped_weights"])[0]
    man["shipped_weights"][stem] = "0" * 64
    man["shipped_weights"]["a_model_removed_since"] = "1" * 64
    man_path.write_text(json.dumps(man))
    with pytest.raises(WmbenchError, match=rf"other shipped weights: {stem} changed.*--fresh"):
        _run(suite, out)
    del man["shipped_weights"]  # a run from before they were recorded
    man_path.write_text(json.dumps(man))
    pd.testing.assert_frame_equal(_run(suite, out), first)
    again = _run(suite, out, fresh=True)
    assert len(again) == len(first)
