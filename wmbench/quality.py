"""Per-image PSNR and residual scaling onto a PSNR on the 8-bit grid.

Why: robustness is only comparable at equal image quality, and a fixed residual scale does not give equal quality
on images nobody has seen (END²'s PSNR is 0.5 dB above hidden's on the train split and 0.4 dB below on the eval
split at the same scale). Scaling each image's own residual onto a PSNR target does, on any photographs; AdvMark's
quality-aware floor is the one-sided case of the same search.
"""

from __future__ import annotations

import torch
from torch import Tensor

from wmbench.api import quantize_8bit


def psnr_per_image(a: Tensor, b: Tensor) -> Tensor:
    """PSNR in dB per image (peak 1).  b 3 h w, b 3 h w -> b"""
    mse = (a - b).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return -10 * torch.log10(mse)


def scale_to_psnr(
    cover: Tensor, img: Tensor, target: float, *, max_scale: float = 1.0, iters: int = 24
) -> Tensor:
    """8-bit image ``cover + s·(img − cover)`` with, per image, the largest s ∈ [0, max_scale] whose PSNR ≥ target.

    ``max_scale`` 1 only ever weakens a residual (a floor); above 1 a too-faint residual is also strengthened up
    to the target (a match). Bisection on s; s = 0 (the 8-bit cover) meets any target, so the result is never
    below it.  b 3 h w, b 3 h w -> b 3 h w
    """
    out = quantize_8bit(cover + max_scale * (img - cover))
    bad = psnr_per_image(cover, out) < target
    if not bool(bad.any()):  # the common case for a floor: nothing to search
        return out
    c, r = cover[bad], img[bad] - cover[bad]  # bisect only the images under the target
    lo = torch.zeros(c.shape[0], device=c.device)
    hi = torch.full_like(lo, float(max_scale))
    for _ in range(iters):
        mid = (lo + hi) / 2
        ok = psnr_per_image(c, quantize_8bit(c + mid.view(-1, 1, 1, 1) * r)) >= target
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    out[bad] = quantize_8bit(c + lo.view(-1, 1, 1, 1) * r)
    return out
