"""Reports people read: report.md + one self-contained report.html (images embedded) + PNG plots beside them.

Every figure carries its 95 % interval (docs/statistics.md). TPR is given twice and labelled: *analytic*
(matching bits ≥ the binomial threshold for the suite's target FPR, assuming independent fair bits on
unwatermarked images) and *empirical* (threshold taken from the same method's scores on the clean covers; with n
clean images the smallest resolvable FPR is 1/n). The ranking uses only the removal cells every method ran;
forgery cells are ranked on their own.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from wmbench import analysis, stats
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


def _ci(r: dict | pd.Series, name: str, nd: int = 3) -> str:
    """``value [lo, hi]`` from a row holding ``name``, ``name_lo``, ``name_hi``."""
    return stats.Estimate(float(r[name]), float(r[f"{name}_lo"]), float(r[f"{name}_hi"]), 0).fmt(nd)


def _p(p: float) -> str:
    if not np.isfinite(p):
        return "–"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def robustness_table(
    wm: pd.DataFrame, clean: pd.DataFrame, fpr: float, family: str | None = None
) -> pd.DataFrame:
    """One row per method × attack × strength: bit accuracy, word accuracy, TPR (analytic, empirical), PSNR of
    the attack, each with its 95 % interval. Forgery cells are marked: there a high value is the attacker's win."""
    from wmbench.metrics import empirical_tpr

    if family is not None:
        wm = wm[wm["family"] == family]
    out = []
    cells = analysis.cell_table(wm)
    for r, (_, g) in zip(cells.to_dict(orient="records"), wm.groupby(analysis.KEY, sort=False), strict=True):
        c = clean[clean["method"] == r["method"]]["matches"].to_numpy()
        emp, n_clean = stats.NAN, len(c)
        if n_clean:
            thr = empirical_tpr(g["matches"].to_numpy(), c, fpr)["threshold"]
            emp = stats.proportion(g["matches"].to_numpy() > thr)
        forged = r["goal"] == analysis.FORGERY
        out.append(
            {
                "method": r["method"],
                "attack": f"{r['attack']} (forgery: lower is better)" if forged else r["attack"],
                "strength": f"{r['strength']:g}",
                "unit": r["unit"],
                "n": r["n"],
                "bit_acc": _ci(r, "bit_acc"),
                "word_acc": _ci(r, "word_acc"),
                f"TPR@{fpr:g} analytic": _ci(r, "tpr"),
                f"TPR@{fpr:g} empirical (n_clean={n_clean})": emp.fmt(),
                "PSNR attacked": _ci(r, "psnr_attacked", 2),
            }
        )
    return pd.DataFrame(out)


def fairness_table(clean: pd.DataFrame) -> pd.DataFrame:
    """Per method: are the bits its decoder reads from the clean covers independent fair coins? (key-free)"""
    rows = []
    for method, g in clean.groupby("method", sort=False):
        k = int(g["nbits"].iloc[0])
        logits = [np.asarray(x, dtype=np.float64) for x in g["logits"] if x is not None and len(x) == k]
        if len(logits) < 2:  # nothing to test (e.g. a run that lost its clean cells)
            continue
        f = stats.fairness((np.stack(logits) > 0).astype(np.int64))
        rows.append(
            {
                "method": method,
                "n clean": f["n"],
                "share of 1s": _fmt(f["mean_p_one"]),
                "max bit bias": _fmt(f["max_bit_bias"]),
                "balance p": _p(float(f["balance_p"])),
                "var(#1s) / (k/4)": _fmt(f["variance_ratio"], 2),
                "dispersion p": _p(float(f["dispersion_p"])),
                "fair coins?": "yes" if f["fair"] else "NO: analytic FPR not trustworthy",
            }
        )
    return pd.DataFrame(rows)


def quality_table(wm: pd.DataFrame, clean: pd.DataFrame) -> pd.DataFrame:
    """Watermarked vs cover, per method (identity rows: one per image), with 95 % t intervals."""
    q = analysis.quality_stats(wm)
    ident = wm[wm["attack"] == "identity"]
    out = []
    for r in q.to_dict(orient="records"):
        g = ident[ident["method"] == r["method"]]
        c = clean[clean["method"] == r["method"]]
        out.append(
            {
                "method": r["method"],
                "nbits": r["nbits"],
                "n": r["n"],
                "PSNR": _ci(r, "psnr", 2),
                "SSIM": _ci(r, "ssim", 4),
                "MS-SSIM": _ci(r, "ms_ssim", 4),
                "LPIPS": _ci(r, "lpips", 4),
                "clean bit_acc": _ci(r, "clean_bit_acc"),
                "FPR analytic on covers": stats.proportion(c["detected"].to_numpy()).fmt() if len(c) else "–",
                "embed s/img": _fmt(g["t_embed"].mean(), 4),
                "extract s/img": _fmt(g["t_extract"].mean(), 4),
            }
        )
    return pd.DataFrame(out)


