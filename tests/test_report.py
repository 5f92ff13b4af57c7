"""Reports contain every section and embed their images; compare catches planted regressions."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import wmtest_plugins
import yaml
from typer.testing import CliRunner

from wmbench.cli import app
from wmbench.compare import compare, load_summary, write_summary
from wmbench.report import build_report
from wmbench.runner import Runner, RunOptions
from wmbench.suite import load_suite

cli = CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("rep")
    mp = pytest.MonkeyPatch()
    mp.setenv("WMBENCH_HOME", str(tmp / "home"))
    wmtest_plugins.register()
    data = {
        "name": "rep",
        "images": {"source": "builtin", "count": 3, "size": 64},
        "methods": [{"name": "test_ss"}, {"name": "test_ss", "label": "ss_strong", "params": {"amp": 12.0}}],
        "attacks": [{"name": "jpeg", "strengths": [90, 30]}, {"name": "gaussian_blur", "strengths": [1.0]}],
        "metrics": ["bit_acc", "psnr", "ssim", "lpips"],
    }
    p = tmp / "s.yaml"
    p.write_text(yaml.safe_dump(data))
    Runner(load_suite(p), RunOptions(out=tmp / "run", progress=False)).run()
    yield tmp / "run"
    mp.undo()


def test_report_has_every_section_and_embeds_images(run_dir, tmp_path):
    files = build_report([run_dir], tmp_path / "out")
    md, page = files["md"].read_text(), files["html"].read_text()
    for section in ("Leaderboard", "Image quality", "Robustness: distortion attacks", "Plots", "Image grids"):
        assert section in md and section in page
    assert "TPR@0.001 analytic" in md and "empirical" in md
    imgs = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(imgs) >= 5  # 2 curves + scatter + one grid per method
    assert all(len(b) > 1000 for b in imgs)
    assert 'src="http' not in page and 'src="file' not in page  # self-contained
    for name in ("curves_bit_acc.png", "quality_vs_robustness.png", "grid_test_ss.png", "grid_ss_strong.png"):
        assert (tmp_path / "out" / name).is_file()


def test_report_merges_runs(run_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    files = build_report([run_dir, other], tmp_path / "merged")
    assert files["md"].read_text().count("test_ss [rep]") >= 2  # same label from two runs kept apart


def test_compare_identical_is_0_and_planted_regression_is_1(run_dir, tmp_path):
    r = cli.invoke(app, ["compare", str(run_dir), str(run_dir)])
    assert r.exit_code == 0, r.output
    base = tmp_path / "base.json"
    write_summary(run_dir, base)
    assert compare(load_summary(base), load_summary(run_dir)).regressed is False
    # plant a regression: bit accuracy of one cell drops by 0.1
    bad = tmp_path / "bad"
    shutil.copytree(run_dir, bad)
    df = pd.read_parquet(bad / "results.parquet")
    hit = (df.attack == "jpeg") & (df.strength == 30) & (df.method == "test_ss")
    df.loc[hit, "bit_acc"] -= 0.1
    df.to_parquet(bad / "results.parquet")
    r = cli.invoke(app, ["compare", str(base), str(bad)])
    assert r.exit_code == 1
    assert "REGRESSION" in r.output and "1 regressions" in r.output
    # and a missing cell is reported and fails
    df = df[~((df.attack == "gaussian_blur") & (df.method == "ss_strong"))]
    df.to_parquet(bad / "results.parquet")
    res = compare(load_summary(base), load_summary(bad))
    assert res.missing == [("ss_strong", "gaussian_blur", 1.0)] and res.regressed
