"""The benchmarks' test images: 96 real photographs at 256², cut from the built-in photos.

Why not ``source: builtin``: the eval split has only 25 tiles at 256² (``wmbench.data.tile_counts(256)``), so the
set is the 25 eval tiles followed by the first 71 train tiles (other photos and scales of the same packages).
Shared by ``distortions.py`` and ``overhead.py`` so both time the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_PHOTOS = 96
SIZE = 256


def photos(n: int = N_PHOTOS, size: int = SIZE) -> np.ndarray:
    """n real photographs, eval tiles first.  -> n size size 3 uint8"""
    from wmbench.data import builtin_tiles

    _, ev = builtin_tiles(size, "eval")
    _, tr = builtin_tiles(size, "train")
    both = np.concatenate([ev.numpy(), tr.numpy()])  # m 3 s s
    if both.shape[0] < n:
        raise SystemExit(f"only {both.shape[0]} built-in tiles at {size}², asked for {n}")
    return np.ascontiguousarray(both[:n].transpose(0, 2, 3, 1))


def write_folder(root: Path, n: int = N_PHOTOS, size: int = SIZE) -> Path:
    """Write the photos as PNGs (000.png, …) for a ``source: folder`` suite; returns ``root``."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i, a in enumerate(photos(n, size)):
        Image.fromarray(a).save(root / f"{i:03d}.png")
    return root
