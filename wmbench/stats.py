"""Uncertainty for every figure wmbench prints: 95 % intervals, paired method comparisons, Holm's correction.

Choices (docs/statistics.md says why):
  * means over images (PSNR, SSIM, LPIPS, score differences): Student-t interval, the image is the unit;
  * bit accuracy: the t interval over images, widened where needed to the Clopper–Pearson interval of the pooled
    bits (what independent bits alone would allow), so a cell where every image reads 1.000 still gets a width;
  * rates (TPR, FPR, word accuracy): exact Clopper–Pearson interval on the count of images;
  * paired comparisons: paired t-test on per-image differences (its interval and p-value agree), with Holm's
    step-down correction over every comparison a summary makes (family-wise error ≤ 5 %).

The distribution functions are scipy.special's (``betaincinv``, ``stdtrit``, ``chdtrc``, …): the kernels behind
scipy.stats' ``beta.ppf``, ``t.ppf``, ``chi2.sf``, without importing scipy.stats, which cost ~1 s of every
``wmbench run`` and ``report`` (tests/test_stats.py checks them against scipy.stats).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special as sp

CONF = 0.95


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its two-sided interval and the number of independent units behind it."""

    value: float
    lo: float
    hi: float
    n: int

    @property
    def ci(self) -> list[float]:
        return [self.lo, self.hi]

    def fmt(self, nd: int = 3) -> str:
        """``0.912 [0.889, 0.934]``; a bare value when the interval is unknown."""
        if math.isnan(self.value):
            return "–"
        if math.isnan(self.lo) or math.isnan(self.hi):
            return f"{self.value:.{nd}f}"
        return f"{self.value:.{nd}f} [{self.lo:.{nd}f}, {self.hi:.{nd}f}]"


NAN = Estimate(math.nan, math.nan, math.nan, 0)


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[np.isfinite(v)]


def clopper_pearson(k: int, n: int, conf: float = CONF) -> Estimate:
    """Exact binomial interval for k successes in n trials: never below the nominal coverage."""
    if n <= 0:
        return NAN
    a = 1.0 - conf
    lo = 0.0 if k <= 0 else float(sp.betaincinv(k, n - k + 1, a / 2))
    hi = 1.0 if k >= n else float(sp.betaincinv(k + 1, n - k, 1 - a / 2))
    return Estimate(k / n, lo, hi, n)


def proportion(flags: Sequence[bool] | np.ndarray, conf: float = CONF) -> Estimate:
    """Share of true flags (e.g. detected images) with its Clopper–Pearson interval."""
    f = np.asarray(flags, dtype=bool).ravel()
    return clopper_pearson(int(f.sum()), int(f.size), conf)


def t_mean(values: Sequence[float] | np.ndarray, conf: float = CONF) -> Estimate:
    """Mean of the finite values with a Student-t interval (needs two; inf PSNRs are left out)."""
    v = _finite(values)
    if v.size == 0:
        return NAN
    m = float(v.mean())
    if v.size < 2:
        return Estimate(m, math.nan, math.nan, 1)
    half = float(sp.stdtrit(v.size - 1, 0.5 + conf / 2) * v.std(ddof=1) / math.sqrt(v.size))
    return Estimate(m, m - half, m + half, int(v.size))


def bounded_mean(
    values: Sequence[float] | np.ndarray, hits: int, trials: int, conf: float = CONF
) -> Estimate:
    """Mean of per-image rates in [0, 1] (t over images) widened to the Clopper–Pearson interval of the pooled
    ``hits`` / ``trials``: bits cluster within an image, so the pooled interval alone is too narrow, but it is the
    least width the data allows (a cell where every image is perfect still has one)."""
    t = t_mean(values, conf)
    if t.n == 0:
        return NAN
    cp = clopper_pearson(hits, trials, conf)
    lo = cp.lo if math.isnan(t.lo) else min(t.lo, cp.lo)
    hi = cp.hi if math.isnan(t.hi) else max(t.hi, cp.hi)
    return Estimate(t.value, max(0.0, lo), min(1.0, hi), t.n)


def bit_accuracy(matches: np.ndarray, nbits: np.ndarray, conf: float = CONF) -> Estimate:
    """Mean bit accuracy over images (``matches / nbits`` per image) with :func:`bounded_mean`'s interval."""
    m = np.asarray(matches, dtype=np.float64).ravel()
    k = np.asarray(nbits, dtype=np.float64).ravel()
    if m.size == 0:
        return NAN
    return bounded_mean(m / k, int(m.sum()), int(k.sum()), conf)


@dataclass(frozen=True)
class Paired:
    """Mean of a − b over the same images, its t interval and the paired t-test's two-sided p-value."""

    diff: float
    lo: float
    hi: float
    p_value: float
    n: int


