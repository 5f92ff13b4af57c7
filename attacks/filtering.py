"""Spatial filters in torch/kornia: Gaussian blur, median blur, sharpening (PIL ImageEnhance semantics)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wmbench.api import Attack, Method, WmbenchError
from wmbench.rng import Gen

from .opencv8 import plain_cpu, u8_per_image


def _blur_matrix(n: int, sigma: float, half: int, like: Tensor) -> Tensor:
    """The n×n matrix of a 1-D Gaussian blur (taps ±half, reflected borders): a dense matmul is far faster
    than kornia's depthwise convolution for wide kernels, and gives the same values.  # n n"""
    t = torch.arange(-half, half + 1)
    g = torch.exp(-(t.double() ** 2) / (2 * sigma**2))
    g = (g / g.sum()).expand(n, -1).contiguous()  # n k
    j = torch.arange(n)[:, None] + t[None]  # n k: source index of each tap
    j = torch.where(j < 0, -j, j)
    j = torch.where(j > n - 1, 2 * (n - 1) - j, j)
    m = torch.zeros(n, n, dtype=torch.float64).scatter_add_(1, j, g)
    return m.to(device=like.device, dtype=like.dtype)


def _planes(x: Tensor) -> np.ndarray:
    """The batch as (b·3) contiguous planes, sharing memory with ``x`` when it is contiguous.  -> n h w"""
    return x.contiguous().numpy().reshape(-1, *x.shape[-2:])


def _blur_cv2(x: Tensor, sigma: float, half: int) -> Tensor:
    """The same blur with OpenCV's separable filter, one plane at a time (no layout conversion): the 1-D taps of
    ``_blur_matrix`` and its reflected border (BORDER_REFLECT_101), float32 sums in another order (within
    ~1e-6 of the matmul form).  # b 3 h w -> b 3 h w"""
    import cv2

    t = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(t**2) / (2 * sigma**2))
    g /= g.sum()
    out = torch.empty(x.shape, dtype=x.dtype)
    src, dst = _planes(x), out.numpy().reshape(-1, *x.shape[-2:])
    for i in range(src.shape[0]):
        cv2.sepFilter2D(src[i], cv2.CV_32F, g, g, dst=dst[i], borderType=cv2.BORDER_REFLECT_101)
    return out.clamp_(0, 1)


class GaussianBlur(Attack):
    """Gaussian blur with σ in pixels (PIL's GaussianBlur radius is this σ), kernel 2·ceil(3σ)+1, reflected
    borders (kornia.filters.gaussian_blur2d semantics); the kernel is capped at 2·min(h, w)−1 so reflection
    stays valid on small images.  On a CPU without autograd it runs through OpenCV's separable filter; else up to
    512 px (or for kernels wider than size/16) as two matmuls, and through kornia above that."""

    name = "gaussian_blur"
    description = "Gaussian blur (sigma in px, reflect border)"
    unit = "sigma (px)"
    differentiable = True
    default_strengths = (0.5, 1.0, 2.0, 4.0)
    strength_range = (0.0, 20.0)  # WAVES: PIL blur radius 0 -> 20

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        s = float(strength)
        if s < 0:
            raise WmbenchError(f"attack 'gaussian_blur': sigma {s} must be >= 0")
        h, w = x.shape[-2:]
        half = min(math.ceil(3 * s), min(h, w) - 1)
        if s == 0 or half < 1:
            return x
        k = 2 * half + 1
        if plain_cpu(x):
            return _blur_cv2(x, s, half)
        if max(h, w) > max(512, 16 * k):
            from kornia.filters import gaussian_blur2d  # imported here: kornia costs ~1 s to import

            return gaussian_blur2d(x, (k, k), (s, s), border_type="reflect").clamp(0, 1)
        mh, mw = _blur_matrix(h, s, half, x), _blur_matrix(w, s, half, x)
        return (mh @ x @ mw.T).clamp(0, 1)  # b 3 h w


def _odd(k: float) -> int:
    """Round to the nearest integer, then up to the next odd one (a median window needs a centre)."""
    n = max(1, int(round(k)))
    return n if n % 2 else n + 1


def _median_torch(x: Tensor, k: int) -> Tensor:
    """Exact k×k median with replicated borders, differentiable (the gradient goes to each window's median
    pixel); chunked so the unfolded windows stay near 64 M elements.  # b 3 h w -> b 3 h w"""
    p = k // 2
    per_image = x[0].numel() * k * k
    out = []
    for c in x.split(max(1, 64_000_000 // per_image)):
        win = F.pad(c, (p, p, p, p), mode="replicate").unfold(2, k, 1).unfold(3, k, 1)  # b 3 h w k k
        out.append(win.reshape(*c.shape, k * k).median(-1).values)
    return torch.cat(out)


def _median_cv2(x: Tensor, k: int) -> Tensor | None:
    """The same median via OpenCV (O(1) per pixel) when every value is on the 8-bit grid (``quantize_8bit(x) ==
    x``; else None): identical values, much faster than sorting k² windows on a CPU, but outside autograd.
    OpenCV filters interleaved h w 3 images (its per-channel SIMD).  # b 3 h w -> b 3 h w"""
    import cv2  # imported here: only this path needs OpenCV

    return u8_per_image(x, lambda _i, img: cv2.medianBlur(img, k))


class MedianBlur(Attack):
    """Median filter over a k×k window (replicated borders, as OpenCV); an even k is rounded up to the next
    odd one.  Gradients reach the input through each window's median pixel.  Under no_grad on a CPU, inputs
    on the 8-bit grid (as the runner passes) go through OpenCV, which gives the same values."""

    name = "median_blur"
    description = "median filter (odd kernel size in px, replicate border)"
    unit = "kernel size (px)"
    differentiable = True
    integer_strength = True
    default_strengths = (3.0, 5.0, 7.0)
    strength_range = (1.0, 7.0)

    @classmethod
    def from_relative(cls, r: float) -> float:
        return float(_odd(super().from_relative(r)))

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        if strength < 0:
            raise WmbenchError(f"attack 'median_blur': kernel size {strength} must be >= 0")
        k = _odd(strength)
        if k == 1:
            return x
        y = _median_cv2(x, k) if plain_cpu(x) else None
        return _median_torch(x, k) if y is None else y  # b 3 h w


class Sharpness(Attack):
    """PIL ImageEnhance.Sharpness via kornia: blend with a 3×3 smoothed copy; 1 = identity, > 1 sharpens,
    < 1 softens.  The 1-pixel border is left as is (as PIL does)."""

    name = "sharpness"
    description = "sharpening, PIL ImageEnhance.Sharpness semantics (factor; 1 = identity)"
    unit = "factor"
    differentiable = True
    default_strengths = (1.5, 2.0, 3.0, 4.0)
    strength_range = (1.0, 4.0)

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        if strength < 0:
            raise WmbenchError(f"attack 'sharpness': factor {strength} must be >= 0")
        from kornia.enhance import sharpness  # imported here: kornia costs ~1 s to import

        return sharpness(x, float(strength)).clamp(0, 1)  # b 3 h w
