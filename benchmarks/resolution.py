"""Clean bit accuracy and PSNR of the learned methods at several image sizes (the resolution policy).

Usage: python benchmarks/resolution.py [--methods hidden end2] [--sizes 128 256 512] [--count 64]
       [--folder DIR]   (your own photographs instead of the built-in eval tiles)

The shipped nets were trained on 64² crops and run fully convolutionally: at a larger size the encoder tiles the
same message map over more periods and the decoder averages more tiles, so accuracy should hold or rise and PSNR
stay put. The alternative policy (``params: {work_size: 128}``: embed at 128², upsample the residual) is measured
too. Built-in eval tiles: 158 at 128², 25 at 256², only 2 at 512² (few photos are that large): pass --folder for
more. Also reports accuracy after real JPEG 50, where resolution matters most.
"""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.table import Table
from wmbench.attacks.compression import Jpeg

from wmbench import metrics as M
from wmbench.api import SkipCell, quantize_8bit
from wmbench.data import load_image_set
from wmbench.registry import methods


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["hidden", "end2"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[128, 256, 512])
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--folder", default=None)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    torch.manual_seed(0)
    table = Table(title="learned methods by image size (clean = 8-bit watermarked image)")
    for c in ("method", "policy", "size", "images", "PSNR dB", "clean acc", "JPEG-50 acc"):
        table.add_column(c, justify="right" if c not in ("method", "policy") else "left")
    for name in a.methods:
        for policy, extra in (("fully conv", {}), ("work_size 128", {"work_size": 128})):
            m = methods().get(name)(**extra)
            try:
                m.setup(torch.device("cpu"))
            except SkipCell as e:
                Console().print(f"[yellow]{name}: {e}")
                break
            for size in a.sizes:
                if a.folder:
                    s = load_image_set("folder", size=size, count=a.count, path=a.folder)
                else:
                    avail = load_image_set("builtin", size=size, split="eval").images.shape[0]
                    s = load_image_set("builtin", size=size, count=min(a.count, avail), split="eval")
                ps, acc, jacc = [], [], []
                gen = torch.Generator().manual_seed(0)
                for i in range(0, s.images.shape[0], a.batch):
                    x = s.images[i : i + a.batch].float() / 255.0
                    msg = torch.randint(0, 2, (x.shape[0], m.nbits), generator=gen).float()
                    y = quantize_8bit(m.embed(x, msg))
                    with torch.no_grad():
                        acc.append(((m.extract(y) > 0).float() == msg).float().mean(1))
                        yj = Jpeg().apply(y, 50, gen=gen)
                        jacc.append(((m.extract(yj) > 0).float() == msg).float().mean(1))
                    ps.append(M.psnr(x, y))
                table.add_row(
                    name,
                    policy,
                    f"{size}²",
                    str(s.images.shape[0]),
                    f"{torch.cat(ps).mean():.2f}",
                    f"{torch.cat(acc).mean():.4f}",
                    f"{torch.cat(jacc).mean():.4f}",
                )
    Console().print(table)


if __name__ == "__main__":
    main()
