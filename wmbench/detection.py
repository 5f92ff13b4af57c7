"""Detection thresholds and rates: the analytic binomial threshold and TPR at an empirical FPR.

Why a module of its own: reports, ``compare`` and ``calibrate`` need these, and they need only the standard
library and numpy, while ``wmbench.metrics`` (image metrics) imports torch, which a report does not need.
``wmbench.metrics`` re-exports every name.
"""

from __future__ import annotations

import math
from fractions import Fraction
from functools import lru_cache
from typing import Any

import numpy as np

from wmbench.errors import WmbenchError


@lru_cache(maxsize=64)
def _binom_sf_table(k: int) -> tuple[float, ...]:
    """P(X >= m) for m = 0..k+1, X ~ Bin(k, 1/2), from exact integer sums rounded once to float64."""
    counts = [math.comb(k, i) for i in range(k + 1)]
    tail, out = 0, [0.0] * (k + 2)
    for m in range(k, -1, -1):
        tail += counts[m]
        out[m] = float(Fraction(tail, 2**k))
    return tuple(out)


def analytic_threshold(k: int, fpr: float) -> int:
    """Smallest τ with P(X >= τ) <= fpr, X ~ Bin(k, 1/2).

    ``detected = matches >= τ`` then has a false-positive rate <= fpr (usually below it: the binomial is
    discrete) if decoded bits of clean images are independent fair coins -- an assumption, which
    ``empirical_tpr`` checks against real clean images.  Returns k + 1 (never detect) when fpr < 2^-k.
    """
    if not 0.0 <= fpr <= 1.0:
        raise WmbenchError(f"fpr must lie in [0, 1], got {fpr}")
    table = _binom_sf_table(k)
    return next(t for t in range(k + 2) if table[t] <= fpr)


def _as_f64(x: Any) -> np.ndarray:
    """A tensor (duck-typed: this module imports no torch), array or sequence as a flat float64 array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.array(x, dtype=np.float64).ravel()


def empirical_tpr(
    scores_wm: Any,
    scores_clean: Any,
    fpr: float,
) -> dict[str, float | int]:
    """TPR at an FPR measured on clean images.  scores: n_wm, n_clean (higher = more watermark-like, e.g.
    matching bits).

    Detection is ``score > threshold`` with threshold the smallest clean score such that the fraction of clean
    scores above it is <= fpr (so ties at the threshold are never detected and empirical FPR <= fpr).  With n
    clean images the smallest resolvable FPR is 1/n: any fpr < 1/n gives threshold = max clean score and
    empirical FPR 0, i.e. "TPR@0.1%FPR" needs >= 1000 clean images to mean what it says.
    """
    if not 0.0 <= fpr <= 1.0:
        raise WmbenchError(f"fpr must lie in [0, 1], got {fpr}")
    wm = _as_f64(scores_wm)
    clean = _as_f64(scores_clean)
    if clean.size == 0:
        raise WmbenchError("empirical_tpr needs at least one clean score")
    cand = np.unique(clean)  # ascending; the fraction of clean scores above a candidate falls as it grows
    above = (clean.size - np.searchsorted(np.sort(clean), cand, side="right")) / clean.size
    threshold = float(-np.inf) if fpr >= 1.0 else float(cand[np.argmax(above <= fpr)])
    return {
        "tpr": float((wm > threshold).mean()) if wm.size else float("nan"),
        "threshold": threshold,
        "empirical_fpr": float((clean > threshold).mean()),
        "n_clean": int(clean.size),
    }
