"""Report figures (matplotlib, Agg): accuracy-vs-strength curves with 95 % bands, quality-vs-robustness scatter
with error bars, image grids."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from wmbench.store import cell_key, example_path  # noqa: E402

#: figure width (inches) of every wide figure: the report shows it at most ~1170 px wide, so a 9 pt label reads as
#: ~11 px on screen
WIDE_IN = 13.0


def _legend_top(fig: plt.Figure, handles: list, labels: list[str], top: float) -> None:
    """The figure's own legend, one row (or a few) above its panels."""
    fig.legend(handles, labels, loc="upper center", ncol=min(8, len(labels)), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, top))


def curves(
    cells: pd.DataFrame,
    path: Path,
    signs: dict[str, int],
    methods: list[str],
    metric: str = "bit_acc",
    cols: int = 4,
) -> Path | None:
    """One panel per attack (strength in its unit on x, read weak -> strong: ``signs`` -1 turns the axis), one line
    per method with its 95 % band, and the figure's legend on top. ``cells``: rows of ``analysis.cell_table``
    (one family, say); identity is left out, forgery panels say so. A method keeps its colour (its place in
    ``methods``) in every figure."""
    c = cells[cells["attack"] != "identity"]
    attacks = list(dict.fromkeys(c["attack"]))
    if not attacks:
        return None
    n = min(cols, len(attacks))  # panels keep one size: a family of two attacks is half as wide
    rows = math.ceil(len(attacks) / n)
    fig, axes = plt.subplots(rows, n, figsize=(WIDE_IN * max(n, 2) / cols, 2.9 * rows + 0.5), squeeze=False)
    for ax, atk in zip(axes.flat, attacks, strict=False):
        _curve_panel(ax, c[c["attack"] == atk], methods, metric, signs.get(atk, 1) < 0)
    for ax in list(axes.flat)[len(attacks) :]:
        ax.axis("off")
    for row in axes:
        row[0].set_ylabel(metric, fontsize=9)
    shown = [(i, m) for i, m in enumerate(methods) if m in set(c["method"])]
    handles = [plt.Line2D([], [], color=f"C{i % 10}", marker="o", ms=4) for i, _ in shown]
    top = 1 - 0.45 / (2.9 * rows + 0.5) * (1 + len(shown) // 9)
    _legend_top(fig, handles, [m for _, m in shown], top)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _curve_panel(ax: plt.Axes, g: pd.DataFrame, methods: list[str], metric: str, descending: bool) -> None:
    for i, m in enumerate(methods):
        gm = g[g["method"] == m].sort_values("strength")
        if len(gm):
            color = f"C{i % 10}"
            err = np.nan_to_num([gm[metric] - gm[f"{metric}_lo"], gm[f"{metric}_hi"] - gm[metric]])
            ax.errorbar(gm["strength"], gm[metric], yerr=err, marker="o", ms=3, capsize=2, color=color)
            ax.fill_between(gm["strength"], gm[f"{metric}_lo"], gm[f"{metric}_hi"], color=color, alpha=0.15)
    xs = sorted(g["strength"].unique())
    if len(xs) == 1:
        ax.set_xticks(xs)
    if descending:
        ax.invert_xaxis()  # e.g. JPEG quality: weaker -> stronger reads left -> right
    atk = str(g["attack"].iloc[0])
    forged = (g["goal"] == "forgery").any()
    ax.set_title(f"{atk} (forgery: lower is better)" if forged else atk, fontsize=10)
    unit = str(g["unit"].iloc[0])
    ax.set_xlabel(textwrap.fill(f"{unit}  (weak → strong)" if len(xs) > 1 else unit, 40), fontsize=9)
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
    fig, ax = plt.subplots(figsize=(min(WIDE_IN, 3 + 0.65 * len(attacks)), 1.8 + 0.45 * len(mean)))
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
    plt.close(fig)
    return path


def scatter(ranking: pd.DataFrame, quality: pd.DataFrame, path: Path) -> Path | None:
    """Quality (watermark PSNR) vs robustness (ranking score), one point per method, both with 95 % error bars.
    The y axis always spans chance (0.5) to 1, so two close methods do not look far apart."""
    b = ranking.merge(quality, on="method")
    b = b[np.isfinite(b["psnr"].astype(float))]
    if b.empty:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
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
    plt.close(fig)
    return path


def _load(p: Path) -> np.ndarray:
    return np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255


def pick_attacks(rows: pd.DataFrame, signs: dict[str, int], n: int) -> list[tuple[str, float]]:
    """Up to ``n`` (attack, strongest strength) pairs, taking the families in turn so a grid shows more than
    the first few distortions."""
    by_fam: dict[str, list[tuple[str, float]]] = {}
    for atk, g in rows.groupby("attack", sort=False):
        s = g["strength"].astype(float)
        strongest = float(s.min() if signs.get(str(atk), 1) < 0 else s.max())
        by_fam.setdefault(str(g["family"].iloc[0]), []).append((str(atk), strongest))
    out: list[tuple[str, float]] = []
    while len(out) < n and any(by_fam.values()):
        for items in by_fam.values():
            if items and len(out) < n:
                out.append(items.pop(0))
    return out


def image_grid(
    run: Path, rows: pd.DataFrame, method: str, path: Path, signs: dict[str, int], ids: list[str]
) -> Path | None:
    """Per example cover (one row each): cover, watermarked, residual ×10 and the strongest strength of a few
    attacks, each tile with that image's bit accuracy. ``rows``: the method's watermarked rows, with the run's
    own image ids in ``_image``; ``ids``: the run's images in run order (example i is ids[i])."""
    have = [i for i in range(min(len(ids), 4)) if example_path(run, method, i, "cover").is_file()]
    covers = [i for i in have if example_path(run, method, i, "wm").is_file()]
    if not covers:
        return None
    picked = pick_attacks(rows[rows["attack"] != "identity"], signs, 5)
    ncol = 3 + len(picked)
    fig, axes = plt.subplots(len(covers), ncol, figsize=(1.6 * ncol, 1.85 * len(covers) + 0.4), squeeze=False)
    for r, i in enumerate(covers):
        one = rows[rows["_image"] == ids[i]]
        c, w = _load(example_path(run, method, i, "cover")), _load(example_path(run, method, i, "wm"))
        ident = one[one["attack"] == "identity"]
        psnr = float(ident["psnr"].iloc[0]) if len(ident) else math.nan
        tiles = [
            ("cover", c, ids[i].split("/")[0]),
            ("watermarked", w, _acc(ident)),
            ("residual ×10", np.clip(0.5 + 10 * (w - c), 0, 1), f"PSNR {psnr:.1f} dB"),
        ]
        for atk, st in picked:
            p = example_path(run, method, i, cell_key(method, atk, st))
            cell = one[(one["attack"] == atk) & (one["strength"].astype(float) == st)]
            title = textwrap.fill(f"{atk} {st:g}".replace("[", " ["), 22)  # labels with params: two lines
            tiles.append((title, _load(p) if p.is_file() else None, _acc(cell)))
        for ax, (title, img, tag) in zip(axes[r], tiles, strict=True):
            _tile(ax, img, title if r == 0 else None, tag)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _acc(cell: pd.DataFrame) -> str:
    return f"bit acc {float(cell['bit_acc'].iloc[0]):.2f}" if len(cell) else ""


def _tile(ax: plt.Axes, img: np.ndarray | None, title: str | None, tag: str) -> None:
    """One image with its title (first row only) and a readable tag on a white box at its foot."""
    ax.axis("off")
    if img is None:
        ax.text(0.5, 0.5, "no example", ha="center", va="center", fontsize=9, transform=ax.transAxes)
    else:
        ax.imshow(img, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=9.5)
    if tag:
        box = {"facecolor": "white", "alpha": 0.85, "pad": 1.5, "edgecolor": "none"}
        ax.text(0.03, 0.04, tag, fontsize=9, transform=ax.transAxes, bbox=box)
