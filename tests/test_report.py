"""Reports contain every section and embed their images; compare catches planted regressions."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import wmtest_plugins
import yaml
from typer.testing import CliRunner

from wmbench import analysis
from wmbench.api import WmbenchError
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
    for section in (
        "Ranking (removal attacks)",
        "Image quality",
        "Clean covers: are the decoded bits fair coins?",
        "Paired comparisons: distortion attacks",
        "Robustness: distortion attacks",
        "Plots",
        "Image grids",
    ):
        assert section in md and section in page
    assert "TPR@0.001 analytic" in md and "empirical" in md
    assert "Holm" in md and "Cells (3): jpeg 30, jpeg 90, gaussian_blur 1" in md
    assert re.search(r"\| 1 \| ss_strong \| \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", md)  # rank with its interval
    imgs = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(imgs) >= 5  # 2 curves + scatter + one grid per method
    assert all(len(b) > 1000 for b in imgs)
    assert 'src="http' not in page and 'src="file' not in page  # self-contained
    for name in (
        "glance.png",
        "curves_bit_acc_distortion.png",
        "quality_vs_robustness.png",
        "grid_test_ss.png",
        "grid_ss_strong.png",
    ):
        assert (tmp_path / "out" / name).is_file()


def test_report_reads_at_a_glance(run_dir, tmp_path):
    """Heatmap, then contents, then the ranking; long parts folded; strengths weak -> strong; the CLI prints paths."""
    files = build_report([run_dir], tmp_path / "out")
    md, page = files["md"].read_text(), files["html"].read_text()
    assert md.index("## At a glance") < md.index("**Contents:**") < md.index("## Ranking (removal attacks)")
    assert "](#image-quality)" in md and "<h2 id=image-quality>" in page and "<details>" in page
    assert page.index('alt="method × attack bit accuracy"') < page.index("<nav>")
    piv = md[md.index("## Robustness: distortion attacks") :]
    assert piv.index("| jpeg | 90 |") < piv.index("| jpeg | 30 |")  # quality 90 is the weaker jpeg
    r = cli.invoke(app, ["report", str(run_dir), "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0 and "report.html" in r.output and "## Ranking" not in r.output


def test_strength_signs_follow_strength_range_and_a_sequence_its_swept_step():
    df = pd.DataFrame(
        {
            "attack": ["jpeg", "gaussian_blur", "blur+jpeg", "x"],
            "attack_name": ["jpeg", "gaussian_blur", "sequence", "nope"],
        }
    )
    seq = [{"name": "gaussian_blur", "strength": 1.0}, {"name": "jpeg", "strength": None}]
    man = {"suite": {"attacks": [{"label": "blur+jpeg", "sequence": seq}]}}
    assert analysis.strength_signs(df, [man]) == {"jpeg": -1, "gaussian_blur": 1, "blur+jpeg": -1, "x": 1}


def test_report_merges_runs(run_dir, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    files = build_report([run_dir, other], tmp_path / "merged")
    assert files["md"].read_text().count("test_ss [rep]") >= 2  # same label from two runs kept apart


@pytest.mark.parametrize(
    ("key", "value", "word"),
    [("seed", 7, "seed"), ("target_fpr", 0.01, "target FPR"), ("images", {"sha256": "0" * 64}, "image set")],
)
def test_report_refuses_runs_that_differ_unless_pooled(run_dir, tmp_path, key, value, word):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    man = json.loads((other / "manifest.json").read_text())
    man[key] = {**man[key], **value} if isinstance(value, dict) else value
    (other / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(WmbenchError, match=f"differ in {word}.*--pool"):
        build_report([run_dir, other], tmp_path / "refused")
    r = cli.invoke(app, ["report", str(run_dir), str(other), "--out", str(tmp_path / "cli"), "--quiet"])
    assert r.exit_code == 2 and "--pool" in r.output
    md = build_report([run_dir, other], tmp_path / "pooled", pool=True)["md"].read_text()
    assert f"Pooled runs that differ in {word}" in md


def test_summary_has_intervals_pairs_and_ranking(run_dir, tmp_path):
    p = write_summary(run_dir, tmp_path / "s.json")
    data = json.loads(p.read_text())
    cell = next(c for c in data["cells"] if c["attack"] == "jpeg" and c["strength"] == 30)
    for f in ("bit_acc", "tpr", "psnr"):
        lo, hi = cell[f"{f}_ci"]
        assert lo <= cell[f] <= hi and lo < hi
    assert {"a", "b", "attack", "strength", "diff", "ci", "p_value", "p_holm"} <= set(data["pairs"][0])
    assert len(data["pairs"]) == 4  # one pair of methods x (identity + 3 attack cells)
    assert [r["method"] for r in data["ranking"]] == ["ss_strong", "test_ss"]
    assert all(r["ci"][0] <= r["score"] <= r["ci"][1] for r in data["ranking"])
    assert {(c["attack"], c["strength"]) for c in data["ranking_cells"]} == {
        ("jpeg", 90.0),
        ("jpeg", 30.0),
        ("gaussian_blur", 1.0),
    }
    assert "nan" not in p.read_text().lower()  # strict JSON


def test_compare_reads_old_and_new_summaries(run_dir, tmp_path):
    new = write_summary(run_dir, tmp_path / "new.json")
    old = json.loads(new.read_text())
    old["cells"] = [
        {
            k: v
            for k, v in c.items()
            if k in ("method", "attack", "strength", "n", "unit", "bit_acc", "tpr", "psnr")
        }
        for c in old["cells"]
    ]
    (tmp_path / "old.json").write_text(json.dumps({"cells": old["cells"]}))
    for a, b in ((tmp_path / "old.json", new), (new, tmp_path / "old.json"), (new, run_dir)):
        r = cli.invoke(app, ["compare", str(a), str(b), "--all"])
        assert r.exit_code == 0, r.output
    assert "0 regressions" in r.output
    t = compare(load_summary(tmp_path / "old.json"), load_summary(new)).table
    assert t["bit_acc_lo_base"].isna().all() and (t["bit_acc_lo_new"] <= t["bit_acc_new"]).all()


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


def test_report_and_compare_import_no_torch(run_dir: Path, tmp_path: Path) -> None:
    """`wmbench report` and `summarize` need pandas, scipy and matplotlib, not torch (seconds and ~500 MB)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from wmbench.analysis import class_goal\n"
        "from wmbench.compare import write_summary\n"
        "from wmbench.report import build_report\n"
        "assert class_goal('pgd_forge') == 'forgery' and class_goal('jpeg') == 'removal'\n"
        f"build_report([Path({str(run_dir)!r})], Path({str(tmp_path / 'rep')!r}))\n"
        f"write_summary(Path({str(run_dir)!r}), Path({str(tmp_path / 's.json')!r}))\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_robustness_pivot_gives_the_attacked_psnr_next_to_bit_accuracy(run_dir, tmp_path):
    """Issue 11: how far an attack moved the image sits beside what it did to the bits (mean over methods)."""
    md = build_report([run_dir], tmp_path / "out")["md"].read_text()
    sec = md[md.index("## Robustness: distortion attacks") :]
    header = next(ln for ln in sec.splitlines() if ln.startswith("| attack |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols[:4] == ["attack", "strength", "unit", "PSNR attacked"]
    first = next(ln for ln in sec.splitlines() if ln.startswith("| jpeg |"))
    assert 15 < float(first.strip("|").split("|")[3]) < 60
