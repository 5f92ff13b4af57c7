"""Regression checks between two runs (or a run and a committed summary): per method × attack × strength.

A *summary* is the small JSON that ``summarize`` writes: per-cell figures with 95 % intervals (``X_ci: [lo,
hi]``), the paired method comparisons, and the rankings, so a CI baseline can be committed without the full
parquet. Summaries written before intervals existed (no ``_ci`` keys) still load and compare.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wmbench import analysis
from wmbench.errors import WmbenchError
from wmbench.store import load_results

KEY = ["method", "attack", "strength"]
#: figures a summary cell carries, each with ``<name>_ci``
CELL_FIGURES = ("bit_acc", "tpr", "word_acc", "psnr", "psnr_attacked", "ssim", "lpips")
STATS_NOTE = {
    "confidence": 0.95,
    "bit_acc": "t interval over images, widened to the Clopper-Pearson interval of the pooled bits",
    "tpr": "Clopper-Pearson (exact binomial) over images, analytic threshold at target_fpr",
    "psnr, ssim, lpips": "t interval over images (infinite PSNRs left out)",
    "pairs": "paired t-test on per-image bit accuracy a - b; p_holm: Holm step-down over every pair in the file",
    "ranking": "mean bit accuracy over ranking_cells (shared removal cells), averaged per image first; "
    "t interval over images widened to the pooled-bits Clopper-Pearson interval",
}


def summarize_frame(df: pd.DataFrame, manifests: list[dict] | None = None) -> pd.DataFrame:
    """Per-cell figures with ``_lo``/``_hi`` bounds: bit accuracy, analytic TPR, word accuracy, watermark PSNR
    (identity rows carry it), PSNR attacked, SSIM, LPIPS."""
    cells = analysis.cell_table(analysis.watermarked(df, manifests))
    return cells.assign(strength=cells["strength"].astype(float)) if len(cells) else cells


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _cells_json(cells: pd.DataFrame) -> list[dict]:
    out = []
    for r in cells.to_dict(orient="records"):
        d = {k: r[k] for k in (*KEY, "n", "unit", "family", "goal") if k in r}
        for f in CELL_FIGURES:
            if f in r:
                d[f] = r[f]
                d[f"{f}_ci"] = [r[f"{f}_lo"], r[f"{f}_hi"]]
        out.append(d)
    return out


def _ranking_json(r: analysis.Ranking) -> dict:
    return {
        "ranking": [
            {
                "method": x["method"],
                "score": x["score"],
                "ci": [x["score_lo"], x["score_hi"]],
                "tpr": x["tpr"],
                "tpr_ci": [x["tpr_lo"], x["tpr_hi"]],
                "n_images": x["n_images"],
                "p_vs_next": x["p_vs_next"],
            }
            for x in r.table.to_dict(orient="records")
        ],
        "ranking_cells": [{"attack": a, "strength": s} for a, s in r.cells],
        "left_out_cells": r.left_out,
        "unranked": r.unranked,
    }


def summary_dict(df: pd.DataFrame, man: dict) -> dict:
    """Everything ``summarize`` writes, as a JSON-ready dict."""
    wm = analysis.watermarked(df, [man])
    pairs = analysis.pairwise(wm)
    ranks = analysis.rankings(wm)
    overall = _ranking_json(ranks.pop("overall"))
    forgery = ranks.pop("forgery", None)
    data = {
        "suite_name": man.get("suite_name"),
        "suite_hash": man.get("suite_hash"),
        "seed": man.get("seed"),
        "target_fpr": man.get("target_fpr"),
        "images_sha256": (man.get("images") or {}).get("sha256"),
        "device": man.get("device"),
        "versions": man.get("versions"),
        "stats": STATS_NOTE,
        "cells": _cells_json(summarize_frame(df, [man])),
        **overall,
        "ranking_by_family": {fam: _ranking_json(r) for fam, r in ranks.items()},
        "forgery": _ranking_json(forgery) if forgery is not None else None,
        "pairs": [
            {
                "a": r["a"],
                "b": r["b"],
                "attack": r["attack"],
                "strength": r["strength"],
                "n": r["n"],
                "diff": r["diff"],
                "ci": [r["lo"], r["hi"]],
                "p_value": r["p_value"],
                "p_holm": r["p_holm"],
            }
            for r in pairs.to_dict(orient="records")
        ],
    }
    return _clean(data)


def _cells_frame(cells: list[dict]) -> pd.DataFrame:
    """Summary cells as a frame; ``X_ci`` lists become ``X_lo``/``X_hi`` columns (absent in old summaries)."""
    df = pd.DataFrame(cells)
    for c in [c for c in df.columns if c.endswith("_ci")]:
        base = c[:-3]
        bounds = df[c].map(lambda v: v if isinstance(v, list) and len(v) == 2 else [None, None])
        df[f"{base}_lo"] = pd.to_numeric(bounds.map(lambda v: v[0]), errors="coerce")
        df[f"{base}_hi"] = pd.to_numeric(bounds.map(lambda v: v[1]), errors="coerce")
        df = df.drop(columns=c)
    for c in ("bit_acc", "tpr", "psnr", "psnr_attacked"):
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def load_summary(path: str | Path) -> pd.DataFrame:
    """A run folder, or a summary JSON written by :func:`write_summary` (with or without intervals)."""
    p = Path(path)
    if p.is_dir():
        df, man = _measured(p)
        return summarize_frame(df, [man])
    if p.suffix == ".json" and p.is_file():
        try:
            data = json.loads(p.read_text())
            return _cells_frame(data["cells"])
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise WmbenchError(
                f"{p}: not a wmbench summary ({e}); write one with `wmbench summarize RUN FILE`"
            ) from None
    raise WmbenchError(f"{p}: neither a run folder nor a summary .json file")


def _measured(run: str | Path) -> tuple[pd.DataFrame, dict]:
    """A run's rows and manifest; a run in which nothing was measured is refused, with where to read why."""
    df, man = load_results(run)
    if df.empty or "source" not in df or not (df["source"] == "watermarked").any():
        raise WmbenchError(f"{run}: nothing was measured (every cell skipped or failed); see its report.md")
    return df, man


