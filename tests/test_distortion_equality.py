"""The faster distortions give the values the earlier implementations gave (issue 15).

Each ``_old_*`` function below is the implementation an attack had before it was made faster (this repository's
own earlier code, kept here as the reference).  Bit-exact where the arithmetic is the same; where the new path
sums in another order (OpenCV's separable blur vs two matmuls) the tolerance is stated next to the check.
No timings here: ``benchmarks/distortions.py`` measures speed.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from wmbench import rng
from wmbench.api import quantize_8bit
from wmbench.registry import attacks

pytestmark = pytest.mark.usefixtures("one_thread")


def _photos(b: int = 5, h: int = 72, w: int = 96) -> Tensor:
    """8-bit crops of a real photo (textured, with flat areas and edges).  # b 3 h w"""
    from skimage import data as skdata

    a = skdata.astronaut()
    crops = [a[40 * i : 40 * i + h, 50 * i : 50 * i + w] for i in range(b)]
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0


def _off_grid(b: int = 3, h: int = 40, w: int = 56) -> Tensor:
    """Values off the 8-bit grid and outside [0, 1], including exact .5/255 ties.  # b 3 h w"""
    x = torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(3)) * 1.2 - 0.1
    x[0, 0, 0, :4] = torch.tensor([0.5, 127.5, 254.5, 1.5]) / 255.0
    return x


def _gens(x: Tensor, seed: int = 0) -> rng.ImageGens:
    return rng.ImageGens.for_cell(seed, "m", "a", 1.0, image_ids=[str(i) for i in range(x.shape[0])])


def _apply(name: str, x: Tensor, s: float, gen: rng.Gen | None = None, **params: object) -> Tensor:
    atk = attacks().get(name)(**params)
    with torch.no_grad():
        return atk.apply(x, s, gen=gen if gen is not None else _gens(x), cover=x.flip(-1))


# ---------------------------------------------------------------------------------------------- codecs


def _old_codec(x: Tensor, fmt: str, **save: object) -> Tensor:
    a = (x.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for img in a:
        buf = io.BytesIO()
        Image.fromarray(img, "RGB").save(buf, format=fmt, **save)
        buf.seek(0)
        with Image.open(buf) as im:
            out.append(np.asarray(im.convert("RGB")))
    t = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)
    return t.to(device=x.device, dtype=x.dtype) / 255.0


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("make_x", [_photos, _off_grid])
def test_codecs_equal_the_per_image_pil_roundtrip(threads: int, make_x, monkeypatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # the pool's width follows torch's
    x = make_x()
    for q in (90, 50, 10):
        assert torch.equal(_apply("jpeg", x, q), _old_codec(x, "JPEG", quality=q, subsampling=2))
        assert torch.equal(
            _apply("jpeg", x, q, subsampling="4:4:4"), _old_codec(x, "JPEG", quality=q, subsampling=0)
        )
    assert torch.equal(_apply("webp", x, 50), _old_codec(x, "WEBP", quality=50))


def test_codec_keeps_dtype_and_layout() -> None:
    x = _photos(2).double()
    y = _apply("jpeg", x, 50)
    assert y.dtype == torch.float64 and y.is_contiguous()
    assert torch.equal(y, _old_codec(x, "JPEG", quality=50, subsampling=2))
    assert torch.equal(quantize_8bit(y), y)


# --------------------------------------------------------------------------------------------- filters


def _old_blur(x: Tensor, s: float) -> Tensor:
    from wmbench.attacks.filtering import _blur_matrix

    h, w = x.shape[-2:]
    half = min(math.ceil(3 * s), min(h, w) - 1)
    mh, mw = _blur_matrix(h, s, half, x), _blur_matrix(w, s, half, x)
    return (mh @ x @ mw.T).clamp(0, 1)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.0, 4.0, 30.0])
def test_gaussian_blur_matches_the_matmul_form(sigma: float) -> None:
    """OpenCV sums in another order: within 2e-6 before rounding, and after 8-bit rounding at most 1/255 on at
    most 0.1% of the values (ties that land either side)."""
    x = _photos()
    new, old = _apply("gaussian_blur", x, sigma), _old_blur(x, sigma)
    assert (new - old).abs().max() < 2e-6
    d = (quantize_8bit(new) - quantize_8bit(old)).abs()
    assert d.max() <= 1 / 255 + 1e-7 and (d > 0).float().mean() <= 1e-3
    xg = x.clone().requires_grad_()  # the autograd path is still the matmul one
    g = attacks().get("gaussian_blur")().apply(xg, sigma, gen=_gens(x))
    assert g.requires_grad and torch.equal(g.detach(), old)


