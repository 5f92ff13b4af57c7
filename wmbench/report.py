"""Reports people read: report.md + one self-contained report.html (images embedded) + PNG plots beside them.

Every figure carries its 95 % interval (docs/statistics.md). TPR is given twice and labelled: *analytic*
(matching bits ≥ the binomial threshold for the suite's target FPR, assuming independent fair bits on
unwatermarked images) and *empirical* (threshold taken from the same method's scores on the clean covers; with n
clean images the smallest resolvable FPR is 1/n). The ranking uses only the removal cells every method ran;
forgery cells are ranked on their own.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from wmbench import analysis, stats
from wmbench.errors import WmbenchError
from wmbench.painter import Draw, Painter, draw_here
from wmbench.render import Section, render
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
    from wmbench.detection import empirical_tpr

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
            methods = ", ".join(sorted({str(i.get("method")) for i in items}))
            strengths = sorted({i.get("strength") for i in items if i.get("strength") is not None})
            what = (
                f"every cell of {methods}"
                if attack == "*"
                else f"{attack} ({len(items)} cells: methods {methods}; strengths "
                f"{', '.join(f'{v:g}' for v in strengths)})"
            )
            lines.append(f"skipped — {suite}: {what}: {items[0].get('reason')}")
    return lines


def _ordered_families(cells: pd.DataFrame) -> list[str]:
    """The families of the attacked cells: distortion, regeneration, adversarial first, others after."""
    have = list(dict.fromkeys(cells[cells["attack"] != "identity"]["family"]))
    return [f for f in FAMILIES if f in have] + [f for f in have if f not in FAMILIES and f != "none"]


def family_scores(ranks: dict[str, analysis.Ranking]) -> pd.DataFrame:
    """Methods × (overall, each family, forgery): each column's ranking score with its interval, in the overall
    ranking's order; the family tables with their tests sit folded below."""
    cols = {k: r for k, r in ranks.items() if not r.empty}
    if not cols:
        return pd.DataFrame()
    methods = list(dict.fromkeys(m for r in cols.values() for m in r.table["method"]))
    out = pd.DataFrame({"method": methods})
    for k, r in cols.items():
        t = r.table.set_index("method")
        n = f"{len(r.cells)} cell{'s' if len(r.cells) > 1 else ''}"
        name = f"forgery ↓ ({n}, lower is better)" if k == "forgery" else f"{k} ({n})"
        out[name] = [_ci(t.loc[m], "score") if m in t.index else "–" for m in methods]
    return out


def pivot_table(cells: pd.DataFrame, signs: dict[str, int], family: str) -> pd.DataFrame:
    """Bit accuracy with one row per attack × strength (weak → strong) and one column per method: the long table
    turned so it fits a screen (the intervals are in the folded full table)."""
    c = cells[(cells["family"] == family) & (cells["attack"] != "identity")]
    methods = list(dict.fromkeys(c["method"]))
    first = {a: i for i, a in reversed(list(enumerate(c["attack"])))}
    groups = sorted(
        c.groupby(["attack", "strength"], sort=False),
        key=lambda kv: (first[kv[0][0]], signs.get(kv[0][0], 1) * float(kv[0][1])),
    )
    rows = []
    for (atk, st), g in groups:
        acc = dict(zip(g["method"], g["bit_acc"], strict=True))
        forged = (g["goal"] == analysis.FORGERY).any()
        pa = g["psnr_attacked"].to_numpy(dtype=float) if "psnr_attacked" in g else np.array([])
        pa = pa[np.isfinite(pa)]
        rows.append(
            {
                "attack": f"{atk} ↓ (forgery: lower is better)" if forged else atk,
                "strength": f"{st:g}",
                "unit": g["unit"].iloc[0],
                # how far the attack moved the image, next to what it did to the bits (mean over methods)
                "PSNR attacked": _fmt(float(pa.mean()), 2) if len(pa) else "–",
                **{m: _fmt(acc.get(m, math.nan)) for m in methods},
            }
        )
    return pd.DataFrame(rows)


