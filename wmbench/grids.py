"""The report's image grids, composed with PIL: cover, watermarked, residual ×10 and a few attacked examples per
row, each tile labelled with its bit accuracy.

Why not matplotlib: a grid is pixels pasted side by side; drawing them as axes cost ~1 s per method (imshow,
layout, a rasterising savefig) where pasting costs a few milliseconds, and the report is written at the end of
every run (issue 15).
"""

from __future__ import annotations

import math
import textwrap
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from wmbench.store import cell_key, example_path

TILE = 160  # px per tile: 8 columns fit the report's 1,366 px page
GAP = 6
TITLE_H = 40  # two lines of 13 px titles above the first row
FONT_PX = 13


@lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=FONT_PX)


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


def _load(p: Path) -> np.ndarray:
    """-> h w 3 float32 in [0, 1]"""
    with Image.open(p) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255


def _acc(cell: pd.DataFrame) -> str:
    return f"bit acc {float(cell['bit_acc'].iloc[0]):.2f}" if len(cell) else ""


def _row_tiles(
    run: Path, one: pd.DataFrame, method: str, i: int, image_id: str, picked: list[tuple[str, float]]
) -> list[tuple[str, np.ndarray | None, str]]:
    """(title, h w 3 image or None, tag) for one example cover's row."""
    c, w = _load(example_path(run, method, i, "cover")), _load(example_path(run, method, i, "wm"))
    ident = one[one["attack"] == "identity"]
    psnr = float(ident["psnr"].iloc[0]) if len(ident) else math.nan
    tiles: list[tuple[str, np.ndarray | None, str]] = [
        ("cover", c, image_id.split("/")[0]),
        ("watermarked", w, _acc(ident)),
        ("residual x10", np.clip(0.5 + 10 * (w - c), 0, 1), f"PSNR {psnr:.1f} dB"),
    ]
    for atk, st in picked:
        p = example_path(run, method, i, cell_key(method, atk, st))
        cell = one[(one["attack"] == atk) & (one["strength"].astype(float) == st)]
        tiles.append((f"{atk} {st:g}", _load(p) if p.is_file() else None, _acc(cell)))
    return tiles


def _paste(
    canvas: Image.Image, draw: ImageDraw.ImageDraw, x: int, y: int, img: np.ndarray | None, tag: str
) -> None:
    """One tile at (x, y): the image scaled to TILE px (or "no example"), its tag on a white box at the foot."""
    font = _font()
    if img is None:
        draw.rectangle((x, y, x + TILE - 1, y + TILE - 1), outline=(200, 200, 200))
        draw.text((x + TILE // 2, y + TILE // 2), "no example", fill=(0, 0, 0), font=font, anchor="mm")
    else:
        tile = Image.fromarray((img * 255).round().astype(np.uint8)).resize(
            (TILE, TILE), Image.Resampling.BOX
        )
        canvas.paste(tile, (x, y))
    if tag:
        x0, y0, x1, y1 = draw.textbbox((x + 5, y + TILE - 5), tag, font=font, anchor="ld")
        draw.rectangle((x0 - 2, y0 - 2, x1 + 2, y1 + 2), fill=(255, 255, 255))
        draw.text((x + 5, y + TILE - 5), tag, fill=(0, 0, 0), font=font, anchor="ld")


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
    rows_of_tiles = [
        _row_tiles(run, rows[rows["_image"] == ids[i]], method, i, ids[i], picked) for i in covers
    ]
    ncol = len(rows_of_tiles[0])
    canvas = Image.new("RGB", (ncol * (TILE + GAP) + GAP, TITLE_H + len(covers) * (TILE + GAP)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, (title, _, _) in enumerate(rows_of_tiles[0]):  # titles once, above the first row
        text = textwrap.fill(title.replace("[", " ["), 22)
        draw.multiline_text(
            (GAP + c * (TILE + GAP) + TILE // 2, TITLE_H - 4),
            text,
            fill=(0, 0, 0),
            font=_font(),
            anchor="md",
            align="center",
        )
    for r, tiles in enumerate(rows_of_tiles):
        for c, (_, img, tag) in enumerate(tiles):
            _paste(canvas, draw, GAP + c * (TILE + GAP), TITLE_H + r * (TILE + GAP), img, tag)
    canvas.save(path, format="PNG", compress_level=1)
    return path
