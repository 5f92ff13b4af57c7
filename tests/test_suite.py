"""Suite validation: strict keys with file + key path, did-you-mean names, extends, expansion."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wmbench.api import WmbenchError
from wmbench.suite import expand, load_suite, suite_hash

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "name": "t",
    "seed": 0,
    "images": {"source": "builtin", "count": 2, "size": 64},
    "methods": [{"name": "dwtdct"}],
    "attacks": [{"name": "jpeg", "strengths": [90, 50]}],
    "metrics": ["bit_acc", "psnr"],
}


def _write(tmp_path: Path, data: dict, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_valid_suite_expands_with_identity_first(tmp_path):
    s = load_suite(_write(tmp_path, BASE))
    plan = expand(s)
    assert [a.label for a in plan.attacks] == ["identity", "jpeg"]
    assert plan.attacks[1].strengths == [90.0, 50.0]
    assert plan.n_cells_per_method == 3


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        (
            {"attacks": [{"name": "jpeg", "strenghts": [50]}]},
            "attacks[0].strenghts: unknown key (did you mean 'strengths'?)",
        ),
        ({"imges": {}}, "imges: unknown key (did you mean 'images'?)"),
        ({"images": {"source": "builtin", "size": 64, "cnt": 2}}, "images.cnt: unknown key"),
        ({"methods": [{"name": "dwtdtc"}]}, "Did you mean 'dwtdct'"),
        ({"attacks": [{"name": "jpg"}]}, "Did you mean 'jpeg'"),
        ({"metrics": ["lpis"]}, "Did you mean 'lpips'"),
        ({"attacks": [{"name": "jpeg", "relative": [1.5]}]}, "outside [0, 1]"),
        ({"methods": [{"name": "dwtdct", "params": {"bogus": 1}}]}, "methods[0].params"),
        ({"methods": [{"name": "dwtdct"}, {"name": "dwtdct"}]}, "appears twice"),
        ({"images": {"source": "folder", "size": 64}}, "needs a 'path'"),
    ],
)
def test_errors_name_file_and_key(tmp_path, patch, needle):
    p = _write(tmp_path, {**BASE, **patch})
    with pytest.raises(WmbenchError) as ei:
        load_suite(p)
    msg = str(ei.value)
    assert str(p) in msg
    assert needle in msg


def test_extends_merges_dicts_and_replaces_lists(tmp_path):
    _write(tmp_path, BASE, "base.yaml")
    child = {
        "extends": "base.yaml",
        "name": "child",
        "images": {"count": 3},
        "attacks": [{"name": "gaussian_blur"}],
    }
    s = load_suite(_write(tmp_path, child, "child.yaml"))
    assert s.name == "child"
    assert s.images.count == 3 and s.images.size == 64  # merged
    assert [a.name for a in s.attacks] == ["gaussian_blur"]  # replaced
    assert s.methods[0].name == "dwtdct"  # inherited


def test_extends_loop_is_an_error(tmp_path):
    _write(tmp_path, {**BASE, "extends": "b.yaml"}, "a.yaml")
    _write(tmp_path, {**BASE, "extends": "a.yaml"}, "b.yaml")
    with pytest.raises(WmbenchError, match="loops"):
        load_suite(tmp_path / "a.yaml")


def test_relative_strengths_map_onto_unit(tmp_path):
    s = load_suite(_write(tmp_path, {**BASE, "attacks": [{"name": "jpeg", "relative": [0.0, 1.0]}]}))
    a = expand(s).attacks[1]
    lo, hi = a.attack.strength_range
    assert a.strengths == [lo, hi]
    assert a.relative == [0.0, 1.0]


def test_hash_ignores_device_but_not_seed(tmp_path):
    a = load_suite(_write(tmp_path, BASE))
    b = load_suite(_write(tmp_path, {**BASE, "device": "cpu"}, "b.yaml"))
    c = load_suite(_write(tmp_path, {**BASE, "seed": 1}, "c.yaml"))
    assert suite_hash(a) == suite_hash(b) != suite_hash(c)


@pytest.mark.parametrize("path", sorted((REPO / "suites").glob("*.yaml")), ids=lambda p: p.name)
def test_committed_suites_validate(path):
    load_suite(path)