def _ranking_sections(wm: pd.DataFrame, fpr: float, q: pd.DataFrame) -> list[Section]:
    """The overall ranking, the scores by family in one table, and each family's own ranking folded."""
    ranks = analysis.rankings(wm)
    overall = ranks["overall"]
    qnote = analysis.quality_note(q)
    out = [
        Section(
            "Ranking (removal attacks)",
            "Mean bit accuracy over the removal cells every method ran, averaged per image first; 95 % interval: "
            "t over images (never narrower than independent bits allow). *differs from next?*: paired t on the "
            "per-image scores, Holm-adjusted over the list." + (f" {qnote}" if qnote else ""),
            ranking_table(overall, fpr),
            more=(
                f"cells used ({len(overall.cells)}) and left out ({len(overall.left_out)})",
                cells_line(overall),
            ),
        )
    ]
    if len(ranks) > 1:
        out.append(
            Section(
                "Scores by attack family",
                "The same score on each family's shared cells (forgery: how well the attacker copied the "
                "watermark, lower is better). Each family's ranking, with its tests and cells, is folded below.",
                family_scores(ranks),
            )
        )
    for fam, r in ranks.items():
        if fam == "overall":
            continue
        name = "Forgery (lower is better)" if fam == "forgery" else f"Ranking: {fam} attacks"
        note = (
            "White-box forgery cells, ranked on their own: the score is the bit accuracy of a forged clean "
            "cover against the message, i.e. how well the attacker copied the watermark."
            if fam == "forgery"
            else ""
        )
        out.append(
            Section(
                name,
                note,
                ranking_table(r, fpr),
                fold="ranking with tests",
                more=("cells", cells_line(r)),
                level=3,
            )
        )
    return out


def _quality_sections(wm: pd.DataFrame, clean: pd.DataFrame, q: pd.DataFrame) -> list[Section]:
    qnote = analysis.quality_note(q)
    out = [
        Section(
            "Image quality",
            "Watermarked vs cover, per method, 95 % t intervals. `clean bit_acc`: read back right after "
            "embedding. `FPR analytic on covers`: clean covers detected at the analytic threshold (Clopper–Pearson)."
            + (f" {qnote}" if qnote else ""),
            quality_table(wm, clean),
        )
    ]
    if len(clean):
        out.append(
            Section(
                "Clean covers: are the decoded bits fair coins?",
                "The analytic threshold assumes a decoder reading an unwatermarked image returns independent fair "
                "coins. With a random message per image, clean covers match Binomial(k, ½) whatever the decoder, so "
                "this checks the bits themselves: per-bit balance (χ²) and the variance of the number of ones "
                "against k/4 (correlated bits inflate it). NO = a p-value below 0.005. These few covers only catch "
                "gross bias: `wmbench calibrate METHOD` decodes ≥ 1,000 clean images (docs/statistics.md).",
                fairness_table(clean),
            )
        )
    return out


def _detail_sections(
    wm: pd.DataFrame, clean: pd.DataFrame, fpr: float, cells: pd.DataFrame, signs: dict[str, int]
) -> list[Section]:
    """Paired comparisons per family, then per family the bit accuracy pivoted (methods across) and the full
    table with every interval, folded."""
    out = []
    pairs = analysis.pairwise(wm)
    fams = [f for f in dict.fromkeys(wm[wm["goal"] == analysis.REMOVAL]["family"]) if f != "none"]
    if not pairs.empty and len(dict.fromkeys([*pairs["a"], *pairs["b"]])) >= 2:
        for fam in fams:
            out.append(
                Section(
                    f"Paired comparisons: {fam} attacks",
                    "Row − column: mean difference of bit accuracy over the cells of this family both methods ran "
                    "(same images). In brackets: cells where the row is significantly better / worse — paired "
                    f"t-test per cell, Holm-adjusted over all {len(pairs)} method pairs × cells of the report "
                    "(α = 0.05)."
                    if fam == fams[0]
                    else f"As for {fams[0]} attacks above.",
                    analysis.family_matrix(pairs, fam),
                )
            )
    for fam in _ordered_families(cells) or ["distortion"]:
        full = robustness_table(wm, clean, fpr, fam)
        if full.empty:
            continue
        piv = pivot_table(cells, signs, fam)
        out.append(
            Section(
                f"Robustness: {fam} attacks",
                "Mean bit accuracy per cell, strengths from weak to strong, next to the attacked image's PSNR "
                "(vs the watermarked one, mean over methods). ↓: a forgery, where a high value is the attacker's "
                "win.",
                piv if not piv.empty else None,
                fold=f"bit accuracy, {len(piv)} cells × {len(piv.columns) - 4} methods"
                if len(piv) > 24
                else None,
            )
        )
        out.append(
            Section(
                f"{fam} attacks: every figure with its interval",
                f"Bit = logit > 0; 95 % intervals. TPR@{fpr:g}: *analytic* = matching bits ≥ the one-sided "
                "binomial threshold (Clopper–Pearson over images); *empirical* = threshold from the method's "
                "scores on the clean covers (smallest resolvable FPR = 1/n_clean).",
                full,
                fold=f"{len(full)} rows: bit and word accuracy, TPR, PSNR of the attacked image",
                level=3,
            )
        )
    return out


