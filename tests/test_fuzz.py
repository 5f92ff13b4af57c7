"""Bad and odd input never ends in a traceback: suites (encodings, types, ranges, YAML tricks), CLI misuse, image
files, damaged run folders and a second writer. Each case must exit non-zero with a message that names the file
or key, write nothing outside the output folder, and lose nothing a finished run wrote."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wmtest_plugins
import yaml
from PIL import Image
from typer.testing import CliRunner

from wmbench.cli import app
from wmbench.runner import FolderLock

cli = CliRunner()
GOOD = {
    "name": "fz",
    "seed": 1,
    "images": {"source": "builtin", "count": 3, "size": 48},
    "methods": [{"name": "test_ss"}],
    "attacks": [{"name": "jpeg", "strengths": [50]}],
    "metrics": ["bit_acc", "psnr"],
}


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("WMBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # anything written relative to the CWD would land here and be caught
    wmtest_plugins.register()


def _invoke(args: list[str]) -> tuple[int, str]:
    r = cli.invoke(app, args, env={"COLUMNS": "300"})
    assert r.exception is None or isinstance(r.exception, SystemExit), f"uncaught {r.exception!r}: {r.output}"
    assert "Traceback" not in r.output, r.output
    return r.exit_code, r.output


def _suite(tmp_path: Path, **over) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump({**GOOD, **over}))
    return p


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# --- suites that are not valid YAML text ------------------------------------------------------------------------
RAW = {
    "latin1": "name: caf\xe9\nmethods: [{name: test_ss}]\n".encode("latin-1"),
    "utf16": "name: x\nmethods: [{name: test_ss}]\n".encode("utf-16"),
    "binary": bytes(range(256)) * 4,
    "deep-list": b"name: x\nmethods: " + b"[" * 3000 + b"]" * 3000 + b"\n",
    "duplicate-key": b"name: x\nname: y\nmethods: [{name: test_ss}]\n",
    "alias-bomb": (
        b"name: x\nmethods: [{name: test_ss, params: {b: *e}}]\nx: &a [1,1,1,1,1,1,1,1,1,1]\n"
        b"y: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]\nz: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
        b"w: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]\nv: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
    ),
    "not-a-mapping": b"- a\n- b\n",
    "empty": b"",
    "tabs": b"name: x\n\tmethods: [{name: test_ss}]\n",
}
RAW_WORDS = {
    "latin1": "UTF-8",
    "utf16": "UTF-16",
    "binary": "binary",
    "deep-list": "nested",
    "duplicate-key": "twice",
    "alias-bomb": "alias",
    "not-a-mapping": "mapping",
    "empty": "mapping",
    "tabs": "YAML",
}


@pytest.mark.parametrize("case", sorted(RAW))
def test_unreadable_suite_files(tmp_path, case):
    p = tmp_path / f"{case}.yaml"
    p.write_bytes(RAW[case])
    code, out = _invoke(["validate", str(p)])
    assert code == 2 and p.name in out.replace("\n", "") and RAW_WORDS[case] in out, out


# --- wrong types and values, key by key ---------------------------------------------------------------------------
BAD = [
    ({"seed": True}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"seed": -1}, "seed"),
    ({"seed": "3"}, "seed"),
    ({"images": {"source": "builtin", "count": True, "size": 48}}, "images.count"),
    ({"images": {"source": "builtin", "count": 0, "size": 48}}, "images.count"),
    ({"images": {"source": "builtin", "count": 3, "size": 48.5}}, "images.size"),
    ({"images": {"source": "builtin", "count": 3, "size": 48, "path": "x"}}, "images"),
    ({"images": {"source": "folder", "path": "nope", "size": 48}}, "images.path"),
    ({"metrics": ["psnr", "psnr"]}, "metrics"),
    ({"metrics": ["psnr", "ssimm"]}, "metrics[1]"),
    ({"name": "n" * 300}, "name"),
    ({"name": "../up"}, "name"),
    ({"batch_size": -1}, "batch_size"),
    ({"batch_size": True}, "batch_size"),
    ({"shard_size": 0}, "shard_size"),
    ({"target_fpr": 0}, "target_fpr"),
    ({"target_fpr": "0.1"}, "target_fpr"),
    ({"extends": 5}, "extends"),
    ({"methods": []}, "methods"),
    ({"methods": [{"name": "test_ss", "label": ""}]}, "methods[0].label"),
    ({"methods": [{"name": "test_ss", "label": "x" * 300}]}, "methods[0].label"),
    ({"methods": [{"name": "nope"}]}, "methods[0].name"),
    ({"attacks": [{"name": "jpeg", "strengths": [True]}]}, "attacks[0].strengths"),
    ({"attacks": [{"name": "jpeg", "strengths": []}]}, "attacks[0].strengths"),
    ({"attacks": [{"name": "jpeg", "strengths": ["50"]}]}, "attacks[0].strengths"),
    ({"attacks": [{"name": "jpeg", "strengths": [50, 50]}]}, "attacks[0]"),
    ({"attacks": [{"name": "jpeg", "relative": [1.5]}]}, "attacks[0]"),
    ({"attacks": [{"name": "jpeg", "strenghts": [50]}]}, "attacks[0].strenghts"),
    ({"attacks": [{"sequence": [{"name": "jpeg", "strength": True}], "strengths": [1]}]}, "attacks[0]"),
]
for name in (
    "rotation",
    "gaussian_noise",
    "sharpness",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "resize",
):
    for v in (float("nan"), float("inf")):
        BAD.append(({"attacks": [{"name": name, "strengths": [v]}]}, "attacks[0].strengths"))
for name, v in (("resize", -1), ("resize", 0), ("crop", 1.5), ("crop", 0), ("crop", -1), ("jpeg", 101)):
    BAD.append(({"attacks": [{"name": name, "strengths": [v]}]}, "attacks[0].strengths[0]"))


@pytest.mark.parametrize(("over", "key"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_bad_values_name_their_key(tmp_path, over, key):
    p = _suite(tmp_path, **over)
    before = _files(tmp_path)
    code, out = _invoke(["validate", str(p)])
    flat = out.replace("\n", "")
    assert code == 2 and "s.yaml" in flat and key in flat, out
    assert _files(tmp_path) == before  # validate writes nothing


# --- CLI misuse -----------------------------------------------------------------------------------------------------
MISUSE = [
    (["--batch-size", "-1"], "batch-size"),
    (["--shard-size", "0"], "shard-size"),
    (["--device", "meta"], "--device"),
    (["--device", "cuda:7"], "--device"),
    (["--device", "banana"], "--device"),
    (["--executor", "dask"], "--executor"),
    (["--executor", "ray", "--workers", "0"], "--workers"),
    (["--limit", "0"], "--limit"),
]


@pytest.mark.parametrize(("extra", "word"), MISUSE, ids=[" ".join(m[0]) for m in MISUSE])
def test_run_misuse(tmp_path, extra, word):
    out_dir = tmp_path / "out"
    code, out = _invoke(["run", str(_suite(tmp_path)), "--out", str(out_dir), "--no-progress", *extra])
    assert code == 2 and word in out, out


def test_out_is_a_file(tmp_path):
    f = tmp_path / "taken"
    f.write_text("x")
    code, out = _invoke(["run", str(_suite(tmp_path)), "--out", str(f), "--no-progress"])
    assert code == 2 and "not a folder" in out and f.read_text() == "x"


# --- run folders: labels, damage, a second writer -------------------------------------------------------------------
def _run(tmp_path: Path, out: Path, **over) -> tuple[int, str]:
    return _invoke(["run", str(_suite(tmp_path, **over)), "--out", str(out), "--no-progress"])


@pytest.mark.parametrize("label", [".v2", "../../x", "..", "a/b\\c", "é ü"])
def test_odd_labels_stay_inside_the_folder(tmp_path, label):
    out = tmp_path / "deep" / "run"
    code, text = _run(tmp_path, out, methods=[{"name": "test_ss", "label": label}])
    assert code == 0, text
    outside = {p for p in _files(tmp_path) if out not in p.parents and "home" not in p.parts}
    assert outside == {tmp_path / "s.yaml"}, outside
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 3 * 3 and set(df.method) == {label}


def test_damaged_and_foreign_parts_are_recomputed_not_merged(tmp_path):
    out = tmp_path / "run"
    assert _run(tmp_path, out)[0] == 0
    ref = pd.read_parquet(out / "results.parquet")
    parts = sorted((out / "parts").glob("*.parquet"))
    parts[0].write_bytes(b"garbage")  # unreadable
    foreign = pd.read_parquet(parts[1]).iloc[:1]  # short, and without the footer a part carries
    foreign.to_parquet(parts[1])
    (out / "parts" / "stray--abc--s00000.parquet").write_bytes(parts[2].read_bytes())  # not in the plan
    code, text = _run(tmp_path, out)
    assert code == 0, text
    again = pd.read_parquet(out / "results.parquet")
    cols = ["image_id", "attack", "bit_acc", "psnr_attacked"]
    pd.testing.assert_frame_equal(ref[cols], again[cols])


def test_garbage_manifest_with_parts_is_refused(tmp_path):
    out = tmp_path / "run"
    assert _run(tmp_path, out)[0] == 0
    (out / "manifest.json").write_text("{not json")
    n_parts = len(list((out / "parts").glob("*.parquet")))
    code, text = _run(tmp_path, out)
    assert code == 2 and "manifest.json" in text and "--fresh" in text
    assert len(list((out / "parts").glob("*.parquet"))) == n_parts  # nothing lost


def test_second_writer_is_refused(tmp_path):
    out = tmp_path / "run"
    with FolderLock(out):
        code, text = _run(tmp_path, out)
        code2, text2 = _invoke(["run", str(_suite(tmp_path)), "--out", str(out), "--fresh", "--no-progress"])
    assert code == code2 == 2 and "another wmbench run" in text and "another wmbench run" in text2


def test_noop_rerun_keeps_wall_time_and_files_follow_umask(tmp_path):
    out = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert _run(tmp_path, out)[0] == 0
        m1 = yaml.safe_load((out / "manifest.json").read_text())
        assert _run(tmp_path, out)[0] == 0
    finally:
        os.umask(old)
    m2 = yaml.safe_load((out / "manifest.json").read_text())
    assert len(m2["attempts"]) == 2 and m2["wall_s"] >= m1["wall_s"]
    assert m2["attempts"][1]["parts_before"] == 3 and m2["status"] == "finished"
    for p in (out / "results.parquet", out / "manifest.json", next((out / "parts").glob("*.parquet"))):
        assert p.stat().st_mode & 0o777 == 0o644, p


# --- runs that end oddly, and misuse of a finished run's commands ---------------------------------------------------
def test_every_cell_skipped_ends_cleanly_and_reports_why(tmp_path):
    out = tmp_path / "run"
    code, text = _run(tmp_path, out, methods=[{"name": "test_noweights"}])
    assert code == 1 and "nothing ran" in text, text
    code, text = _invoke(["report", str(out)])
    assert code == 0 and "report.html" in text, text
    md = (out / "report.md").read_text()
    assert "Nothing ran" in md and "nowhere.safetensors is not installed" in md
    code, text = _invoke(["summarize", str(out), str(tmp_path / "s.json")])
    assert code == 2 and "nothing was measured" in text and not (tmp_path / "s.json").exists()


def test_suite_without_attacks_runs_and_reports(tmp_path):
    out = tmp_path / "run"
    code, text = _run(tmp_path, out, attacks=[])
    assert code == 0, text
    md = (out / "report.md").read_text()
    assert "Image quality" in md and "test_ss" in md
    assert len(pd.read_parquet(out / "results.parquet")) == 3 * 2  # clean + identity per image


MISUSE_DONE = [
    (["compare", "{run}", "{run}", "--tol-acc", "nan"], "--tol-acc"),
    (["compare", "{run}", "{run}", "--tol-acc", "inf"], "--tol-acc"),
    (["compare", "{run}", "{run}", "--tol-acc", "-0.1"], "--tol-acc"),
    (["compare", "{run}", "{run}", "--tol-psnr", "nan"], "--tol-psnr"),
    (["run", "s.yaml", "--out", ""], "--out"),
    (["report", "{run}", "--out", ""], "--out"),
    (["report", "{run}", "--out", "s.yaml"], "not a folder"),
    (["summarize", "{run}", "."], "is a folder"),
    (["summarize", "{run}", ""], "empty"),
]


@pytest.fixture
def done_run(tmp_path) -> Path:
    out = tmp_path / "run"
    assert _run(tmp_path, out)[0] == 0
    return out


@pytest.mark.parametrize(
    ("args", "word"), MISUSE_DONE, ids=[" ".join(a[0][:1] + a[0][3:]) for a in MISUSE_DONE]
)
def test_misuse_on_a_finished_run(tmp_path, done_run, args, word):
    before = _files(tmp_path)
    code, out = _invoke([a.replace("{run}", str(done_run)) for a in args])
    assert code == 2 and word in out.replace("\n", " "), out
    assert _files(tmp_path) == before  # nothing written, in the current folder or elsewhere


# --- image files ----------------------------------------------------------------------------------------------------
def test_odd_image_files_are_skipped_and_counted(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(d / f"ok{i}.png")
    Image.fromarray(np.zeros((1, 65535), dtype=np.uint8)).save(d / "strip.png")
    (d / "dangling.png").symlink_to(d / "missing.png")
    (d / "empty.png").write_bytes(b"")
    (d / "text.jpg").write_text("not an image")
    out = tmp_path / "run"
    code, text = _run(tmp_path, out, images={"source": "folder", "path": str(d), "size": 48, "count": None})
    assert code == 0, text
    m = yaml.safe_load((out / "manifest.json").read_text())
    reasons = {Path(s["path"]).name: s["reason"] for s in m["skipped_files"]}
    assert set(reasons) == {"strip.png", "dangling.png", "empty.png", "text.jpg"}
    assert "aspect" in reasons["strip.png"]
    assert m["images"]["n"] == 3
