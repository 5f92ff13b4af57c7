"""Differentiable stand-ins for JPEG, used as training noise layers (and runnable as attacks in a suite).

* ``jpeg_mask``: HiDDeN's JPEG-Mask (Zhu et al. 2018): YUV, 8×8 block DCT, keep only the low-frequency corner
  (5×5 luma, 3×3 chroma coefficients), zero the rest, invert. It ignores quantisation, so it is a crude
  approximation; the shipped ``hidden`` baseline trains with it because that is what the seed papers compare
  against.
* ``jpeg_diff``: kornia's ``jpeg_codec_differentiable`` (real JPEG quantisation tables, rounding replaced by a
  differentiable cubic approximation): within ~0.006 MAE of libjpeg at quality 50 (REFERENCE §1).
* ``jpeg_st``: real libjpeg values (exactly the ``jpeg`` attack's) with ``jpeg_diff``'s gradient: an optimiser
  is judged on what JPEG really does to the image, and steered by the approximation's gradient rather than the
  identity a plain straight-through estimator would give.

Both map b 3 h w in [0,1] to the same shape; sides that are not multiples of the block (8 / 16) are padded by
edge replication and cropped back.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from wmbench.api import Attack, Method, WmbenchError
from wmbench.params import Int, PluginParams
from wmbench.rng import Gen

# ITU-R BT.601 full-range RGB <-> YCbCr (the JPEG/JFIF convention), offsets dropped: the DCT masks are linear
_RGB2YUV = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=torch.float64
)


def _dct_matrix(n: int = 8) -> Tensor:
    """Orthonormal DCT-II matrix D (n n): coefficients = D @ block @ D.T."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def _pad_to(x: Tensor, m: int) -> tuple[Tensor, int, int]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, h, w


def block_dct_lowpass(x: Tensor, keep: tuple[int, int, int]) -> Tensor:
    """YUV 8×8 block DCT, keep the top-left ``keep[c]``² coefficients of channel c, invert.  b 3 h w -> b 3 h w"""
    xp, h, w = _pad_to(x, 8)
    b, _, hp, wp = xp.shape
    m = _RGB2YUV.to(x)
    yuv = torch.einsum("oc,bchw->bohw", m, xp)
    d = _dct_matrix().to(x)
    blocks = yuv.reshape(b, 3, hp // 8, 8, wp // 8, 8)  # b c hb 8 wb 8
    coef = torch.einsum("ui,bchiwj,vj->bchuwv", d, blocks, d)
    mask = torch.zeros(3, 8, 8, dtype=x.dtype, device=x.device)
    for c, k in enumerate(keep):
        mask[c, :k, :k] = 1.0
    coef = coef * mask[None, :, None, :, None, :]
    back = torch.einsum("ui,bchuwv,vj->bchiwj", d, coef, d).reshape(b, 3, hp, wp)
    rgb = torch.einsum("oc,bchw->bohw", torch.linalg.inv(_RGB2YUV).to(x), back)
    return rgb[..., :h, :w].clamp(0, 1)


class JpegMask(Attack):
    """HiDDeN's JPEG-Mask: strength = luma coefficients kept per side of each 8×8 block (default 5, HiDDeN's);
    chroma keeps ``min(strength, chroma_keep)`` (default 3), so even strength 8 low-passes the chroma."""

    name = "jpeg_mask"
    description = "HiDDeN's differentiable JPEG-Mask (8×8 YUV DCT, high frequencies zeroed)"
    unit = "kept luma DCT coefficients per block side"
    differentiable = True
    integer_strength = True
    default_strengths = (5.0,)
    strength_range = (8.0, 1.0)

    class Params(PluginParams):
        chroma_keep: int = Int(3, ge=1, le=8, description="kept chroma DCT coefficients per block side")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.chroma_keep = self.p.chroma_keep
        self.params = {"chroma_keep": self.chroma_keep} if self.chroma_keep != 3 else {}

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        k = int(round(strength))
        if not 1 <= k <= 8:
            raise WmbenchError(f"attack 'jpeg_mask': strength {strength} is outside 1..8 kept coefficients")
        return block_dct_lowpass(x, (k, min(k, self.chroma_keep), min(k, self.chroma_keep)))


class JpegDiff(Attack):
    """kornia's differentiable JPEG, quality = strength (a training noise layer; real JPEG is ``jpeg``)."""

    name = "jpeg_diff"
    description = "differentiable JPEG approximation (kornia.enhance.jpeg_codec_differentiable)"
    unit = "jpeg quality"
    differentiable = True
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
        from kornia.enhance import jpeg_codec_differentiable

        q = self._quality(strength)
        xp, h, w = _pad_to(x, 16)
        quality = torch.full((x.shape[0],), q, dtype=x.dtype, device=x.device)
        return jpeg_codec_differentiable(xp, quality)[..., :h, :w].clamp(0, 1)  # b 3 h w

    def _quality(self, strength: float) -> float:
        """The integer quality in [1, 100] the strength names, or an error naming this attack."""
        q = float(round(strength))
        if not 1 <= q <= 100:
            raise WmbenchError(f"attack {self.name!r}: quality {strength} is outside [1, 100]")
        return q


class JpegST(JpegDiff):
    """Real JPEG forward, differentiable-JPEG backward: the values of ``jpeg`` (libjpeg through PIL, 4:2:0), the
    gradient of ``jpeg_diff`` (kornia) at the same quality (its unit and strengths too).  A per-image optimiser
    (ISMark) that stops pulling once the decoder reads the bits cannot then settle on a perturbation that only the
    approximation lets through."""

    name = "jpeg_st"
    description = "real JPEG values (libjpeg) with kornia's differentiable-JPEG gradient"

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        from .compression import Jpeg

        self._quality(strength)  # jpeg_diff's range, checked before either codec runs
        real = Jpeg().apply(x.detach(), strength, gen=gen)  # b 3 h w, on the 8-bit grid
        if not (torch.is_grad_enabled() and x.requires_grad):
            return real
        approx = super().apply(x, strength, gen=gen)
        return real + (approx - approx.detach())  # the value: real, exactly; the gradient: approx's
