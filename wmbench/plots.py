"""Report figures (matplotlib, Agg): accuracy-vs-strength curves with 95 % bands, quality-vs-robustness scatter
with error bars, image grids."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from PIL import Image  # noqa: E402

from wmbench.store import cell_key, example_path  # noqa: E402


def curves(cells: pd.DataFrame, wm: pd.DataFrame, path: Path, metric: str = "bit_acc") -> Path | None:
    """One panel per attack (strength in its unit on x), one line per method with its 95 % band (``cells``: the
    per-cell table of ``analysis.cell_table``); identity is left out, forgery panels say so."""
    c = cells[cells["attack"] != "identity"]
    attacks = list(dict.fromkeys(c["attack"]))
    if not attacks:
        return None
    methods = list(dict.fromkeys(cells["method"]))
    cols = min(4, len(attacks))
    rows = math.ceil(len(attacks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, atk in zip(axes.flat, attacks, strict=False):
        g = c[c["attack"] == atk]
        for i, m in enumerate(methods):
            gm = g[g["method"] == m].sort_values("strength")
            if len(gm):
                color = f"C{i % 10}"
                err = np.nan_to_num([gm[metric] - gm[f"{metric}_lo"], gm[f"{metric}_hi"] - gm[metric]])
                ax.errorbar(
                    gm["strength"], gm[metric], yerr=err, marker="o", ms=3, capsize=2, label=m, color=color
                )
                ax.fill_between(
                    gm["strength"], gm[f"{metric}_lo"], gm[f"{metric}_hi"], color=color, alpha=0.15
                )
        xs = sorted(g["strength"].unique())
        if len(xs) == 1:
            ax.set_xticks(xs)
        name = wm[wm["attack"] == atk]["attack_name"].iloc[0]
        if _descending(name):
            ax.invert_xaxis()  # e.g. JPEG quality: weaker -> stronger reads left -> right
        forged = (g["goal"] == "forgery").any()
        ax.set_title(f"{atk} (forgery: lower is better)" if forged else atk, fontsize=9)
        ax.set_xlabel(g["unit"].iloc[0], fontsize=8)
        low = float(np.nanmin(g[f"{metric}_lo"].to_numpy(dtype=float))) if len(g) else 0.4
        ax.set_ylim(
            min(0.4, low - 0.05) if metric == "bit_acc" else -0.02, 1.02
        )  # inverted reads stay visible
        ax.axhline(0.5 if metric == "bit_acc" else 0.0, color="grey", lw=0.6, ls=":")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(attacks) :]:
        ax.axis("off")
    axes[0][0].set_ylabel(metric, fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 if rows > 1 else 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _descending(attack_name: str) -> bool:
    """True when a smaller value is the stronger attack (its relative range runs high -> low)."""
    from wmbench.registry import attacks

    try:
        lo, hi = attacks().get(attack_name).strength_range
    except Exception:  # noqa: BLE001 - an unknown (e.g. third-party, uninstalled) attack just keeps its axis
        return False
    return lo > hi


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


def image_grid(run: Path, df: pd.DataFrame, method: str, path: Path, max_attacks: int = 5) -> Path | None:
    """Cover, watermarked, residual ×10 and attacked examples of the first example image of a method."""
    cov, wmp = example_path(run, method, 0, "cover"), example_path(run, method, 0, "wm")
    if not (cov.is_file() and wmp.is_file()):
        return None
    c = np.asarray(Image.open(cov).convert("RGB"), dtype=np.float32) / 255
    w = np.asarray(Image.open(wmp).convert("RGB"), dtype=np.float32) / 255
    panels = [("cover", c), ("watermarked", w), ("residual ×10", np.clip(0.5 + 10 * (w - c), 0, 1))]
    cells = df[(df["method"] == method) & (df["source"] == "watermarked") & (df["attack"] != "identity")]
    cells = cells.drop_duplicates(["attack", "strength"])
    picked = (
        cells.groupby("attack", sort=False).tail(1).head(max_attacks)
    )  # strongest listed strength per attack
    for _, r in picked.iterrows():
        p = example_path(run, method, 0, cell_key(method, r["attack"], r["strength"]))
        if p.is_file():
            panels.append(
                (f"{r['attack']} {r['strength']:g}", np.asarray(Image.open(p).convert("RGB")) / 255)
            )
    fig, axes = plt.subplots(1, len(panels), figsize=(2.3 * len(panels), 2.7))
    for ax, (title, img) in zip(np.atleast_1d(axes), panels, strict=True):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(method, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
