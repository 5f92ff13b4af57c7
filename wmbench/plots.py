"""Report figures (matplotlib's object API, PNG through Agg): accuracy-vs-strength curves with 95 % bands, the
methods × attacks heatmap, quality-vs-robustness scatter with error bars.  The image grids are pasted with PIL
(``wmbench.grids``)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # not pyplot: no GUI backend machinery, ~0.3 s less import per run
from matplotlib.lines import Line2D

#: figure width (inches) of every wide figure: the report shows it at most ~1170 px wide, so a 9 pt label reads as
#: ~11 px on screen
WIDE_IN = 13.0


def _legend_top(fig: Figure, handles: list, labels: list[str], below: float = 0.75) -> None:
    """The figure's own legend in as many rows as its width needs, above the panels, and fixed margins (in
    inches) for 9–10 pt titles, tick labels and x labels ``below`` inches deep: ``tight_layout`` measured every
    text to the same end and cost more than drawing the figure (0.27 s of 0.8 s per curve figure)."""
    w, h = fig.get_size_inches()
    ncol = max(1, min(8, len(labels), int(w / 1.35)))  # ~1.3 in per entry: a narrow figure wraps its legend
    fig.legend(handles, labels, loc="upper center", ncol=ncol, fontsize=9, frameon=False)
    rows, cols = fig.axes[0].get_subplotspec().get_gridspec().get_geometry()
    left, right, title = 0.65, 0.15, 0.3  # inches
    top_in = h - 0.1 - 0.27 * math.ceil(len(labels) / ncol) - title
    ax_h = (top_in - below - (rows - 1) * (title + below)) / rows
    ax_w = (w - left - right - (cols - 1) * 0.55) / cols
    fig.subplots_adjust(
        left=left / w,
        right=1 - right / w,
        bottom=below / h,
        top=top_in / h,
        hspace=(title + below) / max(ax_h, 0.1),
        wspace=0.55 / max(ax_w, 0.1),
    )


def warm_up() -> None:
    """Draw and encode a small throwaway figure: the first draw loads the fonts and the text engine (~0.5 s),
    which a helper process (``wmbench.painter``) pays while the run is still going."""
    import io

    fig = Figure(figsize=(2, 1))
    ax = fig.subplots()
    ax.errorbar([0, 1], [0.5, 1.0], yerr=[0.1, 0.1], marker="o")
    ax.fill_between([0, 1], [0.4, 0.9], [0.6, 1.0], alpha=0.2)
    ax.set_title("warm-up", fontsize=10)
    ax.text(0.5, 0.7, "0.93 ↓", fontsize=9, weight="bold")
    fig.savefig(io.BytesIO(), format="png", dpi=50)


def curves(
    cells: pd.DataFrame,
    path: Path,
    signs: dict[str, int],
    methods: list[str],
    metric: str = "bit_acc",
    cols: int = 4,
    psnr_ticks: bool = False,
) -> Path | None:
    """One panel per attack (strength in its unit on x, read weak -> strong: ``signs`` -1 turns the axis), one line
    per method with its 95 % band, and the figure's legend on top. ``cells``: rows of ``analysis.cell_table``
    (one family, say); identity is left out, forgery panels say so. A method keeps its colour (its place in
    ``methods``) in every figure.  ``psnr_ticks``: each strength's tick also gives the mean attacked PSNR (the
    regeneration family: how far the regenerated image is from the one attacked)."""
    c = cells[cells["attack"] != "identity"]
    attacks = list(dict.fromkeys(c["attack"]))
    if not attacks:
        return None
    n = min(cols, len(attacks))  # panels keep one size: a family of two attacks is half as wide
    rows = math.ceil(len(attacks) / n)
    below = 1.05 if psnr_ticks else 0.75  # two-line ticks (strength, PSNR) need a deeper margin
    width = WIDE_IN * max(n, 2) / cols
    legend_rows = math.ceil(len(methods) / max(1, min(8, int(width / 1.35))))
    height = rows * (1.85 + 0.3 + below) + 0.27 * legend_rows + 0.1  # 1.85 in of axes per row
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(rows, n, squeeze=False)
    for ax, atk in zip(axes.flat, attacks, strict=False):
        _curve_panel(ax, c[c["attack"] == atk], methods, metric, signs.get(atk, 1) < 0, psnr_ticks)
    for ax in list(axes.flat)[len(attacks) :]:
        ax.axis("off")
    for row in axes:
        row[0].set_ylabel(metric, fontsize=9)
    shown = [(i, m) for i, m in enumerate(methods) if m in set(c["method"])]
    handles = [Line2D([], [], color=f"C{i % 10}", marker="o", ms=4) for i, _ in shown]
    _legend_top(fig, handles, [m for _, m in shown], below)
    fig.savefig(path, dpi=100, pil_kwargs={"compress_level": 1})
    return path


def _psnr_ticks(ax: Axes, g: pd.DataFrame, xs: list[float]) -> bool:
    """Tick labels "strength / mean attacked PSNR" (finite values, over methods); False if there are none."""
    if "psnr_attacked" not in g:
        return False
    v = g[np.isfinite(g["psnr_attacked"].astype(float))].groupby("strength")["psnr_attacked"].mean()
    if v.empty:
        return False
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{x:g}\n{v[x]:.1f} dB" if x in v.index else f"{x:g}" for x in xs])
    return True


def _curve_panel(
    ax: Axes, g: pd.DataFrame, methods: list[str], metric: str, descending: bool, psnr_ticks: bool = False
) -> None:
    for i, m in enumerate(methods):
        gm = g[g["method"] == m].sort_values("strength")
        if len(gm):
            color = f"C{i % 10}"
            err = np.nan_to_num([gm[metric] - gm[f"{metric}_lo"], gm[f"{metric}_hi"] - gm[metric]])
            ax.errorbar(gm["strength"], gm[metric], yerr=err, marker="o", ms=3, capsize=2, color=color)
            ax.fill_between(gm["strength"], gm[f"{metric}_lo"], gm[f"{metric}_hi"], color=color, alpha=0.15)
    xs = sorted(g["strength"].unique())
    with_psnr = psnr_ticks and _psnr_ticks(ax, g, xs)
    if len(xs) == 1 and not with_psnr:
        ax.set_xticks(xs)
    if descending:
        ax.invert_xaxis()  # e.g. JPEG quality: weaker -> stronger reads left -> right
    atk = str(g["attack"].iloc[0])
    forged = (g["goal"] == "forgery").any()
    ax.set_title(f"{atk} (forgery: lower is better)" if forged else atk, fontsize=10)
    unit = str(g["unit"].iloc[0])
    label = textwrap.fill(f"{unit}  (weak → strong)" if len(xs) > 1 else unit, 40)
    ax.set_xlabel(f"{label}\n(below each strength: mean attacked PSNR)" if with_psnr else label, fontsize=9)
    low = float(np.nanmin(g[f"{metric}_lo"].to_numpy(dtype=float))) if len(g) else 0.4
    ax.set_ylim(min(0.4, low - 0.05) if metric == "bit_acc" else -0.02, 1.02)  # inverted reads stay visible
    ax.axhline(0.5 if metric == "bit_acc" else 0.0, color="grey", lw=0.6, ls=":")
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)


def _short(v: float) -> str:
    """0.934 -> ".93", 0.998 -> "1": two digits that fit a heatmap cell."""
    s = f"{v:.2f}"
    return "1" if s == "1.00" else s.removeprefix("0")


def heatmap(cells: pd.DataFrame, methods: list[str], path: Path) -> Path | None:
    """Methods × attacks at a glance: mean bit accuracy over each attack's strengths, families side by side.
    Green is good for the watermark: forgery columns (the attacker wants a high value) use the colours reversed."""
    c = cells[cells["attack"] != "identity"]
    if c.empty:
        return None
    fam_order = {f: i for i, f in enumerate(("distortion", "regeneration", "adversarial"))}
    first = {
        a: (fam_order.get(f, 3), i) for i, (a, f) in enumerate(zip(c["attack"], c["family"], strict=True))
    }
    attacks = sorted(dict.fromkeys(c["attack"]), key=lambda a: first[a])
    mean = c.pivot_table(index="method", columns="attack", values="bit_acc", aggfunc="mean")
    mean = mean.reindex(index=[m for m in methods if m in mean.index], columns=attacks)
    forged = set(c[c["goal"] == "forgery"]["attack"])
    good = mean.copy()  # 1 = best for the watermark, whichever way the attack's goal runs
    for a in forged:
        good[a] = 1.5 - good[a]
    fig = Figure(figsize=(min(WIDE_IN, 3 + 0.65 * len(attacks)), 1.8 + 0.45 * len(mean)))
    ax = fig.subplots()
    ax.imshow(good.to_numpy(dtype=float), cmap="RdYlGn", vmin=0.5, vmax=1.0, aspect="auto")
    for (i, j), v in np.ndenumerate(mean.to_numpy(dtype=float)):
        if np.isfinite(v):
            ax.text(j, i, _short(v), ha="center", va="center", fontsize=9)
    ax.set_yticks(range(len(mean)), list(mean.index), fontsize=9)
    labels = [f"{a} ↓" if a in forged else a for a in attacks]
    ax.set_xticks(range(len(attacks)), labels, rotation=50, ha="right", rotation_mode="anchor", fontsize=9)
    fams = [c[c["attack"] == a]["family"].iloc[0] for a in attacks]
    for j in range(1, len(attacks)):
        if fams[j] != fams[j - 1]:
            ax.axvline(j - 0.5, color="black", lw=1.5)
    for f in dict.fromkeys(fams):
        idx = [j for j, x in enumerate(fams) if x == f]
        ax.text((idx[0] + idx[-1]) / 2, -0.7, f, ha="center", va="bottom", fontsize=9, weight="bold")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def scatter(ranking: pd.DataFrame, quality: pd.DataFrame, path: Path) -> Path | None:
    """Quality (watermark PSNR) vs robustness (ranking score), one point per method, both with 95 % error bars.
    The y axis always spans chance (0.5) to 1, so two close methods do not look far apart."""
    b = ranking.merge(quality, on="method")
    b = b[np.isfinite(b["psnr"].astype(float))]
    if b.empty:
        return None
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    order = list(quality["method"])
    for r in b.to_dict(orient="records"):
        i = order.index(r["method"])
        xerr = [[r["psnr"] - r["psnr_lo"]], [r["psnr_hi"] - r["psnr"]]]
        yerr = [[r["score"] - r["score_lo"]], [r["score_hi"] - r["score"]]]
        ax.errorbar(
            r["psnr"],
            r["score"],
            xerr=np.nan_to_num(xerr),
            yerr=np.nan_to_num(yerr),
            fmt="o",
            ms=5,
            capsize=3,
            color=f"C{i % 10}",
        )
        ax.annotate(
            r["method"], (r["psnr"], r["score"]), fontsize=8, xytext=(4, 3), textcoords="offset points"
        )
    ax.set_ylim(min(0.45, float(b["score_lo"].min()) - 0.02), 1.01)
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("quality: mean PSNR of watermarked vs cover (dB)")
    ax.set_ylabel("robustness: mean bit acc. (shared cells)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