def ranking_table(r: analysis.Ranking, fpr: float) -> pd.DataFrame:
    """The ranking as a display table: score and TPR with intervals, and whether a rank is separable from the
    next (Holm-adjusted paired t p-value)."""
    if r.empty:
        return pd.DataFrame()
    forged = r.goal == analysis.FORGERY
    score = "forgery success (lower is better)" if forged else "score: mean bit_acc"
    det = f"forged covers detected @{fpr:g}" if forged else f"mean TPR@{fpr:g} analytic"
    rows = []
    for x in r.table.to_dict(orient="records"):
        p = x["p_vs_next"]
        nxt = "–" if not np.isfinite(p) else f"{'yes' if p < 0.05 else 'no'} (p={_p(p)})"
        rows.append(
            {
                "rank": x["rank"],
                "method": x["method"],
                score: _ci(x, "score"),
                det: _ci(x, "tpr"),
                "images": x["n_images"],
                "differs from next?": nxt,
            }
        )
    return pd.DataFrame(rows)


def cells_line(r: analysis.Ranking) -> str:
    """The cells a ranking used, and those it left out with the methods that lack them."""
    used = ", ".join(f"{a} {s:g}" for a, s in r.cells) or "none"
    line = f"Cells ({len(r.cells)}): {used}."
    if r.unranked:
        line += f" Not ranked (ran none of these cells): {', '.join(r.unranked)}."
    if r.left_out:
        left = "; ".join(
            f"{x['attack']} {x['strength']:g} (not run by {', '.join(x['missing'])})" for x in r.left_out
        )
        line += f" Left out (not shared by every method): {left}."
    return line


def _ci2(r: pd.Series | None, name: str, nd: int = 3, nd_range: int = 2) -> str:
    """Value over its 95 % interval on a second line, one decimal shorter (console cells stay narrow)."""
    if r is None or not np.isfinite(float(r[name])):
        return "–"
    lo, hi = float(r[f"{name}_lo"]), float(r[f"{name}_hi"])
    rng = f"\n{lo:.{nd_range}f}–{hi:.{nd_range}f}" if np.isfinite(lo) and np.isfinite(hi) else ""
    return f"{float(r[name]):.{nd}f}{rng}"


def summary_table(run: str | Path):  # -> rich.table.Table
    """The console summary ``wmbench run`` prints: the overall ranking with 95 % intervals (under each value),
    watermark quality and what the decoder reads right after embedding."""
    from rich.table import Table

    df, man = load_results(run)
    fpr = float(man.get("target_fpr", 1e-3))
    wm = analysis.watermarked(df, [man])
    r = analysis.rank(wm)
    q = analysis.quality_stats(wm).set_index("method")
    t = Table(
        title=f"{man.get('suite_name')}: ranking over {len(r.cells)} shared removal cells (95% CI below)"
    )
    t.add_column("#", justify="right")
    t.add_column("method", no_wrap=True)
    for c in ("bit_acc", f"TPR@{fpr:g}", "PSNR", "LPIPS", "clean acc"):
        t.add_column(c, justify="right")
    order = list(r.table["method"]) if not r.empty else list(q.index)
    scores = r.table.set_index("method") if not r.empty else None
    for i, m in enumerate(order, 1):
        s = scores.loc[m] if scores is not None else None
        qm = q.loc[m] if m in q.index else None
        t.add_row(
            str(i) if s is not None else "–",
            m,
            _ci2(s, "score"),
            _ci2(s, "tpr"),
            _ci2(qm, "psnr", 2, 1),
            _ci2(qm, "lpips", 4, 3),
            _ci2(qm, "clean_bit_acc"),
        )
    return t


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
    """The few markdown marks the notes use (`code`, **strong**, *em*) as HTML."""
    t = html.escape(note)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    t = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", t)
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


