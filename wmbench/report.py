"""Tables people read: robustness per method × attack × strength, and image quality per method.

TPR is given twice and labelled: *analytic* (matching bits ≥ the binomial threshold for the suite's target FPR,
assuming independent fair bits on unwatermarked images) and *empirical* (threshold taken from the same method's
scores on the clean covers; with n clean images the smallest resolvable FPR is 1/n).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from wmbench.store import CLEAN, load_results


def _fmt(v: float, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return f"{v:.{nd}f}"


def _md_table(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def robustness_table(df: pd.DataFrame, fpr: float) -> pd.DataFrame:
    """One row per method × attack × strength: bit accuracy, TPR (analytic, empirical), PSNR of the attack."""
    from wmbench.metrics import empirical_tpr

    wm = df[df["source"] == "watermarked"]
    clean = df[df["source"] == "clean"]
    out = []
    for (method, attack, strength), g in wm.groupby(["method", "attack", "strength"], sort=False):
        c = clean[clean["method"] == method]["matches"].to_numpy()
        emp = empirical_tpr(g["matches"].to_numpy(), c, fpr) if len(c) else {"tpr": math.nan, "n_clean": 0}
        out.append(
            {
                "method": method,
                "attack": attack,
                "strength": f"{strength:g}",
                "unit": g["unit"].iloc[0],
                "n": len(g),
                "bit_acc": _fmt(g["bit_acc"].mean()),
                "word_acc": _fmt(g["word_acc"].mean()),
                f"TPR@{fpr:g} analytic": _fmt(g["detected"].mean()),
                f"TPR@{fpr:g} empirical (n_clean={emp['n_clean']})": _fmt(emp["tpr"]),
                "PSNR attacked": _fmt(_finite_mean(g["psnr_attacked"]), 2),
            }
        )
    return pd.DataFrame(out)


def quality_table(df: pd.DataFrame) -> pd.DataFrame:
    """Watermarked vs cover, per method (from the identity rows: one per image)."""
    ident = df[(df["attack"] == "identity") & (df["source"] == "watermarked")]
    clean = df[df["source"] == "clean"]
    out = []
    for method, g in ident.groupby("method", sort=False):
        c = clean[clean["method"] == method]
        out.append(
            {
                "method": method,
                "nbits": int(g["nbits"].iloc[0]),
                "n": len(g),
                "PSNR": _fmt(_finite_mean(g["psnr"]), 2),
                "SSIM": _fmt(g["ssim"].mean(), 4),
                "MS-SSIM": _fmt(g["ms_ssim"].mean(), 4),
                "LPIPS": _fmt(g["lpips"].mean(), 4),
                "clean bit_acc": _fmt(g["bit_acc"].mean()),
                "bit_acc on covers": _fmt(c["bit_acc"].mean()) if len(c) else "–",
                "FPR analytic on covers": _fmt(c["detected"].mean()) if len(c) else "–",
                "embed s/img": _fmt(g["t_embed"].mean(), 4),
                "extract s/img": _fmt(g["t_extract"].mean(), 4),
            }
        )
    return pd.DataFrame(out)


def _finite_mean(s: pd.Series) -> float:
    v = s.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else math.nan


def markdown_report(run: str | Path) -> str:
    df, man = load_results(run)
    fpr = float(man.get("target_fpr", 1e-3))
    parts = [
        f"# wmbench report: {man.get('suite_name', '?')}",
        "",
        f"Run folder `{Path(run)}` · seed {man.get('seed')} · device {man.get('device')} · "
        f"{man.get('images', {}).get('n', '?')} images of {man.get('suite', {}).get('images', {}).get('size', '?')}² · "
        f"status {man.get('status')} · wall {man.get('wall_s', '?')} s",
        "",
        "## Image quality (watermarked vs cover)",
        "",
        _md_table(quality_table(df)),
        "",
        "PSNR is averaged over finite values (identical images give ∞). `bit_acc on covers` is what the decoder "
        "reads from unwatermarked images (≈0.5 expected).",
        "",
        "## Robustness",
        "",
        f"Bit = logit > 0. TPR at target FPR {fpr:g}: *analytic* = matching bits ≥ the one-sided binomial "
        "threshold; *empirical* = threshold from the method's scores on the clean covers.",
        "",
        _md_table(robustness_table(df, fpr)),
    ]
    problems = man.get("errors", []) + man.get("skipped_cells", [])
    if problems:
        parts += ["", "## Errors and skipped cells", ""]
        for e in man.get("errors", []):
            parts.append(f"- error: {e.get('method')} {e.get('stage')} {e.get('attack') or ''}: {e.get('error')}")
        for s in man.get("skipped_cells", []):
            parts.append(f"- skipped: {s.get('method')} × {s.get('attack')}: {s.get('reason')}")
    if man.get("skipped_files"):
        parts += ["", f"{len(man['skipped_files'])} unreadable image file(s) skipped (see manifest)."]
    return "\n".join(parts) + "\n"


def write_report(run: str | Path) -> Path:
    md = markdown_report(run)
    path = Path(run) / "report.md"
    path.write_text(md)
    return path