def _old_median(x: Tensor, k: int) -> Tensor:
    import cv2

    a = (x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = np.stack([cv2.medianBlur(np.ascontiguousarray(img), k) for img in a])
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.dtype) / 255.0


@pytest.mark.parametrize("k", [3, 5, 7])
def test_median_blur_equals_the_old_opencv_path(k: int) -> None:
    x = _photos()
    assert torch.equal(_apply("median_blur", x, k), _old_median(x, k))
    off = _off_grid().clamp(0, 1)  # off the grid: the exact torch path, as before
    from wmbench.attacks.filtering import _median_torch

    assert torch.equal(_apply("median_blur", off, k), _median_torch(off, k))


# -------------------------------------------------------------------------------------------- geometry


def _old_crop(x: Tensor, a: float, gen: rng.Gen | None) -> Tensor:
    b, c, h, w = x.shape
    ch, cw = max(1, round(h * math.sqrt(a))), max(1, round(w * math.sqrt(a)))
    if gen is None:
        y0, x0 = torch.full((b,), (h - ch) // 2), torch.full((b,), (w - cw) // 2)
    else:
        y0, x0 = rng.randint(gen, 0, h - ch + 1, b), rng.randint(gen, 0, w - cw + 1, b)
    rows, cols = y0[:, None] + torch.arange(ch), x0[:, None] + torch.arange(cw)
    bi, ci = torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None]
    crop = x[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]
    return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 1)


@pytest.mark.parametrize("a", [0.9, 0.5, 0.3])
def test_crops_float_path_equals_the_index_gather(a: float) -> None:
    """Off the 8-bit grid (and with gradients) crops are torch's float resize of the same windows, bit for bit."""
    x = _off_grid().clamp(0, 1) * 0.999 + 1e-4
    assert torch.equal(_apply("crop", x, a), _old_crop(x, a, _gens(x)))
    assert torch.equal(_apply("center_crop", x, a), _old_crop(x, a, None))
    g = torch.Generator().manual_seed(4)  # a plain generator (training) draws the same way too
    assert torch.equal(_apply("crop", x, a, gen=g), _old_crop(x, a, torch.Generator().manual_seed(4)))
    p = _photos().requires_grad_(True)
    y = attacks().get("crop")().apply(p, a, gen=_gens(p))
    assert y.requires_grad and torch.equal(y.detach(), _old_crop(p.detach(), a, _gens(p)))


@pytest.mark.parametrize("a", [0.9, 0.5, 0.3])
def test_crops_8bit_path_within_one_level_of_the_float_resize(a: float) -> None:
    """On the 8-bit grid (the runner's case) the same windows are resized by OpenCV on 8-bit pixels: never more
    than one level from the rounded float result."""
    x = _photos()
    for name, old in (("crop", _old_crop(x, a, _gens(x))), ("center_crop", _old_crop(x, a, None))):
        new = _apply(name, x, a)
        assert torch.equal(new, quantize_8bit(new))  # the OpenCV path ran
        d = (new - quantize_8bit(old)).abs() * 255
        assert d.max() <= 1.0 + 1e-3 and d.mean() < 0.2, (name, d.max(), d.mean())


def _old_rotation(x: Tensor, deg: float, fill: str, gen: rng.Gen | None) -> Tensor:
    from kornia.geometry.transform import rotate

    b = x.shape[0]
    angle = torch.full((b,), deg)
    if gen is not None:
        angle = angle * (rng.randint(gen, 0, 2, b) * 2 - 1).to(angle)
    return rotate(x, angle, padding_mode={"black": "zeros", "reflect": "reflection"}[fill]).clamp(0, 1)


@pytest.mark.parametrize("deg", [5.0, 15.0, 45.0])
def test_rotation_float_path_equals_per_image_kornia(deg: float) -> None:
    """Off the 8-bit grid (and with gradients) rotation is kornia's float warp, bit for bit."""
    x = _off_grid().clamp(0, 1) * 0.999 + 1e-4  # in range, off the grid
    assert torch.equal(_apply("rotation", x, deg), _old_rotation(x, deg, "black", None))
    assert torch.equal(_apply("rotation", x, deg, fill="reflect"), _old_rotation(x, deg, "reflect", None))
    new = _apply("rotation", x, deg, random_sign=True)
    assert torch.equal(new, _old_rotation(x, deg, "black", _gens(x)))
    g = _photos().requires_grad_(True)
    y = attacks().get("rotation")().apply(g, deg, gen=_gens(g))
    assert y.requires_grad and torch.equal(y.detach(), _old_rotation(g.detach(), deg, "black", None))