def _run_key(man: dict) -> dict[str, object]:
    """What must agree for two runs' numbers to share one table: the covers, the seed, the target FPR."""
    imgs = man.get("images") or {}
    return {
        "image set": imgs.get("sha256") or tuple(imgs.get("ids") or ()),
        "seed": man.get("seed"),
        "target FPR": man.get("target_fpr"),
    }


def check_runs(runs: list[Path], mans: list[dict], pool: bool) -> list[str]:
    """Refuse to merge runs that differ in images, seed or target FPR unless ``pool``; -> notes for the report."""
    keys = [_run_key(m) for m in mans]
    differ = [k for k in keys[0] if any(x[k] != keys[0][k] for x in keys[1:])]
    if not differ:
        return []
    detail = "; ".join(
        f"{k}: " + ", ".join(f"{r.name}={_short(x[k])}" for r, x in zip(runs, keys, strict=True))
        for k in differ
    )
    if not pool:
        raise WmbenchError(
            f"report: the runs differ in {', '.join(differ)} ({detail}), so their numbers are not comparable in "
            "one ranking; report them one by one, or pass --pool to merge them anyway (the report then says so)"
        )
    notes = [f"**Pooled runs that differ in {', '.join(differ)}** ({detail})."]
    if "image set" in differ:
        notes.append(
            "Methods from different runs were measured on different images: their comparisons are unpaired "
            "(Welch t) and the ranking's shared cells do not mean shared images."
        )
    if "target FPR" in differ:
        fpr = min(float(m.get("target_fpr", 1e-3)) for m in mans)
        notes.append(f"Detection was recomputed for every run at the lowest target FPR, {fpr:g}.")
    return notes


def _short(v: object) -> str:
    if isinstance(v, str) and len(v) > 12:
        return v[:12] + "…"
    if isinstance(v, tuple):
        return f"{len(v)} ids"
    return str(v)


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


def _sections(
    df: pd.DataFrame, wm: pd.DataFrame, fpr: float, q: pd.DataFrame
) -> list[tuple[str, str, pd.DataFrame | None]]:
    """Every table of the report, in reading order: (title, note, table). ``wm``: the watermarked rows with their
    goal; ``q``: the quality statistics."""
    clean = df[df["source"] == "clean"]
    ranks = analysis.rankings(wm)
    overall = ranks.pop("overall")
    forgery = ranks.pop("forgery", None)
    qnote = analysis.quality_note(q)
    out: list[tuple[str, str, pd.DataFrame | None]] = [
        (
            "Ranking (removal attacks)",
            "Mean bit accuracy over the removal cells every method ran, averaged per image first; 95 % interval: "
            "t over images (never narrower than independent bits allow). *differs from next?*: paired t on the "
            "per-image scores, Holm-adjusted over the list. "
            + cells_line(overall)
            + (f" {qnote}" if qnote else ""),
            ranking_table(overall, fpr),
        )
    ]
    for fam, r in ranks.items():
        out.append((f"Ranking: {fam} attacks", cells_line(r), ranking_table(r, fpr)))
    if forgery is not None:
        out.append(
            (
                "Forgery (lower is better)",
                "White-box forgery cells, ranked on their own: the score is the bit accuracy of a forged clean "
                "cover against the message, i.e. how well the attacker copied the watermark. "
                + cells_line(forgery),
                ranking_table(forgery, fpr),
            )
        )
    out.append(
        (
            "Image quality",
            "Watermarked vs cover, per method, 95 % t intervals. `clean bit_acc`: read back right after "
            "embedding. `FPR analytic on covers`: clean covers detected at the analytic threshold (Clopper–Pearson)."
            + (f" {qnote}" if qnote else ""),
            quality_table(wm, clean),
        )
    )
    if len(clean):
        out.append(
            (
                "Clean covers: are the decoded bits fair coins?",
                "The analytic threshold assumes a decoder reading an unwatermarked image returns independent fair "
                "coins. With a random message per image, clean covers match Binomial(k, ½) whatever the decoder, so "
                "this checks the bits themselves: per-bit balance (χ²) and the variance of the number of ones "
                "against k/4 (correlated bits inflate it). NO = a p-value below 0.005. These few covers only catch "
                "gross bias: `wmbench calibrate METHOD` decodes ≥ 1,000 clean images (docs/statistics.md).",
                fairness_table(clean),
            )
        )
    pairs = analysis.pairwise(wm)
    fams = [f for f in dict.fromkeys(wm[wm["goal"] == analysis.REMOVAL]["family"]) if f != "none"]
    for fam in fams:
        if pairs.empty or len(dict.fromkeys([*pairs["a"], *pairs["b"]])) < 2:
            break
        out.append(
            (
                f"Paired comparisons: {fam} attacks",
                "Row − column: mean difference of bit accuracy over the cells of this family both methods ran "
                "(same images). In brackets: cells where the row is significantly better / worse — paired t-test "
                f"per cell, Holm-adjusted over all {len(pairs)} method pairs × cells of the report (α = 0.05).",
                analysis.family_matrix(pairs, fam),
            )
        )
    for fam in FAMILIES:
        t = robustness_table(wm, clean, fpr, fam)
        if not t.empty:
            out.append(
                (
                    f"Robustness: {fam} attacks",
                    f"Bit = logit > 0; 95 % intervals. TPR@{fpr:g}: *analytic* = matching bits ≥ the one-sided "
                    "binomial threshold (Clopper–Pearson over images); *empirical* = threshold from the method's "
                    "scores on the clean covers (smallest resolvable FPR = 1/n_clean).",
                    t,
                )
            )
    other = wm[~wm["family"].isin((*FAMILIES, "none"))]
    if not other.empty:
        out.append(("Robustness: other attacks", "", robustness_table(other, clean, fpr)))
    return out


