"""Regression checks between two runs (or a run and a committed summary): per method × attack × strength.

A *summary* is the small JSON that ``summarize`` writes: the per-cell means that a regression check needs, so a
CI baseline can be committed without the full parquet.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wmbench.api import WmbenchError
from wmbench.store import load_results

KEY = ["method", "attack", "strength"]


def summarize_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Per-cell means: bit accuracy, analytic TPR, PSNR of the watermark (identity rows carry it), PSNR attacked."""
    wm = df[df["source"] == "watermarked"]

    def fmean(s: pd.Series) -> float:
        v = s.to_numpy(dtype=float)
        v = v[np.isfinite(v)]
        return float(v.mean()) if len(v) else math.nan

    g = wm.groupby(KEY, sort=False)
    out = pd.DataFrame(
        {
            "n": g.size(),
            "unit": g["unit"].first(),
            "bit_acc": g["bit_acc"].mean(),
            "tpr": g["detected"].mean(),
            "psnr": g["psnr"].apply(fmean),
            "psnr_attacked": g["psnr_attacked"].apply(fmean),
        }
    ).reset_index()
    return out


def load_summary(path: str | Path) -> pd.DataFrame:
    """A run folder, or a summary JSON written by :func:`write_summary`."""
    p = Path(path)
    if p.is_dir():
        df, _ = load_results(p)
        return summarize_frame(df)
    if p.suffix == ".json" and p.is_file():
        try:
            data = json.loads(p.read_text())
            return pd.DataFrame(data["cells"])
        except (json.JSONDecodeError, KeyError) as e:
            raise WmbenchError(
                f"{p}: not a wmbench summary ({e}); write one with `wmbench summarize RUN FILE`"
            ) from None
    raise WmbenchError(f"{p}: neither a run folder nor a summary .json file")


def write_summary(run: str | Path, path: str | Path) -> Path:
    df, man = load_results(run)
    cells = summarize_frame(df)
    data = {
        "suite_name": man.get("suite_name"),
        "suite_hash": man.get("suite_hash"),
        "seed": man.get("seed"),
        "device": man.get("device"),
        "versions": man.get("versions"),
        "cells": json.loads(cells.to_json(orient="records")),
    }
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=1) + "\n")
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
    ``tol_psnr`` dB; cells missing from the new run also fail the comparison."""
    b = base.assign(strength=base["strength"].astype(float))
    n = new.assign(strength=new["strength"].astype(float))
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
    cols = KEY + [
        "bit_acc_base",
        "bit_acc_new",
        "d_bit_acc",
        "tpr_base",
        "tpr_new",
        "d_tpr",
        "psnr_base",
        "psnr_new",
        "d_psnr",
        "status",
    ]
    return Comparison(both[cols].reset_index(drop=True), missing, added)
