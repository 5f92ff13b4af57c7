"""Extraction time per image with and without periodic re-synchronisation (``params: {sync: true}``).

Usage: python benchmarks/sync_cost.py [--methods hidden end2] [--size 128] [--count 32]

Why: sync searches up to (1 + 6 peaks) zooms × 16 sub-stride shifts (× 16 rolls of the folded map, which are
cheap) per image, so it multiplies extraction cost; this prints by how much, on clean and on resized-crop images
(crops produce more autocorrelation peaks), so a suite's wall time can be planned.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table
from wmbench.attacks.geometric import Crop

from wmbench.api import quantize_8bit
from wmbench.data import load_image_set
from wmbench.registry import methods


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["hidden", "end2"])
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--count", type=int, default=32)
    a = ap.parse_args()
    x = load_image_set("builtin", size=a.size, count=a.count, split="eval").images.float() / 255  # b 3 h w
    table = Table(
        title=f"extraction time per image, {a.count} eval tiles at {a.size}², {torch.get_num_threads()} threads"
    )
    for c in ("method", "input", "plain ms", "sync ms", "× plain"):
        table.add_column(c, justify="left" if c in ("method", "input") else "right")
    for name in a.methods:
        plain, synced = methods().get(name)(), methods().get(name)(sync=True)
        plain.setup(torch.device("cpu"))
        synced.setup(torch.device("cpu"))
        msg = torch.randint(
            0, 2, (x.shape[0], plain.nbits), generator=torch.Generator().manual_seed(0)
        ).float()
        y = quantize_8bit(plain.embed(x, msg))
        cropped = quantize_8bit(Crop().apply(y, 0.75, gen=torch.Generator().manual_seed(0)))
        for label, z in (("watermarked", y), ("crop 0.75", cropped)):
            times = []
            for m in (plain, synced):
                with torch.no_grad():
                    m.extract(z[:2])  # warm-up
                    t = time.perf_counter()
                    m.extract(z)
                    times.append((time.perf_counter() - t) / z.shape[0] * 1000)
            table.add_row(name, label, f"{times[0]:.1f}", f"{times[1]:.0f}", f"{times[1] / times[0]:.0f}")
    Console().print(table)


if __name__ == "__main__":
    main()