def build_report(runs: list[Path], out: Path, pool: bool = False) -> dict[str, Path]:
    """Write report.md, report.html and the PNG plots into ``out``; returns their paths. Runs that differ in
    images, seed or target FPR are refused unless ``pool``."""
    from wmbench import plots

    if not runs:
        raise WmbenchError("report: give at least one run folder")
    paths = [Path(r) for r in runs]
    df, mans = _merge_runs(paths)
    notes = check_runs(paths, mans, pool) if len(paths) > 1 else []
    if any(n.startswith("Methods from different runs") for n in notes):  # unpaired: keep image ids apart
        df["image_id"] = df["_run"] + ":" + df["image_id"].astype(str)
    out.mkdir(parents=True, exist_ok=True)
    fprs = {float(m.get("target_fpr", 1e-3)) for m in mans}
    fpr = min(fprs)
    if len(fprs) > 1:  # only when pooled (check_runs says so in the report)
        from wmbench.metrics import analytic_threshold

        df["detected"] = [
            m >= analytic_threshold(int(k), fpr) for m, k in zip(df["matches"], df["nbits"], strict=True)
        ]
    wm = analysis.watermarked(df, mans)
    cells = analysis.cell_table(wm)
    files: dict[str, Path] = {}
    figs: list[tuple[str, Path]] = []
    if (p := plots.curves(cells, wm, out / "curves_bit_acc.png")) is not None:
        figs.append(("Bit accuracy vs attack strength (bands: 95 % interval)", p))
    if p := plots.curves(cells, wm, out / "curves_tpr.png", "tpr"):
        figs.append((f"TPR@{fpr:g} (analytic) vs attack strength (bands: 95 % Clopper–Pearson)", p))
    overall = analysis.rank(wm)
    q = analysis.quality_stats(wm)
    if (
        not overall.empty
        and (p := plots.scatter(overall.table, q, out / "quality_vs_robustness.png")) is not None
    ):
        figs.append(("Quality vs robustness (bars: 95 % intervals)", p))
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
        f"{m.get('suite_name')}: seed {m.get('seed')}, target FPR {m.get('target_fpr')}, device {m.get('device')}, "
        f"{m.get('images', {}).get('n', '?')} images of {m.get('suite', {}).get('images', {}).get('size', '?')}², "
        f"status {m.get('status')}, wall {m.get('wall_s', '?')} s"
        for m in mans
    ]
    meta.append(
        "Every figure is a mean over images with its 95 % interval in brackets (docs/statistics.md): t intervals "
        "for means, Clopper–Pearson for rates; pairwise tests are Holm-corrected."
    )
    meta += notes
    sections = _sections(df, wm, fpr, q)

    md = [f"# wmbench report: {title}", "", *[f"- {x}" for x in meta], ""]
    ht = [
        f"<h1>wmbench report: {html.escape(title)}</h1><ul>"
        + "".join(f"<li>{_note_html(x)}</li>" for x in meta)
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
