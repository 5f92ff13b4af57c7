"""The faster distortions give the values the earlier implementations gave (issue 15).

Each ``_old_*`` function below is the implementation an attack had before it was made faster (this repository's
own earlier code, kept here as the reference).  Bit-exact where the arithmetic is the same; where the new path
sums in another order (OpenCV's separable blur vs two matmuls) the tolerance is stated next to the check.
No timings here: ``benchmarks/distortions.py`` measures speed.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
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
