"""Reports people read: report.md + one self-contained report.html (images embedded) + PNG plots beside them.

TPR is given twice and labelled: *analytic* (matching bits ≥ the binomial threshold for the suite's target FPR,
assuming independent fair bits on unwatermarked images) and *empirical* (threshold taken from the same method's
scores on the clean covers; with n clean images the smallest resolvable FPR is 1/n).
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from wmbench.api import WmbenchError
from wmbench.store import load_results, safe_name

FAMILIES = ("distortion", "regeneration", "adversarial")


def _fmt(v: object, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, int | np.integer):
        return str(v)
    if isinstance(v, float | np.floating):
        if math.isnan(v):
            return "–"
        if math.isinf(v):
            return "∞"
        return f"{v:.{nd}f}"
    return str(v)


def _finite_mean(s: pd.Series) -> float:
    v = s.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else math.nan


def robustness_table(df: pd.DataFrame, fpr: float, family: str | None = None) -> pd.DataFrame:
    """One row per method × attack × strength: bit accuracy, TPR (analytic, empirical), PSNR of the attack."""
    from wmbench.metrics import empirical_tpr

    wm = df[df["source"] == "watermarked"]
    if family is not None:
        wm = wm[wm["family"] == family]
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


def leaderboard(df: pd.DataFrame, fpr: float) -> pd.DataFrame:
    """Methods ranked by mean bit accuracy over every attack cell (identity excluded), with TPR and quality."""
    from wmbench.metrics import empirical_tpr

    wm = df[df["source"] == "watermarked"]
    rows = []
    for method, g in wm.groupby("method", sort=False):
        att = g[g["attack"] != "identity"]
        ident = g[g["attack"] == "identity"]
        cells = att.groupby(["attack", "strength"], sort=False)
        clean = df[(df["source"] == "clean") & (df["method"] == method)]["matches"].to_numpy()
        emp = (
            [empirical_tpr(x["matches"].to_numpy(), clean, fpr)["tpr"] for _, x in cells]
            if len(clean)
            else []
        )
        rows.append(
            {
                "method": method,
                "mean_bit_acc": float(cells["bit_acc"].mean().mean()) if len(att) else math.nan,
                "mean_tpr_analytic": float(cells["detected"].mean().mean()) if len(att) else math.nan,
                "mean_tpr_empirical": float(np.nanmean(emp)) if emp else math.nan,
                "psnr": _finite_mean(ident["psnr"]),
                "ssim": float(ident["ssim"].mean()),
                "lpips": float(ident["lpips"].mean()),
                "n_cells": len(cells),
            }
        )
    board = pd.DataFrame(rows)
    if board.empty:
        return board
    board = board.sort_values("mean_bit_acc", ascending=False).reset_index(drop=True)
    board.insert(0, "rank (bit acc)", range(1, len(board) + 1))
    board.insert(1, "rank (TPR)", board["mean_tpr_analytic"].rank(ascending=False, method="min").astype(int))
    return board


def _board_display(board: pd.DataFrame, fpr: float) -> pd.DataFrame:
    d = board.copy()
    for c, nd in (
        ("mean_bit_acc", 3),
        ("mean_tpr_analytic", 3),
        ("mean_tpr_empirical", 3),
        ("psnr", 2),
        ("ssim", 4),
        ("lpips", 4),
    ):
        d[c] = d[c].map(lambda v, nd=nd: _fmt(float(v), nd))
    return d.rename(
        columns={
            "mean_tpr_analytic": f"mean TPR@{fpr:g} analytic",
            "mean_tpr_empirical": f"mean TPR@{fpr:g} empirical",
            "psnr": "PSNR",
            "ssim": "SSIM",
            "lpips": "LPIPS",
            "mean_bit_acc": "mean bit_acc",
        }
    )


# ------------------------------------------------------------------------------------------ rendering


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(no rows)_"
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for _, r in df.iterrows()]
    return "\n".join(lines)


def _html_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><em>no rows</em></p>"

    def cell(v: object) -> str:
        s = str(v)
        num = s.replace(".", "", 1).replace("-", "", 1).replace("+", "", 1).isdigit() or s in ("–", "∞")
        return f"<td class=n>{html.escape(s)}</td>" if num else f"<td>{html.escape(s)}</td>"

    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(cell(r[c]) for c in df.columns) + "</tr>" for _, r in df.iterrows())
    return f'<div class="tw"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _note_html(note: str) -> str:
    """The few markdown marks the notes use (`code`, *em*) as HTML."""
    t = html.escape(note)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", t)


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1200px;margin:1.5em auto;
padding:0 1em;color:#222;line-height:1.4}h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;
margin-top:1.6em}.tw{overflow-x:auto}table{border-collapse:collapse;font-size:.82em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;white-space:nowrap}th{background:#f4f4f4}
td.n{text-align:right;font-variant-numeric:tabular-nums}code{background:#f4f4f4;padding:0 3px}img{max-width:100%;height:auto;display:block;
margin:.5em 0}.note{color:#555;font-size:.9em}"""


