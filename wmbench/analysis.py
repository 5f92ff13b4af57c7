"""Tables with uncertainty from a results frame: per-cell figures, paired method comparisons, rankings.

A *cell* is method × attack × strength over a run's images. Every figure here comes with a 95 % interval
(``wmbench.stats``). Rankings use only the *removal* cells that every ranked method ran (forgery cells, where a
high bit accuracy means the attacker won, are ranked on their own, lower first), and average each method's
score per image first, so the image stays the independent unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from wmbench import stats

KEY = ["method", "attack", "strength"]
CELL = ["attack", "strength"]
REMOVAL, FORGERY = "removal", "forgery"
#: methods whose mean watermark PSNRs spread more than this are flagged as compared at different quality
PSNR_SPREAD_DB = 0.5


# ------------------------------------------------------------------------------ which way is good


@lru_cache(maxsize=256)
def class_goal(attack_name: str) -> str:
    """The registered attack's declared goal; an attack that is not installed counts as removal."""
    from wmbench.registry import attacks
    from wmbench.static_meta import plugin_meta

    try:  # built-ins read from their source: a report imports no plugin (and no torch)
        goal = str(plugin_meta(attacks(), attack_name, ("goal",))["goal"])
        return goal if goal in (REMOVAL, FORGERY) else REMOVAL
    except Exception:  # noqa: BLE001 - an unknown third-party attack keeps the default
        return REMOVAL


def _sequence_steps(manifests: list[dict] | None) -> dict[str, list[dict]]:
    """Sequence label -> its steps as the suite wrote them ({name, strength?, params?})."""
    steps: dict[str, list[dict]] = {}
    for man in manifests or []:
        for spec in (man.get("suite") or {}).get("attacks") or []:
            if spec.get("sequence"):
                label = spec.get("label") or "+".join(str(s.get("name")) for s in spec["sequence"])
                steps[label] = list(spec["sequence"])
    return steps