@pytest.mark.parametrize("fill", ["black", "reflect", "border"])
@pytest.mark.parametrize("deg", [5.0, 15.0, 45.0])
def test_rotation_8bit_path_within_opencv_precision_of_kornia(deg: float, fill: str) -> None:
    """On the 8-bit grid (the runner's case) OpenCV rotates 8-bit pixels: the same geometry and fill as the float
    warp, one level away on a few % of pixels (1/32-px fixed-point interpolation), never far."""
    x = _photos()
    for random_sign in (False, True):
        new = _apply("rotation", x, deg, fill=fill, random_sign=random_sign)
        assert torch.equal(new, quantize_8bit(new))  # 8-bit output
        if fill == "border":
            pad = "border"
            b = x.shape[0]
            angle = torch.full((b,), deg)
            if random_sign:
                angle = angle * (rng.randint(_gens(x), 0, 2, b) * 2 - 1).to(angle)
            from kornia.geometry.transform import rotate

            old = rotate(x, angle, padding_mode=pad).clamp(0, 1)
        else:
            old = _old_rotation(x, deg, fill, _gens(x) if random_sign else None)
        d = (new - quantize_8bit(old)).abs() * 255
        assert d.mean() < 0.15, d.mean()
        assert (d > 1.5).float().mean() < 0.01
        assert d.max() <= 8.5


@pytest.mark.parametrize("d", [0.1, 0.3, 0.5])
def test_perspective_8bit_path_within_opencv_precision_of_kornia(d: float) -> None:
    """perspective on an 8-bit batch: OpenCV's warpPerspective with the same per-image matrices as kornia's float
    warp (which gradients and off-grid values still take), within its fixed-point precision."""
    x = _photos()
    new = _apply("perspective", x, d)
    assert torch.equal(new, quantize_8bit(new))  # the OpenCV path ran
    g = x.clone().requires_grad_(True)
    old = attacks().get("perspective")().apply(g, d, gen=_gens(x))
    assert old.requires_grad and not torch.equal(old.detach(), quantize_8bit(old.detach()))  # the float path
    diff = (new - quantize_8bit(old.detach())).abs() * 255
    assert diff.mean() < 0.15
    # away from the black fill (whose edge OpenCV blends at its own precision) few pixels move more than a level
    black = (old.detach().sum(1, keepdim=True) == 0).float()
    inner = (F.max_pool2d(black, 5, 1, 2) == 0).expand_as(diff)
    assert (diff[inner] > 1.5).float().mean() < 0.01 and diff[inner].max() <= 8.5


# ------------------------------------------------------------------------------------ colour and noise


def _gray(x: Tensor) -> Tensor:
    return (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)


@pytest.mark.parametrize("make_x", [_photos, _off_grid])
def test_colour_and_noise_equal_the_old_expressions(make_x) -> None:
    x = make_x()
    assert torch.equal(_apply("brightness", x, 1.5), (x * 1.5).clamp(0, 1))
    m = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    old = (m + 1.7 * (x - m)).clamp(0, 1)
    new = _apply("contrast", x, 1.7)  # the same algebra summed in another order: a few float ulps apart
    assert torch.allclose(new, old, rtol=0, atol=1e-6)
    if make_x is _photos:  # on the 8-bit images a run passes, the saved (rounded) pixels are the same
        assert torch.equal(quantize_8bit(new), quantize_8bit(old))
    g = _gray(x)
    assert torch.equal(_apply("saturation", x, 0.4), (g + 0.4 * (x - g)).clamp(0, 1))
    noise = rng.randn(_gens(x), *x.shape)
    assert torch.equal(_apply("gaussian_noise", x, 0.05), (x + 0.05 * noise).clamp(0, 1))


def _old_cropout(x: Tensor, cover: Tensor, a: float, gen: rng.Gen) -> Tensor:
    b, _, h, w = x.shape
    ch, cw = round(h * math.sqrt(a)), round(w * math.sqrt(a))
    y0, x0 = rng.randint(gen, 0, h - ch + 1, b, 1, 1), rng.randint(gen, 0, w - cw + 1, b, 1, 1)
    ys, xs = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    keep = (ys >= y0) & (ys < y0 + ch) & (xs >= x0) & (xs < x0 + cw)
    return torch.where(keep[:, None], x, cover)


@pytest.mark.parametrize("a", [1.0, 0.7, 0.3, 0.0])
def test_cropout_equals_the_mask_form(a: float) -> None:
    x = _photos()
    assert torch.equal(_apply("cropout", x, a), _old_cropout(x, x.flip(-1), a, _gens(x)))
