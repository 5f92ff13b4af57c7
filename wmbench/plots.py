"""Report figures (matplotlib, Agg): accuracy-vs-strength curves, quality-vs-robustness scatter, image grids."""

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


def curves(df: pd.DataFrame, path: Path, metric: str = "bit_acc") -> Path | None:
    """One panel per attack (strength in its unit on x), one line per method; identity is left out."""
    wm = df[(df["source"] == "watermarked") & (df["attack"] != "identity")]
    attacks = list(dict.fromkeys(wm["attack"]))
    if not attacks:
        return None
    methods = list(dict.fromkeys(df["method"]))
    cols = min(4, len(attacks))
    rows = math.ceil(len(attacks) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
    for ax, atk in zip(axes.flat, attacks, strict=False):
        g = wm[wm["attack"] == atk]
        for m in methods:
            gm = g[g["method"] == m].groupby("strength")[metric].mean().sort_index()
            if len(gm):
                ax.plot(gm.index, gm.values, marker="o", ms=3, label=m)
        xs = sorted(g["strength"].unique())
        if len(xs) == 1:
            ax.set_xticks(xs)
        if _descending(g["attack_name"].iloc[0]):
            ax.invert_xaxis()  # e.g. JPEG quality: weaker -> stronger reads left -> right
        ax.set_title(atk, fontsize=9)
        ax.set_xlabel(g["unit"].iloc[0], fontsize=8)
        low = float(g.groupby(["method", "strength"])[metric].mean().min()) if len(g) else 0.4
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


def scatter(board: pd.DataFrame, path: Path) -> Path | None:
    """Quality (mean PSNR of the watermark) vs robustness (mean bit accuracy over attacks), one point per method."""
    b = board[np.isfinite(board["psnr"].astype(float))]
    if b.empty:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter(b["psnr"], b["mean_bit_acc"], s=40)
    for _, r in b.iterrows():
        ax.annotate(
            r["method"], (r["psnr"], r["mean_bit_acc"]), fontsize=8, xytext=(4, 3), textcoords="offset points"
        )
    ax.set_xlabel("quality: mean PSNR of watermarked vs cover (dB)")
    ax.set_ylabel("robustness: mean bit accuracy over attacks")
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