def _merge_runs(runs: list[Path]) -> tuple[pd.DataFrame, list[dict]]:
    frames, mans = [], []
    for r in runs:
        df, man = load_results(r)
        df = df.copy()
        df["_run"] = str(r)
        frames.append(df)
        mans.append(man)
    df = pd.concat(frames, ignore_index=True)
    if len(runs) > 1:
        dup = df.groupby("method")["_run"].nunique()
        clash = dup[dup > 1].index
        if len(clash):  # the same method label in two runs: keep them apart in every table
            m = df["method"].isin(clash)
            df.loc[m, "method"] = df.loc[m, "method"] + " [" + df.loc[m, "run_id"].astype(str) + "]"
    return df, mans


def _problem_lines(mans: list[dict]) -> list[str]:
    """Errors one per line; skipped cells grouped per suite × attack (one reason shown, the rest counted)."""
    lines = []
    for m in mans:
        suite = m.get("suite_name")
        for e in m.get("errors", []):
            lines.append(
                f"error — {suite}: {e.get('method')} × {e.get('attack')} {e.get('strength')}: {e.get('error')}"
            )
        groups: dict[str, list[dict]] = {}
        for sk in m.get("skipped_cells", []):
            groups.setdefault(str(sk.get("attack")), []).append(sk)
        for attack, items in groups.items():
            methods = sorted({str(i.get("method")) for i in items})
            strengths = sorted({i.get("strength") for i in items if i.get("strength") is not None})
            lines.append(
                f"skipped — {suite}: {attack} ({len(items)} cells: methods {', '.join(methods)}; strengths "
                f"{', '.join(f'{v:g}' for v in strengths)}): {items[0].get('reason')}"
            )
    return lines


