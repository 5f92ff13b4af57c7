"""Photometric attacks with torchvision / PIL ImageEnhance semantics, in torch (differentiable).

brightness: x·f; contrast: blend with the image's mean grey level; saturation: blend with the pixel's grey
(ITU-R 601 luma); hue: rotation of the HSV hue.  Outputs are clamped to [0,1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from wmbench.api import Attack, Method, WmbenchError
from wmbench.rng import Gen

_LUMA = (0.299, 0.587, 0.114)


def _luma_weights(x: Tensor) -> Tensor:
    """ITU-R 601 luma weights on x's device and dtype.  -> 1 3 1 1"""
    return torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)


def _gray(x: Tensor) -> Tensor:
    """ITU-R 601 luma.  # b 3 h w -> b 1 h w"""
    return (x * _luma_weights(x)).sum(1, keepdim=True)


def _factor(name: str, f: float) -> float:
    if f < 0:
        raise WmbenchError(f"attack {name!r}: factor {f} must be >= 0")
    return float(f)


class Brightness(Attack):
    """Multiplies every pixel by f (torchvision/PIL brightness: blend with black); 1 = identity."""

    name = "brightness"
    description = "brightness: x * factor (torchvision/PIL semantics), clamped"
    unit = "factor"
    differentiable = True
    default_strengths = (1.2, 1.5, 2.0)
    strength_range = (1.0, 2.0)  # WAVES: 1 -> 2

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        return x.mul(_factor(self.name, strength)).clamp_(0, 1)  # b 3 h w


class Contrast(Attack):
    """Blends with the per-image mean grey level, m + f·(x − m) (torchvision/PIL contrast); 1 = identity."""

    name = "contrast"
    description = "contrast: blend with the image's mean grey (torchvision/PIL semantics), clamped"
    unit = "factor"
    differentiable = True
    default_strengths = (1.2, 1.5, 2.0)
    strength_range = (1.0, 2.0)  # WAVES: 1 -> 2

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        f = _factor(self.name, strength)
        # the mean grey is linear in the channel means: one reduction, no b 1 h w grey image (1.5x)
        m = (x.mean(dim=(2, 3), keepdim=True) * _luma_weights(x)).sum(1, keepdim=True)  # b 1 1 1
        return torch.mul(x, f).add_(m * (1 - f)).clamp_(0, 1)  # = m + f·(x − m), one pass (within 1e-6 of it)


class Saturation(Attack):
    """Blends each pixel with its grey, g + f·(x − g) (torchvision/PIL Color); 1 = identity, 0 = greyscale.

    The sweep goes 1 -> 0 (desaturation, which removes any chroma-borne watermark); f > 1 is accepted too.
    """

    name = "saturation"
    description = "saturation: blend with the pixel's grey (torchvision/PIL semantics); 0 = greyscale"
    unit = "factor"
    differentiable = True
    default_strengths = (0.75, 0.5, 0.25, 0.0)
    strength_range = (1.0, 0.0)

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        f = _factor(self.name, strength)
        g = _gray(x)  # b 1 h w
        return (x - g).mul_(f).add_(g).clamp_(0, 1)  # = g + f·(x − g), fewer temporaries


class Hue(Attack):
    """Rotates the HSV hue by ``strength`` turns (0.5 = complementary colours; torchvision's hue_factor unit),
    via kornia (which takes radians); negative shifts are allowed, values wrap to [-0.5, 0.5]."""

    name = "hue"
    description = "hue rotation in HSV (turns; 0.5 = complementary colours)"
    unit = "hue shift (turns)"
    differentiable = True
    default_strengths = (0.05, 0.1, 0.25, 0.5)
    strength_range = (0.0, 0.5)

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        t = float(strength)
        t = t - math.floor(t + 0.5) if abs(t) > 0.5 else t  # wrap into [-0.5, 0.5]
        if t == 0:
            return x
        from kornia.enhance import adjust_hue  # imported here: kornia costs ~1 s to import

        return adjust_hue(x, 2 * math.pi * t).clamp(0, 1)  # b 3 h w
