"""Geometric attacks in torch/kornia (differentiable): resize, random/centre crop, rotation, perspective.

Every output is resized or warped back to the input's h w, so a decoder sees the size it expects.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, StrictBool
from torch import Tensor

from wmbench import rng
from wmbench.api import Attack, Method, WmbenchError
from wmbench.params import PluginParams
from wmbench.rng import Gen

from .opencv8 import plain, u8_per_image


def _crop_resize(x: Tensor, a: float, name: str, gen: rng.Gen | None) -> Tensor:
    """Crop a window of area ratio ``a`` (same aspect as the image) and resize it back (bilinear, half-pixel
    centres).  # b 3 h w -> b 3 h w

    The window sits at a random integer position drawn from ``gen``, or in the centre when ``gen`` is None.  Under
    no_grad, a batch on the 8-bit grid (on any device) is resized by OpenCV on 8-bit pixels (2.5× torch's float resize;
    ~11 % of pixels one level away from the rounded float result, never more); otherwise (gradients, off-grid
    values) by torch.
    """
    if not 0.0 < a <= 1.0:
        raise WmbenchError(f"attack {name!r}: kept area ratio {a} is outside (0, 1]")
    b, _, h, w = x.shape
    ch, cw = max(1, round(h * math.sqrt(a))), max(1, round(w * math.sqrt(a)))
    if (ch, cw) == (h, w):
        return x
    if gen is None:
        y0, x0 = [(h - ch) // 2] * b, [(w - cw) // 2] * b
    else:
        y0 = rng.randint(gen, 0, h - ch + 1, b).tolist()
        x0 = rng.randint(gen, 0, w - cw + 1, b).tolist()
    if plain(x):  # 8-bit batches: OpenCV's bilinear resize (11-bit weights: <= 1 level off; tested)
        import cv2

        def crop_resize(i: int, img: np.ndarray) -> np.ndarray:
            window = img[y0[i] : y0[i] + ch, x0[i] : x0[i] + cw]
            return cv2.resize(window, (w, h), interpolation=cv2.INTER_LINEAR)

        y = u8_per_image(x, crop_resize)
        if y is not None:
            return y
    if gen is None:  # one window for the batch: a view, no copy
        crop = x[..., y0[0] : y0[0] + ch, x0[0] : x0[0] + cw]
    else:  # one window per image, copied by slicing (an index gather is several times slower)
        crop = torch.stack(
            [x[i, :, t : t + ch, s : s + cw] for i, (t, s) in enumerate(zip(y0, x0, strict=True))]
        )
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False).clamp_(0, 1)  # b c h w


class Resize(Attack):
    """Downscale by s (bilinear, antialiased) and upscale back to h w (bilinear)."""

    name = "resize"
    description = "downscale by a factor and back (bilinear, antialiased)"
    unit = "scale factor"
    differentiable = True
    default_strengths = (0.75, 0.5, 0.3)
    strength_range = (1.0, 0.25)

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        if strength <= 0:
            raise WmbenchError(f"attack 'resize': scale factor {strength} must be > 0")
        h, w = x.shape[-2:]
        size = (max(1, round(h * strength)), max(1, round(w * strength)))
        if size == (h, w):
            return x
        # float64: torch's antialiased float32 kernel rounds differently with the thread count (1 ulp), which flips
        # a few pixels at the 8-bit rounding; in float64 the result does not depend on how the work is cut
        xd = x.double()
        small = F.interpolate(xd, size=size, mode="bilinear", align_corners=False, antialias=True)
        return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1).to(x.dtype)


class Crop(Attack):
    """Random crop keeping an area ratio (image aspect kept, position from ``gen``), resized back to h w."""

    name = "crop"
    description = "random crop of a kept area ratio, resized back (WAVES resized-crop)"
    unit = "kept area ratio"
    differentiable = True
    default_strengths = (0.9, 0.75, 0.5)
    strength_range = (1.0, 0.5)  # WAVES: resized-crop scale 1 -> 0.5

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        return _crop_resize(x, float(strength), self.name, gen)


class CenterCrop(Crop):
    """Centred crop keeping an area ratio, resized back to h w (deterministic)."""

    name = "center_crop"
    description = "centred crop of a kept area ratio, resized back"

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        return _crop_resize(x, float(strength), self.name, None)


_FILL = {"black": "zeros", "reflect": "reflection", "border": "border"}


def _rotate_folded(x: Tensor, degrees: float, padding: str) -> Tensor:
    """kornia's rotation of every image by one angle, with the batch folded into the channels so one sampling
    grid (and one set of bilinear weights per pixel) serves all of them: the same values as rotating each image.
    # b c h w -> b c h w"""
    from kornia.geometry.transform import rotate  # imported here: kornia costs ~1 s to import

    b, c, h, w = x.shape
    angle = torch.tensor([degrees], device=x.device, dtype=x.dtype)
    y = rotate(x.reshape(1, b * c, h, w), angle, padding_mode=padding)
    return y.reshape(b, c, h, w).clamp_(0, 1)