def paired_t(a: np.ndarray, b: np.ndarray, conf: float = CONF) -> Paired:
    """Paired t on a − b (same images, same order). Zero variance: p = 1 if every difference is 0, else 0."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    n = int(d.size)
    if n == 0:
        return Paired(math.nan, math.nan, math.nan, math.nan, 0)
    m = float(d.mean())
    if n < 2:
        return Paired(m, math.nan, math.nan, math.nan, n)
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return Paired(m, m, m, 1.0 if m == 0.0 else 0.0, n)
    se = sd / math.sqrt(n)
    half = float(sp.stdtrit(n - 1, 0.5 + conf / 2)) * se
    p = float(2 * sp.stdtr(n - 1, -abs(m) / se))
    return Paired(m, m - half, m + half, p, n)


def welch_t(a: np.ndarray, b: np.ndarray, conf: float = CONF) -> Paired:
    """Unpaired comparison (different images, e.g. pooled runs): Welch's t on the means."""
    x, y = _finite(a), _finite(b)
    if x.size < 2 or y.size < 2:
        return Paired(math.nan, math.nan, math.nan, math.nan, int(min(x.size, y.size)))
    m = float(x.mean() - y.mean())
    vx, vy = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(vx + vy)
    if se == 0.0:
        return Paired(m, m, m, 1.0 if m == 0.0 else 0.0, int(min(x.size, y.size)))
    dof = (vx + vy) ** 2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    half = float(sp.stdtrit(dof, 0.5 + conf / 2)) * se
    p = float(2 * sp.stdtr(dof, -abs(m) / se))
    return Paired(m, m - half, m + half, p, int(min(x.size, y.size)))


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control; NaNs stay NaN and do not count)."""
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = ok.size
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


# ------------------------------------------------------------------------------ are clean bits fair coins?


def bit_balance_p(bits: np.ndarray) -> float:
    """χ² test that every bit position reads 1 half the time.  bits: n k in {0, 1}."""
    b = np.asarray(bits, dtype=np.float64)
    n = b.shape[0]
    if n == 0:
        return math.nan
    ones = b.sum(axis=0)
    chi2 = float(((2 * ones - n) ** 2 / n).sum())
    return float(sp.chdtrc(b.shape[1], chi2))


def dispersion_p(counts: np.ndarray, k: int) -> tuple[float, float]:
    """Variance of per-image counts (matching bits, or ones) against Binomial(k, ½)'s k/4; correlated bits
    inflate it, and a heavier tail means more false positives.  -> (observed / expected variance, two-sided p)"""
    c = np.asarray(counts, dtype=np.float64).ravel()
    n = c.size
    if n < 2:
        return math.nan, math.nan
    ratio = float(c.var(ddof=1) / (k / 4))
    stat = (n - 1) * ratio  # ~ χ²(n − 1) when counts are Binomial(k, ½) (normal approximation of the count)
    p = 2 * min(float(sp.chdtrc(n - 1, stat)), float(sp.chdtr(n - 1, stat)))
    return ratio, min(1.0, p)


def binomial_gof(counts: np.ndarray, k: int) -> dict[str, float | int | list]:
    """χ² goodness of fit of per-image counts in 0..k to Binomial(k, ½); tail bins pooled until each expects
    ≥ 5 images.  -> observed and expected histograms, statistic, degrees of freedom, p-value"""
    c = np.asarray(counts, dtype=np.int64).ravel()
    n = int(c.size)
    obs = np.bincount(c, minlength=k + 1)[: k + 1].astype(np.float64)
    j = np.arange(k + 1)
    exp = n * np.exp(
        sp.gammaln(k + 1) - sp.gammaln(j + 1) - sp.gammaln(k - j + 1) - k * math.log(2)
    )  # no overflow
    edges = _pooled_bins(exp)
    o = np.array([obs[a:b].sum() for a, b in edges])
    e = np.array([exp[a:b].sum() for a, b in edges])
    dof = len(edges) - 1
    stat = float(((o - e) ** 2 / e).sum()) if dof > 0 else math.nan
    p = float(sp.chdtrc(dof, stat)) if dof > 0 else math.nan
    return {
        "observed": [int(x) for x in obs],
        "expected": [round(float(x), 3) for x in exp],
        "statistic": stat,
        "dof": dof,
        "p_value": p,
    }


def _pooled_bins(exp: np.ndarray, least: float = 5.0) -> list[tuple[int, int]]:
    """Half-open index ranges over 0..k whose expected counts are each ≥ ``least`` (tails merged inwards)."""
    edges: list[tuple[int, int]] = []
    start, acc = 0, 0.0
    for i, e in enumerate(exp):
        acc += e
        if acc >= least:
            edges.append((start, i + 1))
            start, acc = i + 1, 0.0
    if start < len(exp):  # leftover upper tail joins the last bin
        if edges:
            edges[-1] = (edges[-1][0], len(exp))
        else:
            edges.append((0, len(exp)))
    return edges


def fairness(bits: np.ndarray, alpha: float = 0.01) -> dict[str, float | bool | int]:
    """Key-free checks that decoded bits of clean images are independent fair coins: per-bit balance and the
    dispersion of the number of ones. ``fair`` is False when either p-value is below ``alpha`` / 2 (Bonferroni).
    bits: n k in {0, 1}"""
    b = np.asarray(bits, dtype=np.int64)
    n, k = b.shape
    p_bal = bit_balance_p(b)
    ratio, p_disp = dispersion_p(b.sum(axis=1), k)
    ps = [p for p in (p_bal, p_disp) if np.isfinite(p)]
    return {
        "n": int(n),
        "nbits": int(k),
        "mean_p_one": float(b.mean()) if n else math.nan,
        "max_bit_bias": float(np.abs(b.mean(axis=0) - 0.5).max()) if n else math.nan,
        "balance_p": p_bal,
        "variance_ratio": ratio,
        "dispersion_p": p_disp,
        "fair": bool(all(p >= alpha / 2 for p in ps)),
    }
