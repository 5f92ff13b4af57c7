"""Pixel-level noise: additive Gaussian, salt & pepper, and HiDDeN's cover-mixing dropout / cropout.

All draws come from the passed CPU ``gen`` through ``wmbench.rng`` (one generator per image in a run, then moved to
the input's device), so a seed fixes the output however the images are batched.
The mask-based ones pass gradients to the pixels they keep, hence ``differentiable = True``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from wmbench import rng
from wmbench.api import Attack, Method, WmbenchError
from wmbench.rng import Gen


def _fraction(name: str, p: float, what: str = "fraction") -> float:
    if not 0.0 <= p <= 1.0:
        raise WmbenchError(f"attack {name!r}: {what} {p} is outside [0, 1]")
    return float(p)


def _cover(name: str, x: Tensor, cover: Tensor | None) -> Tensor:
    """The cover batch matching ``x`` (b 3 h w), or a clear error when the runner/caller gave none."""
    if cover is None:
        raise WmbenchError(
            f"attack {name!r} mixes in the cover image: call apply(..., cover=<b 3 h w tensor>)"
        )
    if cover.shape != x.shape:
        raise WmbenchError(
            f"attack {name!r}: cover shape {tuple(cover.shape)} != image shape {tuple(x.shape)}"
        )
    return cover.to(device=x.device, dtype=x.dtype)


def _pixel_mask(x: Tensor, p: float, gen: Gen) -> Tensor:
    """A b 1 h w boolean mask, each pixel True with probability p (shared by the 3 channels)."""
    b, _, h, w = x.shape
    return (rng.rand(gen, b, 1, h, w) < p).to(x.device)


class GaussianNoise(Attack):
    """Adds N(0, σ²) per pixel and channel (σ on the [0,1] scale), then clamps to [0,1]."""

    name = "gaussian_noise"
    description = "additive Gaussian noise, clamped to [0,1]"
    unit = "sigma on [0,1]"
    differentiable = True
    default_strengths = (0.02, 0.05, 0.1)
    strength_range = (0.0, 0.1)  # WAVES: sigma 0 -> 0.1

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
            raise WmbenchError(f"attack 'gaussian_noise': sigma {strength} must be >= 0")
        if strength == 0:
            return x
        noise = rng.randn(gen, *x.shape).to(device=x.device, dtype=x.dtype)
        return noise.mul_(float(strength)).add_(x).clamp_(0, 1)  # = x + σ·noise, in place: b 3 h w


class SaltPepper(Attack):
    """Sets a fraction p of pixels (all channels together) to black or white, half each."""

    name = "salt_pepper"
    description = "salt & pepper: a fraction of pixels set to 0 or 1"
    unit = "pixel fraction"
    differentiable = True
    default_strengths = (0.01, 0.05, 0.1)
    strength_range = (0.0, 0.1)

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        p = _fraction(self.name, strength, "pixel fraction")
        hit = _pixel_mask(x, p, gen)  # b 1 h w
        salt = _pixel_mask(x, 0.5, gen).to(x.dtype)  # b 1 h w: 1 = white, 0 = black
        return torch.where(hit, salt, x)


class Dropout(Attack):
    """HiDDeN dropout: each pixel (all channels) comes from the cover with probability p, else stays
    watermarked.  strength p = expected fraction of pixels replaced by the cover."""

    name = "dropout"
    description = "HiDDeN dropout: a random fraction of pixels replaced by the cover's"
    unit = "cover pixel fraction"
    differentiable = True
    needs_cover = True
    default_strengths = (0.1, 0.3, 0.5, 0.7)
    strength_range = (0.0, 0.7)  # HiDDeN trains with 70% of pixels from the cover (keep 0.3)

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        c = _cover(self.name, x, cover)
        p = _fraction(self.name, strength, "cover pixel fraction")
        return torch.where(_pixel_mask(x, p, gen), c, x)  # b 3 h w


class Cropout(Attack):
    """HiDDeN cropout: keep a random rectangle of the watermarked image, take everything else from the cover.

    strength = kept area ratio of the rectangle (image aspect, side √a·h × √a·w, position from ``gen``);
    1 keeps the whole watermarked image, 0.3 keeps 30% of it.
    """

    name = "cropout"
    description = "HiDDeN cropout: a random rectangle of the watermarked image pasted onto the cover"
    unit = "kept area ratio"
    differentiable = True
    needs_cover = True
    default_strengths = (0.9, 0.7, 0.5, 0.3)
    strength_range = (1.0, 0.3)

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        c = _cover(self.name, x, cover)
        a = _fraction(self.name, strength, "kept area ratio")
        b, _, h, w = x.shape
        ch, cw = round(h * math.sqrt(a)), round(w * math.sqrt(a))
        y0 = rng.randint(gen, 0, h - ch + 1, b, 1, 1).flatten().tolist()
        x0 = rng.randint(gen, 0, w - cw + 1, b, 1, 1).flatten().tolist()
        out = c.clone()  # the cover, with each image's kept rectangle copied in (slices, no mask)
        for i, (t, s) in enumerate(zip(y0, x0, strict=True)):
            out[i, :, t : t + ch, s : s + cw] = x[i, :, t : t + ch, s : s + cw]
        return out  # b 3 h w