def _labels(df: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = df[["attack", "attack_name"]].drop_duplicates()
    return list(zip(pairs["attack"], pairs["attack_name"], strict=True))


def attack_goals(df: pd.DataFrame, manifests: list[dict] | None = None) -> dict[str, str]:
    """Attack label -> goal. A sequence is a forgery when any of its steps is (steps read from the manifests)."""
    steps = _sequence_steps(manifests)
    goals: dict[str, str] = {}
    for label, name in _labels(df):
        names = [str(s.get("name")) for s in steps.get(label, [])] if name == "sequence" else [name]
        goals[label] = FORGERY if any(class_goal(n) == FORGERY for n in names) else REMOVAL
    return goals


@lru_cache(maxsize=256)
def _descending(attack_name: str) -> bool:
    """True when a smaller value is the stronger attack: the class's ``strength_range`` (weakest, strongest)
    runs high -> low (jpeg quality, resize scale, kept area)."""
    from wmbench.registry import attacks
    from wmbench.static_meta import plugin_meta

    try:
        lo, hi = plugin_meta(attacks(), attack_name, ("strength_range",))["strength_range"]
        return float(lo) > float(hi)
    except Exception:  # noqa: BLE001 - an unknown (e.g. uninstalled third-party) attack keeps ascending
        return False


def strength_signs(df: pd.DataFrame, manifests: list[dict] | None = None) -> dict[str, int]:
    """Attack label -> +1 when a larger strength is the stronger attack, -1 when a smaller one is, so tables and
    axes can read weak -> strong; a sequence follows its swept step (the one without a fixed strength)."""
    steps = _sequence_steps(manifests)
    signs: dict[str, int] = {}
    for label, name in _labels(df):
        if name == "sequence":
            swept = [str(s.get("name")) for s in steps.get(label, []) if s.get("strength") is None]
            name = swept[0] if swept else name
        signs[label] = -1 if _descending(str(name)) else 1
    return signs


def watermarked(df: pd.DataFrame, manifests: list[dict] | None = None) -> pd.DataFrame:
    """The attacked rows (source watermarked) with a ``goal`` column."""
    wm = df[df["source"] == "watermarked"].copy()
    goals = attack_goals(wm, manifests)
    wm["goal"] = wm["attack"].map(goals).fillna(REMOVAL)
    return wm


# ------------------------------------------------------------------------------ per cell


def _cell_row(g: pd.DataFrame) -> dict:
    acc = _bit_acc(g)
    tpr = stats.proportion(g["detected"].to_numpy())
    word = stats.proportion(g["word_acc"].to_numpy() > 0.5)
    row = {
        "n": len(g),
        "unit": g["unit"].iloc[0],
        "family": g["family"].iloc[0],
        "goal": g["goal"].iloc[0] if "goal" in g else REMOVAL,
        **_est("bit_acc", acc),
        **_est("tpr", tpr),
        **_est("word_acc", word),
    }
    for c in ("psnr", "psnr_attacked", "ssim", "lpips"):
        row.update(_est(c, stats.t_mean(g[c].to_numpy(dtype=float)) if c in g else stats.NAN))
    return row


def _bit_acc(g: pd.DataFrame) -> stats.Estimate:
    """Mean of the rows' bit accuracy; the interval's floor from their pooled matching bits."""
    return stats.bounded_mean(g["bit_acc"].to_numpy(), int(g["matches"].sum()), int(g["nbits"].sum()))


#: natural ranges: an interval never reaches past what the metric can take
BOUNDS = {
    "lpips": (0.0, math.inf),
    "ssim": (-1.0, 1.0),
    "ms_ssim": (0.0, 1.0),
    "psnr_attacked": (0.0, math.inf),
}


def _est(name: str, e: stats.Estimate) -> dict[str, float]:
    lo, hi = BOUNDS.get(name, (-math.inf, math.inf))
    return {name: e.value, f"{name}_lo": max(e.lo, lo), f"{name}_hi": min(e.hi, hi)}


def cell_table(wm: pd.DataFrame) -> pd.DataFrame:
    """One row per method × attack × strength: n, unit, family, goal, and every figure with ``_lo``/``_hi``."""
    rows = [{**dict(zip(KEY, k, strict=True)), **_cell_row(g)} for k, g in wm.groupby(KEY, sort=False)]
    return pd.DataFrame(rows)


def quality_stats(wm: pd.DataFrame) -> pd.DataFrame:
    """Watermarked vs cover per method, from the identity rows (one per image), with t intervals."""
    ident = wm[wm["attack"] == "identity"]
    rows = []
    for method, g in ident.groupby("method", sort=False):
        row: dict = {"method": method, "nbits": int(g["nbits"].iloc[0]), "n": len(g)}
        for c in ("psnr", "ssim", "ms_ssim", "lpips"):
            row.update(_est(c, stats.t_mean(g[c].to_numpy(dtype=float))))
        row.update(_est("clean_bit_acc", _bit_acc(g)))
        rows.append(row)
    return pd.DataFrame(rows)


def quality_note(q: pd.DataFrame) -> str | None:
    """A sentence when the methods are compared at different watermark PSNR, else None."""
    p = q.dropna(subset=["psnr"])
    p = p[np.isfinite(p["psnr"].astype(float))]
    if len(p) < 2:
        return None
    lo, hi = p.loc[p["psnr"].idxmin()], p.loc[p["psnr"].idxmax()]
    if hi["psnr"] - lo["psnr"] <= PSNR_SPREAD_DB:
        return None
    return (
        f"Methods are compared at different image quality: watermark PSNR runs from {lo['psnr']:.2f} dB "
        f"({lo['method']}) to {hi['psnr']:.2f} dB ({hi['method']}). A stronger watermark buys robustness with "
        "quality; to compare at equal quality give the learned methods `params: {psnr_target: <dB>}`."
    )


# ------------------------------------------------------------------------------ paired comparisons


def _per_image(g: pd.DataFrame, metric: str) -> pd.Series:
    return g.groupby("image_id", sort=False)[metric].mean()


def _compare_series(a: pd.Series, b: pd.Series) -> tuple[stats.Paired, str]:
    """Paired t over the images both have; Welch's t when they share fewer than two (pooled runs)."""
    common = a.index.intersection(b.index)
    if len(common) >= 2:
        return stats.paired_t(a.loc[common].to_numpy(), b.loc[common].to_numpy()), "paired t"
    return stats.welch_t(a.to_numpy(), b.to_numpy()), "welch t"


def pairwise(wm: pd.DataFrame, metric: str = "bit_acc") -> pd.DataFrame:
    """Every pair of methods on every cell both ran: mean difference a − b over the same images, its 95 %
    t interval, the paired t-test p-value, and Holm's adjusted p-value over every row of the table."""
    methods = list(dict.fromkeys(wm["method"]))
    rows = []
    for (attack, strength), g in wm.groupby(CELL, sort=False):
        per = {m: _per_image(x, metric) for m, x in g.groupby("method", sort=False)}
        have = [m for m in methods if m in per]
        for i, a in enumerate(have):
            for b in have[i + 1 :]:
                r, test = _compare_series(per[a], per[b])
                rows.append(
                    {
                        "a": a,
                        "b": b,
                        "attack": attack,
                        "strength": float(strength),
                        "family": g["family"].iloc[0],
                        "goal": g["goal"].iloc[0] if "goal" in g else REMOVAL,
                        "n": r.n,
                        "diff": r.diff,
                        "lo": r.lo,
                        "hi": r.hi,
                        "p_value": r.p_value,
                        "test": test,
                    }
                )
    out = pd.DataFrame(rows)
    if not out.empty:
        out["p_holm"] = stats.holm(out["p_value"].to_numpy())
    return out


# ------------------------------------------------------------------------------ ranking


@dataclass
class Ranking:
    """Methods ordered by their score over ``cells`` (the cells every one of them ran)."""

    goal: str
    family: str | None
    table: pd.DataFrame  # rank, method, score(_lo/_hi), tpr(_lo/_hi), n_images, p_vs_next
    cells: list[tuple[str, float]]
    left_out: list[dict] = field(default_factory=list)  # {attack, strength, missing: [methods]}
    unranked: list[str] = field(default_factory=list)  # methods that ran none of these cells

    @property
    def empty(self) -> bool:
        return self.table.empty


def shared_cells(wm: pd.DataFrame, methods: list[str]) -> tuple[list[tuple[str, float]], list[dict]]:
    """Cells every method ran (in run order), and the others with the methods that lack them."""
    have = {
        m: set(map(tuple, g[CELL].drop_duplicates().itertuples(index=False))) for m, g in wm.groupby("method")
    }
    seen = list(dict.fromkeys(map(tuple, wm[CELL].itertuples(index=False))))
    first = {a: i for i, (a, _) in reversed(list(enumerate(seen)))}
    cells = sorted(
        seen, key=lambda c: (first[c[0]], float(c[1]))
    )  # attacks in run order, strengths ascending
    shared, left = [], []
    for c in cells:
        missing = [m for m in methods if c not in have.get(m, set())]
        if missing:
            left.append({"attack": c[0], "strength": float(c[1]), "missing": missing})
        else:
            shared.append((c[0], float(c[1])))
    return shared, left


def _method_scores(g: pd.DataFrame, n_cells: int) -> tuple[pd.Series, stats.Estimate, stats.Estimate]:
    """Per-image mean over the cells (images missing a cell are dropped), with its score and TPR estimates."""
    acc = g.pivot_table(index="image_id", columns=CELL, values="bit_acc", aggfunc="mean")
    det = g.assign(det=g["detected"].astype(float)).pivot_table(
        index="image_id", columns=CELL, values="det", aggfunc="mean"
    )
    full = acc.index[acc.notna().sum(axis=1) == n_cells]
    keep = g[g["image_id"].isin(full)]
    per_acc = acc.loc[full].mean(axis=1)
    score = stats.bounded_mean(per_acc.to_numpy(), int(keep["matches"].sum()), int(keep["nbits"].sum()))
    tpr = stats.bounded_mean(
        det.loc[full].mean(axis=1).to_numpy(), int(keep["detected"].sum()), int(len(keep))
    )
    return per_acc, score, tpr


def rank(wm: pd.DataFrame, goal: str = REMOVAL, family: str | None = None) -> Ranking:
    """Rank the methods that ran any ``goal`` cell on the ones they all ran (identity never counts), optionally
    one family.

    Removal: higher mean bit accuracy first. Forgery: the score is the forgery's success (bit accuracy of the
    forged cover against the message), lower first. ``p_vs_next`` tests each method against the next one
    (paired t over per-image scores, Holm over the list)."""
    sub = wm[(wm["goal"] == goal) & (wm["attack"] != "identity")]
    methods = list(dict.fromkeys(sub["method"]))  # a method that ran no such cell is not ranked, and says so
    unranked = [m for m in dict.fromkeys(wm["method"]) if m not in methods]
    cells, left = shared_cells(sub, methods)
    if family is not None:
        cells = [c for c in cells if _family(sub, c) == family]
        left = [x for x in left if _family(sub, (x["attack"], x["strength"])) == family]
    if not cells:
        return Ranking(goal, family, pd.DataFrame(), [], left, unranked)
    on = sub.set_index(CELL).index.isin(cells)
    sub = sub[on]
    rows, per = [], {}
    for m in methods:
        per[m], score, tpr = _method_scores(sub[sub["method"] == m], len(cells))
        rows.append({"method": m, **_est("score", score), **_est("tpr", tpr), "n_images": score.n})
    table = pd.DataFrame(rows).sort_values("score", ascending=goal == FORGERY, kind="stable")
    table = table.reset_index(drop=True)
    table.insert(0, "rank", range(1, len(table) + 1))
    order = list(table["method"])
    p = [_compare_series(per[a], per[b])[0].p_value for a, b in zip(order, order[1:], strict=False)]
    table["p_vs_next"] = [*stats.holm(p), math.nan] if p else [math.nan]
    return Ranking(goal, family, table, cells, left, unranked)


def _family(sub: pd.DataFrame, cell: tuple) -> str:
    g = sub[(sub["attack"] == cell[0]) & (sub["strength"] == cell[1])]
    return str(g["family"].iloc[0]) if len(g) else "?"


def rankings(wm: pd.DataFrame) -> dict[str, Ranking]:
    """``overall`` (every shared removal cell), one per family of those cells, and ``forgery`` when any ran."""
    out = {"overall": rank(wm, REMOVAL)}
    fams = dict.fromkeys(_family(wm, c) for c in out["overall"].cells)
    if len(fams) > 1:
        for fam in fams:
            out[fam] = rank(wm, REMOVAL, fam)
    if (wm["goal"] == FORGERY).any():
        out["forgery"] = rank(wm, FORGERY)
    return out


def family_matrix(pairs: pd.DataFrame, family: str | None, alpha: float = 0.05) -> pd.DataFrame:
    """Methods × methods for one family's removal cells: mean difference of bit accuracy (row − column) over the
    cells both ran, and how many cells the row is significantly better / worse in (Holm-adjusted p < alpha)."""
    p = pairs[pairs["goal"] == REMOVAL]
    p = p[p["attack"] != "identity"]
    if family is not None:
        p = p[p["family"] == family]
    methods = list(dict.fromkeys([*p["a"], *p["b"]]))
    mat = pd.DataFrame("", index=methods, columns=methods)
    for a in methods:
        for b in methods:
            if a == b:
                mat.loc[a, b] = "·"
                continue
            fwd = p[(p["a"] == a) & (p["b"] == b)]
            rev = p[(p["a"] == b) & (p["b"] == a)]
            d = np.concatenate([fwd["diff"].to_numpy(), -rev["diff"].to_numpy()])
            sig = np.concatenate([fwd["p_holm"].to_numpy(), rev["p_holm"].to_numpy()]) < alpha
            better = int((sig & (d > 0)).sum())
            worse = int((sig & (d < 0)).sum())
            mat.loc[a, b] = f"{np.nanmean(d):+.3f} ({better}/{worse})" if len(d) else "–"
    return mat.rename_axis("row − column").reset_index()
