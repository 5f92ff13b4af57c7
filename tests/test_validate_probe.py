"""`wmbench validate` says what a run here would skip, with the run's own messages (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from wmbench.cli import app

SUITE = """name: probe
seed: 0
images: {{source: builtin, split: eval, count: 2, size: 64}}
methods:
  - {{name: dwtdct}}
  - {{name: hidden, params: {{weights: {stem}}}}}
attacks:
  - {{name: jpeg, strengths: [50]}}
  - {{name: sd_vae, params: {{model: {folder}}}, strengths: [1]}}
metrics: [bit_acc, psnr]
"""


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(SUITE.format(stem="not_shipped_here", folder=tmp_path / "no_such_vae"))
    return p


def test_validate_reports_missing_weights_and_model_folder(suite: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["validate", str(suite)])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "would skip method hidden" in text and "not_shipped_here" in text
    assert "would skip attack sd_vae" in text and "no_such_vae" in text
    assert "would skip attack jpeg" not in text and "would skip method dwtdct" not in text
    assert "2 would be skipped" in text


def test_strict_exits_1_and_no_probe_skips_the_check(suite: Path) -> None:
    assert CliRunner().invoke(app, ["validate", str(suite), "--strict"]).exit_code == 1
    r = CliRunner().invoke(app, ["validate", str(suite), "--no-probe", "--strict"])
    assert r.exit_code == 0 and "would skip" not in r.output


def test_same_message_as_the_run(suite: Path, tmp_path: Path) -> None:
    """The run records exactly the reasons validate printed."""
    import json

    v = CliRunner().invoke(app, ["validate", str(suite)])
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["run", str(suite), "--out", str(out), "--no-progress"])
    assert r.exit_code in (0, 1), r.output
    skipped = json.loads((out / "manifest.json").read_text())["skipped_cells"]
    reasons = {s["reason"] for s in skipped}
    flat = " ".join(v.output.split())
    assert reasons and all(" ".join(reason.split()) in flat for reason in reasons)