def build_report(runs: list[Path], out: Path) -> dict[str, Path]:
    """Write report.md, report.html and the PNG plots into ``out``; returns their paths."""
    from wmbench import plots

    if not runs:
        raise WmbenchError("report: give at least one run folder")
    df, mans = _merge_runs([Path(r) for r in runs])
    out.mkdir(parents=True, exist_ok=True)
    fprs = {float(m.get("target_fpr", 1e-3)) for m in mans}
    fpr = min(fprs)
    if len(fprs) > 1:  # detection columns were computed per run; recompute for one common FPR
        from wmbench.metrics import analytic_threshold

        df["detected"] = [
            m >= analytic_threshold(int(k), fpr) for m, k in zip(df["matches"], df["nbits"], strict=True)
        ]
    board = leaderboard(df, fpr)
    files: dict[str, Path] = {}
    figs: list[tuple[str, Path]] = []
    if (p := plots.curves(df, out / "curves_bit_acc.png")) is not None:
        figs.append(("Bit accuracy vs attack strength", p))
    if p := plots.curves(
        df.assign(detected=df["detected"].astype(float)), out / "curves_tpr.png", "detected"
    ):
        figs.append((f"TPR@{fpr:g} (analytic) vs attack strength", p))
    if not board.empty and (p := plots.scatter(board, out / "quality_vs_robustness.png")) is not None:
        figs.append(("Quality vs robustness", p))
    grids: list[tuple[str, Path]] = []
    for method in dict.fromkeys(df["method"]):
        run = Path(df[df["method"] == method]["_run"].iloc[0])
        raw = method.split(" [")[0]
        p = plots.image_grid(
            run,
            df[df["_run"] == str(run)].assign(method=lambda d: d["method"].str.split(" \\[").str[0]),
            raw,
            out / f"grid_{safe_name(method)}.png",
        )
        if p is not None:
            grids.append((method, p))

    title = " + ".join(str(m.get("suite_name", "?")) for m in mans)
    meta = [
        f"{m.get('suite_name')}: seed {m.get('seed')}, device {m.get('device')}, "
        f"{m.get('images', {}).get('n', '?')} images of {m.get('suite', {}).get('images', {}).get('size', '?')}², "
        f"status {m.get('status')}, wall {m.get('wall_s', '?')} s"
        for m in mans
    ]
    sections: list[tuple[str, str, pd.DataFrame | None]] = [
        (
            "Leaderboard",
            f"Methods ranked by mean bit accuracy over every attack cell (identity excluded); rank (TPR) "
            f"ranks the mean analytic TPR@{fpr:g}. Quality columns: watermarked vs cover.",
            _board_display(board, fpr),
        ),
        (
            "Image quality",
            "Watermarked vs cover, per method. `bit_acc on covers` is what the decoder reads from "
            "unwatermarked images (≈0.5 expected); `FPR analytic on covers` is the measured false-positive rate.",
            quality_table(df),
        ),
    ]
    for fam in FAMILIES:
        t = robustness_table(df, fpr, fam)
        if not t.empty:
            sections.append(
                (
                    f"Robustness: {fam} attacks",
                    f"Bit = logit > 0. TPR@{fpr:g}: *analytic* = matching "
                    "bits ≥ the one-sided binomial threshold; *empirical* = threshold from the method's "
                    "scores on the clean covers (smallest resolvable FPR = 1/n_clean).",
                    t,
                )
            )
    other = df[~df["family"].isin((*FAMILIES, "none"))]
    if not other.empty:
        sections.append(("Robustness: other attacks", "", robustness_table(other, fpr)))

    md = [f"# wmbench report: {title}", "", *[f"- {x}" for x in meta], ""]
    ht = [
        f"<h1>wmbench report: {html.escape(title)}</h1><ul>"
        + "".join(f"<li>{html.escape(x)}</li>" for x in meta)
        + "</ul>"
    ]
    for name, note, table in sections:
        md += [f"## {name}", "", note, "", _md_table(table), ""]
        ht += [f"<h2>{html.escape(name)}</h2><p class=note>{_note_html(note)}</p>", _html_table(table)]
    md += ["## Plots", ""]
    ht += ["<h2>Plots</h2>"]
    for name, p in figs:
        md += [f"### {name}", "", f"![{name}]({p.name})", ""]
        ht += [f"<h3>{html.escape(name)}</h3>", _img_tag(p, name)]
    md += [
        "## Image grids",
        "",
        "Cover, watermarked, residual amplified ×10 (grey = no change), attacked examples.",
        "",
    ]
    ht += [
        "<h2>Image grids</h2><p class=note>Cover, watermarked, residual amplified ×10 (grey = no change), "
        "attacked examples.</p>"
    ]
    for method, p in grids:
        md += [f"![{method}]({p.name})", ""]
        ht += [_img_tag(p, method)]
    lines = _problem_lines(mans)
    if lines:
        md += ["## Errors and skipped cells", ""]
        ht += ["<h2>Errors and skipped cells</h2><ul>"]
        for line in lines:
            md.append(f"- {line}")
            ht.append(f"<li>{html.escape(line)}</li>")
        ht.append("</ul>")
    files["md"] = out / "report.md"
    files["md"].write_text("\n".join(md) + "\n")
    files["html"] = out / "report.html"
    files["html"].write_text(
        f"<!doctype html><html><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
        f"<title>wmbench: {html.escape(title)}</title><style>{CSS}</style></head><body>{''.join(ht)}</body></html>\n"
    )
    for _, p in figs + grids:
        files[p.stem] = p
    return files


def write_report(run: str | Path) -> Path:
    """Report of one run into its own folder; returns report.md's path."""
    return build_report([Path(run)], Path(run))["md"]
