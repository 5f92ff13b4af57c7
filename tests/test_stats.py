"""Intervals cover what they claim, shrink like 1/sqrt(n); rankings use only shared removal cells."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from wmbench import analysis, stats

REPS = 2000  # coverage standard error ~0.5 %, so the ±2 % band is 4 standard errors wide


def _coverage(draw, interval, truth: float, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(REPS):
        lo, hi = interval(draw(rng))
        hits += lo <= truth <= hi
    return hits / REPS


def test_t_interval_covers_95_percent():
    cov = _coverage(lambda r: r.normal(36.0, 2.5, 20), lambda x: stats.t_mean(x).ci, 36.0)
    assert 0.93 <= cov <= 0.97


def test_clopper_pearson_covers_95_percent():
    cov = _coverage(lambda r: r.binomial(200, 0.3), lambda k: stats.clopper_pearson(int(k), 200).ci, 0.3)
    assert 0.93 <= cov <= 0.97


def test_bit_accuracy_interval_covers_95_percent_on_overdispersed_images():
    """Images differ in difficulty (per-image accuracy ~ Beta(17, 3), 32 bits each): the realistic case."""

    def draw(r: np.random.Generator) -> np.ndarray:
        return r.binomial(32, r.beta(17, 3, 24))

    cov = _coverage(draw, lambda m: stats.bit_accuracy(m, np.full(m.size, 32)).ci, 0.85)
    assert 0.93 <= cov <= 0.97


def test_paired_t_interval_covers_the_true_difference():
    def draw(r: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        z = r.normal(0.8, 0.1, 16)  # shared image difficulty: pairing removes it
        return z + r.normal(0.05, 0.03, 16), z + r.normal(0.0, 0.03, 16)

    def interval(ab: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
        res = stats.paired_t(*ab)
        return res.lo, res.hi

    cov = _coverage(draw, interval, 0.05)
    assert 0.93 <= cov <= 0.97


@pytest.mark.parametrize(
    "width",
    [
        lambda r, n: np.diff(stats.t_mean(r.normal(0, 1, n)).ci)[0],
        lambda r, n: np.diff(stats.clopper_pearson(int(r.binomial(n, 0.2)), n).ci)[0],
        lambda r, n: np.diff(stats.bit_accuracy(r.binomial(32, r.beta(17, 3, n)), np.full(n, 32)).ci)[0],
    ],
    ids=["t", "clopper-pearson", "bit_acc"],
)
def test_interval_width_shrinks_like_one_over_sqrt_n(width):
    r = np.random.default_rng(1)
    w = {n: np.mean([width(r, n) for _ in range(200)]) for n in (25, 100, 400)}
    assert w[25] / w[100] == pytest.approx(2.0, rel=0.12)
    assert w[100] / w[400] == pytest.approx(2.0, rel=0.12)


def test_degenerate_cells_still_get_an_interval():
    e = stats.bit_accuracy(np.full(16, 32), np.full(16, 32))  # every image perfect
    assert e.value == 1.0 and e.hi == 1.0 and 0.98 < e.lo < 1.0
    assert stats.clopper_pearson(0, 16).hi == pytest.approx(1 - 0.025 ** (1 / 16))


def test_paired_t_matches_scipy_and_holm_matches_hand_computation():
    r = np.random.default_rng(2)
    a, b = r.normal(0.8, 0.1, 12), r.normal(0.75, 0.1, 12)
    res = stats.paired_t(a, b)
    assert res.p_value == pytest.approx(st.ttest_rel(a, b).pvalue)
    assert res.diff == pytest.approx(float(np.mean(a - b)))
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    assert np.isnan(stats.holm([np.nan, 0.01])[0])


def test_fairness_flags_biased_and_correlated_bits_and_passes_fair_ones():
    r = np.random.default_rng(3)
    assert stats.fairness(r.integers(0, 2, (2000, 32)))["fair"]
    assert not stats.fairness((r.random((2000, 32)) < 0.56).astype(int))["fair"]  # biased
    same = r.random(2000) < 0.2  # a fifth of the images decode one coin repeated: balanced, correlated
    bits = r.integers(0, 2, (2000, 32))
    bits[same] = r.integers(0, 2, (int(same.sum()), 1))
    f = stats.fairness(bits)
    assert not f["fair"] and f["balance_p"] > 0.005 and f["variance_ratio"] > 2


# ------------------------------------------------------------------------------ rankings


def _frame(values: dict[tuple[str, str, float], float], n: int = 12, seed: int = 4) -> pd.DataFrame:
    """Rows of a results table: (method, attack, strength) -> mean bit accuracy over n images, 32 bits."""
    names = {"blur+forge": "sequence"}
    fams = {"jpeg": "distortion", "gaussian_blur": "distortion", "regen_local": "regeneration"}
    r = np.random.default_rng(seed)
    rows = []
    for (method, attack, strength), p in values.items():
        m = r.binomial(32, p, n)
        for i in range(n):
            rows.append(
                {
                    "method": method,
                    "attack": attack,
                    "attack_name": names.get(attack, attack),
                    "family": fams.get(attack, "adversarial"),
                    "strength": strength,
                    "unit": "u",
                    "source": "watermarked",
                    "image_id": f"img{i}",
                    "matches": int(m[i]),
                    "nbits": 32,
                    "bit_acc": m[i] / 32,
                    "word_acc": float(m[i] == 32),
                    "detected": bool(m[i] >= 26),
                    "psnr": 40.0,
                    "psnr_attacked": 30.0,
                    "ssim": 0.98,
                    "lpips": 0.01,
                }
            )
    return pd.DataFrame(rows)


SEQ_MANIFEST = {
    "suite": {
        "attacks": [{"label": "blur+forge", "sequence": [{"name": "gaussian_blur"}, {"name": "pgd_forge"}]}]
    }
}


def test_ranking_uses_only_shared_removal_cells_and_never_forgery():
    vals = {}
    for m, base in (("A", 0.70), ("B", 0.80), ("C", 0.75)):
        vals[(m, "identity", 0.0)] = 1.0
        vals[(m, "jpeg", 50.0)] = base
        vals[(m, "regen_local", 0.5)] = base - 0.1
        vals[(m, "pgd_forge", 8.0)] = 1.0 if m == "A" else 0.5  # A forged perfectly: must not lift A
        vals[(m, "blur+forge", 1.0)] = 1.0 if m == "A" else 0.5  # a sequence with a forgery step
    vals[("B", "pgd_remove", 8.0)] = 0.2  # only B ran it: left out, or B would drop
    vals[("A", "gaussian_blur", 1.0)] = 1.0  # only A ran it: left out, or A would rise
    wm = analysis.watermarked(_frame(vals), [SEQ_MANIFEST])
    assert set(wm[wm["goal"] == "forgery"]["attack"]) == {"pgd_forge", "blur+forge"}
    r = analysis.rank(wm)
    assert r.cells == [("jpeg", 50.0), ("regen_local", 0.5)]
    assert {(x["attack"], tuple(x["missing"])) for x in r.left_out} == {
        ("pgd_remove", ("A", "C")),
        ("gaussian_blur", ("B", "C")),
    }
    assert list(r.table["method"]) == ["B", "C", "A"]
    assert (r.table["score_lo"] <= r.table["score"]).all() and (r.table["score"] <= r.table["score_hi"]).all()
    f = analysis.rankings(wm)["forgery"]
    assert set(f.cells) == {("pgd_forge", 8.0), ("blur+forge", 1.0)}
    assert list(f.table["method"])[-1] == "A"  # lower is better: the perfect forgery ranks last
    fam = analysis.rankings(wm)
    assert fam["distortion"].cells == [("jpeg", 50.0)] and fam["regeneration"].cells == [("regen_local", 0.5)]


def test_pairwise_differences_are_paired_and_holm_adjusted():
    vals = {("A", "jpeg", 50.0): 0.9, ("B", "jpeg", 50.0): 0.6, ("A", "jpeg", 90.0): 0.95}
    wm = analysis.watermarked(_frame(vals, n=20))
    pairs = analysis.pairwise(wm)
    assert len(pairs) == 1  # B did not run jpeg 90
    row = pairs.iloc[0]
    a = wm[(wm.method == "A") & (wm.strength == 50.0)]["bit_acc"].to_numpy()
    b = wm[(wm.method == "B") & (wm.strength == 50.0)]["bit_acc"].to_numpy()
    assert row["diff"] == pytest.approx((a - b).mean()) and row["p_value"] == pytest.approx(
        st.ttest_rel(a, b).pvalue
    )
    assert row["p_holm"] == row["p_value"] and row["lo"] < row["diff"] < row["hi"]
    mat = analysis.family_matrix(pairs, "distortion")
    assert mat.set_index("row − column").loc["A", "B"].endswith("(1/0)")


@pytest.mark.parametrize("n", [1, 2, 5, 16, 64, 1000, 30_000])
def test_distribution_functions_equal_scipy_stats(n):
    """stats.py calls scipy.special's kernels directly (scipy.stats costs ~1 s to import): the same values."""
    for k in sorted({0, 1, n // 3, n - 1, n}):
        e = stats.clopper_pearson(k, n)
        lo = 0.0 if k == 0 else st.beta.ppf(0.025, k, n - k + 1)
        hi = 1.0 if k == n else st.beta.ppf(0.975, k + 1, n - k)
        assert (e.lo, e.hi) == pytest.approx((lo, hi), rel=1e-12, abs=1e-15)
    rs = np.random.default_rng(n)
    a, b = rs.normal(size=n + 1), rs.normal(0.2, 2.0, size=n + 1)
    t = stats.t_mean(a)
    half = st.t.ppf(0.975, n) * a.std(ddof=1) / np.sqrt(n + 1)
    assert (t.lo, t.hi) == pytest.approx((a.mean() - half, a.mean() + half), rel=1e-12)
    res = stats.paired_t(a, b)
    ref = st.ttest_rel(a, b)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
    assert (res.lo, res.hi) == pytest.approx(tuple(ref.confidence_interval()), rel=1e-12)
    w = stats.welch_t(a, b)
    ref_w = st.ttest_ind(a, b, equal_var=False)
    assert w.p_value == pytest.approx(ref_w.pvalue, rel=1e-9, abs=1e-300)
    assert (w.lo, w.hi) == pytest.approx(tuple(ref_w.confidence_interval()), rel=1e-12)
    bits = (rs.random((n + 1, 16)) < 0.5).astype(np.int64)
    ones = bits.sum(0)
    assert stats.bit_balance_p(bits) == pytest.approx(
        st.chi2.sf((((2 * ones - (n + 1)) ** 2) / (n + 1)).sum(), 16), rel=1e-12
    )
    counts = rs.binomial(30, 0.5, size=n + 1)
    ratio, p = stats.dispersion_p(counts, 30)
    stat = n * counts.var(ddof=1) / 7.5
    assert p == pytest.approx(min(1.0, 2 * min(st.chi2.sf(stat, n), st.chi2.cdf(stat, n))), rel=1e-12)
    gof = stats.binomial_gof(counts, 30)
    assert gof["expected"] == [round(float(x), 3) for x in (n + 1) * st.binom.pmf(np.arange(31), 30, 0.5)]
    if gof["dof"] > 0:
        assert gof["p_value"] == pytest.approx(st.chi2.sf(gof["statistic"], gof["dof"]), rel=1e-12)


@pytest.mark.parametrize("k", [30, 256, 1024, 4096])
def test_binomial_gof_stays_finite_for_long_payloads(k):
    """Expected counts in log space: n·C(k, j)·2^-k neither overflows nor underflows at k = 4096 bits."""
    rs = np.random.default_rng(k)
    counts = rs.binomial(k, 0.5, size=2000)
    gof = stats.binomial_gof(counts, k)
    exp = np.asarray(gof["expected"])
    assert np.isfinite(exp).all() and abs(exp.sum() - 2000) < 0.01 * 2000
    assert gof["dof"] > 0 and np.isfinite(gof["p_value"]) and gof["p_value"] > 1e-4  # fair coins pass
    ref = 2000 * st.binom.pmf(np.arange(k + 1), k, 0.5)
    assert np.allclose(exp, np.round(ref, 3), rtol=1e-6, atol=2e-3)