def _curve_jobs(draw: Draw, cells: pd.DataFrame, signs: dict[str, int], out: Path) -> dict[str, list]:
    """Hand every family's bit-accuracy and TPR curves to ``draw``.  -> {metric: [(family, Drawn)]}"""
    fams = _ordered_families(cells)
    methods = list(dict.fromkeys(cells["method"]))
    return {
        metric: [
            (
                f,
                draw(
                    "curves",
                    cells[cells["family"] == f],
                    out / f"curves_{metric}_{f}.png",
                    signs,
                    methods,
                    metric,
                    psnr_ticks=f == "regeneration",
                ),
            )
            for f in fams
        ]
        for metric in ("bit_acc", "tpr")
    }


def _figure_sections(
    curves: dict[str, list],
    fpr: float,
    grids: list[tuple[str, Path]],
    scatter: Path | None,
) -> list[Section]:
    """Curves per family (each figure with its own legend), TPR curves folded, the scatter, the image grids."""
    bit = [(f, p.result()) for f, p in curves["bit_acc"]]
    tpr = [(f, p.result()) for f, p in curves["tpr"]]
    secs = [
        Section(
            "Plots: bit accuracy vs attack strength",
            "One panel per attack, strength in its unit from weak (left) to strong (right); bands: 95 % interval.",
            figures=[(f"bit accuracy: {f} attacks", p) for f, p in bit if p is not None],
        ),
        Section(
            f"TPR@{fpr:g} (analytic) vs attack strength",
            "Bands: 95 % Clopper–Pearson.",
            figures=[(f"TPR: {f} attacks", p) for f, p in tpr if p is not None],
            fold="TPR curves",
            level=3,
        ),
    ]
    if scatter is not None:
        secs.append(
            Section(
                "Quality vs robustness", "Bars: 95 % intervals.", figures=[("quality vs robustness", scatter)]
            )
        )
    secs.append(
        Section(
            "Image grids",
            "Per example cover: the cover, the watermarked image, the residual amplified ×10 (grey = no change) "
            "and the strongest strength of a few attacks (families in turn); on each tile that image's bit accuracy.",
            figures=grids,
        )
    )
    return secs


def _grids(df: pd.DataFrame, mans: list[dict], signs: dict[str, int], out: Path) -> list[tuple[str, Path]]:
    from wmbench import grids as plots

    runs = list(dict.fromkeys(df["_run"]))
    grids = []
    for method in dict.fromkeys(df["method"]):
        rows = df[(df["method"] == method) & (df["source"] == "watermarked")]
        run = str(rows["_run"].iloc[0]) if len(rows) else None
        if run is None:
            continue
        ids = list((mans[runs.index(run)].get("images") or {}).get("ids") or [])
        raw = str(rows["method"].iloc[0]).split(" [")[0]  # a label kept apart from another run's
        p = plots.image_grid(
            Path(run), rows[rows["_run"] == run], raw, out / f"grid_{safe_name(method)}.png", signs, ids
        )
        if p is not None:
            grids.append((method, p))
    return grids


def _load_runs(paths: list[Path], pool: bool) -> tuple[pd.DataFrame, list[dict], list[str], float]:
    """Merged rows (``_run``, ``_image``: the run's own image id), manifests, pooling notes, the target FPR."""
    df, mans = _merge_runs(paths)
    notes = check_runs(paths, mans, pool) if len(paths) > 1 else []
    if "image_id" in df:
        df["_image"] = df["image_id"]
    if any(n.startswith("Methods from different runs") for n in notes):  # unpaired: keep image ids apart
        df["image_id"] = df["_run"] + ":" + df["image_id"].astype(str)
    fprs = {float(m.get("target_fpr", 1e-3)) for m in mans}
    fpr = min(fprs)
    if len(fprs) > 1 and len(df):  # only when pooled (check_runs says so in the report)
        from wmbench.detection import analytic_threshold

        df["detected"] = [
            m >= analytic_threshold(int(k), fpr) for m, k in zip(df["matches"], df["nbits"], strict=True)
        ]
    return df, mans, notes, fpr