def write_summary(run: str | Path, path: str | Path) -> Path:
    df, man = _measured(run)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(summary_dict(df, man), indent=1) + "\n")
    return p


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per cell with base/new values, deltas and a status
    missing: list[tuple]  # cells in the baseline but not in the new run
    added: list[tuple]

    @property
    def regressed(self) -> bool:
        return bool((self.table["status"] == "REGRESSION").any()) or bool(self.missing)


def compare(
    base: pd.DataFrame, new: pd.DataFrame, tol_acc: float = 0.02, tol_psnr: float = 0.3
) -> Comparison:
    """A regression: bit accuracy or TPR lower by more than ``tol_acc``, or watermark PSNR lower by more than
    ``tol_psnr`` dB; cells missing from the new run also fail the comparison. Intervals, where the summaries
    carry them, ride along (``*_lo``/``*_hi``), and ``beyond_noise`` marks a bit-accuracy change that leaves the
    other run's 95 % interval; the pass/fail rule stays the tolerance (CI runs are deterministic)."""
    b = _with_bounds(base.assign(strength=base["strength"].astype(float)))
    n = _with_bounds(new.assign(strength=new["strength"].astype(float)))
    m = b.merge(n, on=KEY, how="outer", suffixes=("_base", "_new"), indicator=True)
    missing = [tuple(r) for r in m[m["_merge"] == "left_only"][KEY].itertuples(index=False)]
    added = [tuple(r) for r in m[m["_merge"] == "right_only"][KEY].itertuples(index=False)]
    both = m[m["_merge"] == "both"].copy()
    for c in ("bit_acc", "tpr", "psnr"):
        both[f"d_{c}"] = both[f"{c}_new"] - both[f"{c}_base"]

    def status(r: pd.Series) -> str:
        bad = r["d_bit_acc"] < -tol_acc or r["d_tpr"] < -tol_acc
        if np.isfinite(r["psnr_base"]) and np.isfinite(r["psnr_new"]):
            bad = bad or r["d_psnr"] < -tol_psnr
        elif np.isfinite(r["psnr_base"]) != np.isfinite(r["psnr_new"]):
            bad = True
        better = r["d_bit_acc"] > tol_acc or r["d_tpr"] > tol_acc
        return "REGRESSION" if bad else ("improved" if better else "ok")

    both["status"] = both.apply(status, axis=1) if len(both) else []
    both["beyond_noise"] = (
        (both["bit_acc_new"] < both["bit_acc_lo_base"])
        | (both["bit_acc_new"] > both["bit_acc_hi_base"])
        | (both["bit_acc_base"] < both["bit_acc_lo_new"])
        | (both["bit_acc_base"] > both["bit_acc_hi_new"])
    )
    cols = KEY + [
        f"{f}_{s}"
        for f in ("bit_acc", "tpr", "psnr")
        for s in ("base", "lo_base", "hi_base", "new", "lo_new", "hi_new")
    ]
    cols += ["d_bit_acc", "d_tpr", "d_psnr", "beyond_noise", "status"]
    return Comparison(both[cols].reset_index(drop=True), missing, added)


def _with_bounds(df: pd.DataFrame) -> pd.DataFrame:
    """Missing interval columns (old summaries) as NaN, so both formats merge alike."""
    df = df.copy()
    for f in ("bit_acc", "tpr", "psnr"):
        for s in ("lo", "hi"):
            if f"{f}_{s}" not in df:
                df[f"{f}_{s}"] = math.nan
    return df


def fmt_ci(v: float, lo: float, hi: float, nd: int = 3) -> str:
    """``0.912 [0.889, 0.934]``, or the bare value when the bounds are unknown (old summaries)."""
    if not np.isfinite(v):
        return "–"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{v:.{nd}f}"
    return f"{v:.{nd}f} [{lo:.{nd}f}, {hi:.{nd}f}]"


def fmt_range(lo: float, hi: float, nd: int = 2) -> str:
    """``0.49–0.58``; ``–`` when the bounds are unknown (old summaries)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "–"
    return f"{lo:.{nd}f}–{hi:.{nd}f}"
