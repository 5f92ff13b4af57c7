"""The CI regression baseline is read and checked by .ci/run, and matches suites/ci.yaml cell for cell."""

from __future__ import annotations

from pathlib import Path

from wmbench.compare import load_summary
from wmbench.suite import expand, load_suite

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO / "results" / "baselines" / "ci.json"


def test_ci_script_runs_the_suite_and_compares_with_the_baseline():
    script = (REPO / ".ci" / "run").read_text()
    assert "pytest" in script
    assert "wmbench run suites/ci.yaml" in script
    assert "wmbench compare results/baselines/ci.json" in script


def test_baseline_covers_every_cell_of_the_ci_suite():
    """A changed ci.yaml without a refreshed baseline fails here, not silently in CI."""
    plan = expand(load_suite(REPO / "suites" / "ci.yaml"))
    want = {(m.label, a.label, float(s)) for m in plan.methods for a in plan.attacks for s in a.strengths}
    base = load_summary(BASELINE)
    have = {(r.method, r.attack, float(r.strength)) for r in base.itertuples()}
    assert want == have
    assert (base["n"] == plan.suite.images.count).all()
    assert base["bit_acc"].between(0, 1).all() and base["psnr"].gt(20).all()