def _meta(mans: list[dict], notes: list[str]) -> list[str]:
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
    n_err = sum(len(m.get("errors", [])) for m in mans)
    n_skip = sum(len(m.get("skipped_cells", [])) for m in mans)
    if n_err or n_skip:
        meta.append(f"**{n_err} error(s), {n_skip} skip(s)**: see *Errors and skipped cells* at the end.")
    return meta + notes


def _problems_section(mans: list[dict]) -> list[Section]:
    lines = _problem_lines(mans)
    if not lines:
        return []
    return [Section("Errors and skipped cells", items=lines)]


def _nothing_ran(df: pd.DataFrame) -> bool:
    return df.empty or "source" not in df or not (df["source"] == "watermarked").any()


def build_report(
    runs: list[Path], out: Path, pool: bool = False, painter: Painter | None = None
) -> dict[str, Path]:
    """Write report.md, report.html and the PNG plots into ``out``; returns their paths. Runs that differ in
    images, seed or target FPR are refused unless ``pool``. A run in which nothing ran gets a report that says so
    and why.  ``painter``: a helper process drawing the figures while this one builds the tables."""
    if not runs:
        raise WmbenchError("report: give at least one run folder")
    paths = [Path(r) for r in runs]
    df, mans, notes, fpr = _load_runs(paths, pool)
    if out.exists() and not out.is_dir():
        raise WmbenchError(f"report --out {out}: exists and is not a folder; choose a folder path")
    out.mkdir(parents=True, exist_ok=True)
    title = "wmbench report: " + " + ".join(str(m.get("suite_name", "?")) for m in mans)
    meta = _meta(mans, notes)
    files: dict[str, Path] = {}
    if _nothing_ran(df):
        glance = Section(
            "Nothing ran",
            "No watermarked image was measured: every cell was skipped or failed. "
            "The reasons are below; fix them (e.g. install the missing weights) and run again.",
        )
        md, page = render(title, meta, glance, _problems_section(mans))
    else:
        md, page, figs = _full_report(df, mans, fpr, out, title, meta, painter)
        files.update({p.stem: p for _, p in figs})
    files["md"] = out / "report.md"
    files["md"].write_text(md)
    files["html"] = out / "report.html"
    files["html"].write_text(page)
    return files


def _full_report(
    df: pd.DataFrame,
    mans: list[dict],
    fpr: float,
    out: Path,
    title: str,
    meta: list[str],
    painter: Painter | None,
) -> tuple[str, str, list[tuple[str, Path]]]:
    """The figures are handed out first (to ``painter`` when there is one), the tables built meanwhile.
    -> (markdown, html, figures)"""
    draw: Draw = painter.draw if painter is not None else draw_here
    wm = analysis.watermarked(df, mans)
    cells = analysis.cell_table(wm)
    signs = analysis.strength_signs(wm, mans)
    overall = analysis.rank(wm)
    q = analysis.quality_stats(wm)
    order = list(overall.table["method"]) if not overall.empty else []
    order += [m for m in dict.fromkeys(wm["method"]) if m not in order]
    heat = draw("heatmap", cells, order, out / "glance.png")
    # one method: the ranking table already says it; a lone point compares nothing
    scatter = (
        draw("scatter", overall.table, q, out / "quality_vs_robustness.png")
        if len(overall.table) > 1
        else None
    )
    curves = _curve_jobs(draw, cells, signs, out)
    clean = df[df["source"] == "clean"]
    quality = _quality_sections(wm, clean, q)
    head = [*_ranking_sections(wm, fpr, q), quality[0]]
    tail = [*quality[1:], *_detail_sections(wm, clean, fpr, cells, signs), *_problems_section(mans)]
    grids = _grids(df, mans, signs, out)
    figures = _figure_sections(curves, fpr, grids, scatter.result() if scatter is not None else None)
    heat_path = heat.result()
    glance = (
        Section(
            "At a glance",
            "Mean bit accuracy of each method (rows, best ranked first) under each attack (columns, mean over its "
            "strengths), families side by side; green = the watermark survives, 0.5 = chance, blank = not run. ↓ marks a forgery, "
            "where a high value is the attacker's win (colours reversed).",
            figures=[("method × attack bit accuracy", heat_path)],
        )
        if heat_path is not None
        else None
    )
    sections = [*head, *figures, *tail]
    md, page = render(title, meta, glance, sections)
    return md, page, [f for s in (glance, *sections) if s is not None for f in s.figures]


def write_report(run: str | Path, painter: Painter | None = None) -> Path:
    """Report of one run into its own folder; returns report.md's path."""
    return build_report([Path(run)], Path(run), painter=painter)["md"]
