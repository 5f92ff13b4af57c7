"""Lossy codecs run through the real libraries (libjpeg / libwebp via PIL), in memory, one image at a time.

They are not differentiable: training uses the base class's straight-through ``forward_st``.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from wmbench.api import Attack, Method, WmbenchError
from wmbench.rng import Gen

_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2, 0: 0, 1: 1, 2: 2}


def _to_uint8(x: Tensor) -> np.ndarray:
    """b 3 h w in [0,1] -> b h w 3 uint8 (rounded, as saving a PNG would)."""
    return (x.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _from_uint8(a: list[np.ndarray], like: Tensor) -> Tensor:
    """list of h w 3 uint8 -> b 3 h w in [0,1] on ``like``'s device/dtype."""
    t = torch.from_numpy(np.stack(a)).permute(0, 3, 1, 2)
    return t.to(device=like.device, dtype=like.dtype) / 255.0


def _quality(name: str, strength: float) -> int:
    q = int(round(strength))
    if not 0 <= q <= 100:
        raise WmbenchError(f"attack {name!r}: quality {strength} is outside [0, 100]")
    return q


def _codec(x: Tensor, fmt: str, **save: Any) -> Tensor:
    out = []
    for img in _to_uint8(x):  # h w 3
        buf = io.BytesIO()
        Image.fromarray(img, "RGB").save(buf, format=fmt, **save)
        buf.seek(0)
        with Image.open(buf) as im:
            out.append(np.asarray(im.convert("RGB")))
    return _from_uint8(out, x)


class Jpeg(Attack):
    """JPEG with libjpeg (PIL), quality = strength; chroma subsampling 4:2:0 unless ``subsampling`` says otherwise."""

    name = "jpeg"
    description = "JPEG compression (PIL/libjpeg, in memory)"
    unit = "jpeg quality"
    integer_strength = True
    default_strengths = (90.0, 70.0, 50.0, 30.0, 10.0)
    strength_range = (90.0, 10.0)  # WAVES: quality 90 -> 10

    def __init__(self, subsampling: str | int = "4:2:0", **params: Any) -> None:
        super().__init__(**params)
        if subsampling not in _SUBSAMPLING:
            raise WmbenchError(
                f"attack 'jpeg': subsampling {subsampling!r} is not one of '4:4:4', '4:2:2', '4:2:0' (or 0, 1, 2)"
            )
        self.subsampling = _SUBSAMPLING[subsampling]
        self.params = {"subsampling": subsampling}

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        q = _quality(self.name, strength)
        return _codec(x, "JPEG", quality=q, subsampling=self.subsampling)  # b 3 h w


class WebP(Attack):
    """Lossy WebP with libwebp (PIL defaults: method 4), quality = strength."""

    name = "webp"
    description = "WebP compression (PIL/libwebp, lossy, in memory)"
    unit = "webp quality"
    integer_strength = True
    default_strengths = (90.0, 70.0, 50.0, 30.0, 10.0)
    strength_range = (90.0, 10.0)

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        q = _quality(self.name, strength)
        return _codec(x, "WEBP", quality=q)  # b 3 h w