#: OpenCV's border modes for the same fills (grid_sample's reflection with align_corners is REFLECT_101)
_CV_BORDER = {"black": 0, "reflect": 4, "border": 1}  # BORDER_CONSTANT, BORDER_REFLECT_101, BORDER_REPLICATE


def _warp_cv2(x: Tensor, mats: list[np.ndarray], border: int) -> Tensor | None:
    """Bilinear warps on 8-bit pixels with OpenCV, one matrix per image (2×3: ``warpAffine``, 3×3:
    ``warpPerspective``; pixel coordinates, the forward map as kornia takes it), for batches on the 8-bit grid
    (else None).  OpenCV interpolates at 1/32 px with fixed-point weights: on photographs ~7 % of pixels land one
    level away from the rounded float result (mean 0.08 levels, at most 5 at sharp edges; tested), for 2-3× the
    speed of the float warp.  # b 3 h w -> b 3 h w"""
    import cv2

    h, w = x.shape[-2:]

    def warp(i: int, img: np.ndarray) -> np.ndarray:
        f = cv2.warpAffine if mats[i].shape[0] == 2 else cv2.warpPerspective
        return f(img, mats[i], (w, h), flags=cv2.INTER_LINEAR, borderMode=border)

    return u8_per_image(x, warp)


def _rotate_cv2(x: Tensor, degrees: list[float], fill: str) -> Tensor | None:
    """Rotation about ((w-1)/2, (h-1)/2) by each image's angle through ``_warp_cv2``.  # b 3 h w -> b 3 h w"""
    import cv2

    h, w = x.shape[-2:]
    mats = [cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), deg, 1.0) for deg in degrees]
    return _warp_cv2(x, mats, _CV_BORDER[fill])


class Rotation(Attack):
    """Rotate about the centre (bilinear), counter-clockwise by ``strength`` degrees; uncovered corners are
    ``fill``: black (default, as WAVES), reflect or border.  ``random_sign=True`` draws the direction per image.

    Two kernels, one geometry: under no_grad, a batch on the 8-bit grid (as the runner passes it, on any device) is
    rotated by OpenCV on 8-bit pixels (``_rotate_cv2``: within one level of the float warp on 93 % of pixels);
    otherwise (gradients, off-grid values) by kornia's float warp."""

    name = "rotation"
    description = "rotation about the centre (bilinear, black corners by default)"
    unit = "degrees"
    differentiable = True
    default_strengths = (5.0, 15.0, 30.0, 45.0)
    strength_range = (0.0, 45.0)  # WAVES: 0 -> 45 degrees

    class Params(PluginParams):
        fill: Literal["black", "reflect", "border"] = Field(
            "black", description="what fills the uncovered corners"
        )
        random_sign: StrictBool = Field(False, description="draw the direction per image")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.fill, self.random_sign = self.p.fill, self.p.random_sign
        self.params = {"fill": self.fill, "random_sign": self.random_sign}

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        if strength == 0:
            return x
        b = x.shape[0]
        sign = (rng.randint(gen, 0, 2, b) * 2 - 1).tolist() if self.random_sign else [1] * b
        if plain(x):
            y = _rotate_cv2(x, [sg * float(strength) for sg in sign], self.fill)
            if y is not None:
                return y
        if not self.random_sign:
            return _rotate_folded(x, float(strength), _FILL[self.fill])
        out = torch.empty_like(x)
        for sg in (-1, 1):  # each direction shares one sampling grid
            idx = [i for i in range(b) if sign[i] == sg]
            if idx:
                out[idx] = _rotate_folded(x[idx], sg * float(strength), _FILL[self.fill])
        return out  # b 3 h w


class Perspective(Attack):
    """Random perspective warp (torchvision RandomPerspective semantics): each corner moves inward by up to
    ``strength`` × half the width/height, uniformly at random from ``gen``; outside is black.  Like ``rotation``:
    OpenCV on 8-bit batches under no_grad (any device), kornia's float warp otherwise (the same matrices)."""

    name = "perspective"
    description = "random perspective warp of the corners (black outside)"
    unit = "distortion scale"
    differentiable = True
    default_strengths = (0.1, 0.2, 0.3, 0.5)
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
        d = float(strength)
        if not 0.0 <= d < 1.0:
            raise WmbenchError(f"attack 'perspective': distortion scale {d} is outside [0, 1)")
        if d == 0:
            return x
        from kornia.geometry.transform import get_perspective_transform, warp_perspective

        b, _, h, w = x.shape
        src = torch.tensor([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=torch.float32)
        inward = torch.tensor([[1, 1], [-1, 1], [-1, -1], [1, -1]], dtype=torch.float32)
        half = torch.tensor([(w - 1) / 2, (h - 1) / 2])
        shift = rng.rand(gen, b, 4, 2) * d * half  # b 4 2 (x, y), in px
        dst = src + inward * shift
        m = get_perspective_transform(src.expand(b, 4, 2), dst)  # b 3 3
        if plain(x):
            y = _warp_cv2(x, list(m.double().numpy()), _CV_BORDER["black"])
            if y is not None:
                return y
        m = m.to(device=x.device, dtype=x.dtype)
        return warp_perspective(x, m, (h, w), align_corners=True).clamp(0, 1)
