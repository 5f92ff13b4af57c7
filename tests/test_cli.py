"""The CLI through typer's test runner."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from wmbench.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_help_lists_commands():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("run", "validate", "list", "report", "score"):
        assert cmd in r.output


@pytest.mark.parametrize("kind", ["methods", "attacks", "metrics"])
def test_list(kind):
    r = runner.invoke(app, ["list", kind], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    expect = {
        "methods": ["dwtdct", "rivagan"],
        "attacks": ["jpeg", "jpeg quality", "gaussian_blur"],
        "metrics": ["lpips", "bit_acc"],
    }[kind]
    for word in expect:
        assert word in r.output


def test_validate_and_dry_run_print_cells():
    r = runner.invoke(app, ["validate", str(REPO / "suites" / "smoke.yaml")])
    assert r.exit_code == 0, r.output
    assert "identity" in r.output and "jpeg" in r.output and "cells" in r.output
    r = runner.invoke(app, ["run", str(REPO / "suites" / "smoke.yaml"), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "embeddings" in r.output


def test_validate_bad_suite_exits_2(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nmethods: [{name: dwtdct}]\nattacks: [{name: jepg}]\n")
    r = runner.invoke(app, ["validate", str(p)])
    assert r.exit_code == 2
    assert "jpeg" in r.output


def test_score_two_files(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    r = runner.invoke(
        app, ["score", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--metrics", "psnr,ssim"]
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert 35 < res["psnr"] < 50 and 0.5 < res["ssim"] <= 1.0


def test_run_smoke_quick_profile_end_to_end(tmp_path, monkeypatch):
    """The shipped smoke suite through the CLI on 2 images: rows, report, summary, its own folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WMBENCH_HOME", str(tmp_path / "home"))
    r = runner.invoke(app, ["run", str(REPO / "suites" / "smoke.yaml"), "--limit", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "results" / "smoke-limit2"
    import pandas as pd

    df = pd.read_parquet(run / "results.parquet")
    assert len(df) == 2 * 4 * (1 + 12)  # images × methods × (clean + identity + 11 attack cells)
    assert set(df.method) == {"dwtdct", "dwtdctsvd", "rivagan", "end2"}
    assert df[df.attack == "regen_local"].attack_bpp.notna().all(), "the codec's rate is kept per row"
    assert (run / "report.html").is_file() and "run folder" in r.output


def test_train_tiny_through_cli(tmp_path):
    r = runner.invoke(
        app, ["train", "tiny", "--out", str(tmp_path / "t"), "--max-steps", "3", "--device", "cpu"]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "t" / "tiny.safetensors").is_file() and (tmp_path / "t" / "tiny.json").is_file()
    r = runner.invoke(app, ["train", "nonexistent_config"])
    assert r.exit_code == 2


def test_list_piped_gives_whole_names_one_row_per_line():
    r = runner.invoke(app, ["list", "attacks"], env={"COLUMNS": "80"})  # CliRunner's stdout is no TTY
    assert r.exit_code == 0, r.output
    rows = {line.split("\t")[0]: line.split("\t") for line in r.output.splitlines()}
    assert rows["attack"][:3] == ["attack", "family", "unit"]
    assert rows["gaussian_noise"][2] == "sigma on [0,1]" and "pgd_remove" in rows


@pytest.mark.parametrize("kind", ["methods", "attacks", "metrics"])
def test_list_json_gives_whole_values(kind):
    r = runner.invoke(app, ["list", kind, "--json"], env={"COLUMNS": "40"})
    assert r.exit_code == 0, r.output
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    if kind == "attacks":
        assert rows["jpeg"]["strength_range"] == [90.0, 10.0] and rows["jpeg"]["unit"] == "jpeg quality"
        assert rows["gaussian_noise"]["default_strengths"] == [0.02, 0.05, 0.1]
    elif kind == "methods":
        assert isinstance(rows["dwtdct"]["nbits"], int) and rows["rivagan"]["description"]
    else:
        assert rows["lpips"]["higher_is_better"] is False and rows["bit_acc"]["kind"] == "bits"


@pytest.mark.parametrize(
    ("argv", "code", "stream", "text"),
    [
        (["list", "methods"], 0, "stdout", "dwtdct"),
        (["params", "no_such_plugin"], 2, "stderr", "unknown method 'no_such_plugin'"),
        (["validate", "/no/such/suite.yaml"], 2, "stderr", "suite file not found"),
    ],
)
def test_console_script_exits_with_the_command_code_and_flushes(argv, code, stream, text, tmp_path):
    """``main`` (the installed ``wmbench``) skips the interpreter's teardown: its exit code and every line the
    command printed must survive that, piped or not, and exit handlers still run."""
    import subprocess
    import sys

    marker = tmp_path / "atexit_ran"
    prog = (
        "import atexit, pathlib, sys; "
        f"atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text('x')); "
        f"sys.argv = ['wmbench', *{argv!r}]; "
        "from wmbench.cli import main; main()"
    )
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, timeout=120)
    assert r.returncode == code, r.stderr
    assert text in getattr(r, stream)
    assert marker.is_file()
