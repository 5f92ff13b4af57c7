"""Lossy codecs run through the real libraries (libjpeg / libwebp via PIL), in memory.

A batch goes to 8 bits once (on the input's device) and comes back once; in between each image is encoded and
decoded by PIL in a thread pool as wide as torch's thread count (PIL releases the GIL while it codes, so a 2-core CPU codes two images at
once; one thread codes them in turn, without a pool), and the decoded bytes come back as one tensor.  The values
are exactly those of a plain per-image PIL round trip.  Not differentiable: training uses the base class's
straight-through ``forward_st``.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from torch import Tensor

from wmbench.api import Attack, Method, WmbenchError
from wmbench.params import PluginParams
from wmbench.rng import Gen

_SUBSAMPLING = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2, 0: 0, 1: 1, 2: 2}

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """One shared pool, rebuilt only when the wanted width changes (threads are reused across batches)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers != workers:  # noqa: SLF001 - the pool's own width
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = ThreadPoolExecutor(workers, thread_name_prefix="wmbench-codec")
        return _POOL


def _to_planes_u8(x: Tensor) -> np.ndarray:
    """The batch to 8 bits once, rounded as saving a PNG would, on x's device (only bytes cross to the CPU).
    b 3 h w in [0,1] -> b 3 h w uint8 (numpy)

    ``round(x·255)`` clamped to [0, 255] equals the old ``round(clamp(x, 0, 1)·255)`` for every x; numpy casts
    the exact integers to uint8 (torch's float->uint8 cast is ~8× slower on this CPU).
    """
    r = x.detach().mul(255.0).round_().clamp_(0, 255)
    if r.device.type == "cpu":
        return r.numpy().astype(np.uint8, order="C")
    return r.to(torch.uint8).contiguous().cpu().numpy()


def _from_planes_u8(a: np.ndarray, like: Tensor) -> Tensor:
    """Decoded bytes back as ``bytes / 255`` (for float32, numpy's quotient is torch's, exactly) on ``like``'s
    device and dtype.  b 3 h w uint8 -> b 3 h w"""
    if like.device.type == "cpu" and like.dtype == torch.float32:
        out = torch.empty(a.shape)
        np.divide(a, np.float32(255.0), out=out.numpy(), dtype=np.float32)
        return out
    return torch.from_numpy(a).to(like.device).to(like.dtype).div_(255.0)


def _quality(name: str, strength: float) -> int:
    q = int(round(strength))
    if not 0 <= q <= 100:
        raise WmbenchError(f"attack {name!r}: quality {strength} is outside [0, 100]")
    return q


def _roundtrip(src: np.ndarray, dst: np.ndarray, fmt: str, save: dict[str, Any]) -> None:
    """Encode one image with PIL and decode it into ``dst``.  src, dst: 3 h w uint8

    OpenCV's merge/split interleave and de-interleave the channels (torch's strided uint8 copies are far slower).
    """
    import cv2  # imported here: only the codecs and median blur need OpenCV

    buf = io.BytesIO()
    Image.fromarray(cv2.merge(list(src)), "RGB").save(buf, format=fmt, **save)
    buf.seek(0)
    with Image.open(buf) as im:
        dec = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))  # h w 3
    for c, plane in enumerate(cv2.split(dec)):
        dst[c] = plane


def _codec(x: Tensor, fmt: str, **save: Any) -> Tensor:
    """PIL round trip of every image of a batch.  b 3 h w in [0,1] -> b 3 h w in [0,1] (x's device and dtype)"""
    src = _to_planes_u8(x)  # b 3 h w uint8
    dst = np.empty_like(src)
    workers = min(torch.get_num_threads(), src.shape[0])
    if workers <= 1:
        for i in range(src.shape[0]):
            _roundtrip(src[i], dst[i], fmt, save)
    else:
        jobs = [_pool(workers).submit(_roundtrip, src[i], dst[i], fmt, save) for i in range(src.shape[0])]
        for j in jobs:
            j.result()
    return _from_planes_u8(dst, x)


class Jpeg(Attack):
    """JPEG with libjpeg (PIL), quality = strength; chroma subsampling 4:2:0 unless ``subsampling`` says otherwise."""

    name = "jpeg"
    description = "JPEG compression (PIL/libjpeg, in memory)"
    unit = "jpeg quality"
    integer_strength = True
    default_strengths = (90.0, 70.0, 50.0, 30.0, 10.0)
    strength_range = (90.0, 10.0)  # WAVES: quality 90 -> 10

    class Params(PluginParams):
        subsampling: Literal["4:4:4", "4:2:2", "4:2:0", 0, 1, 2] = Field(
            "4:2:0", description="chroma subsampling (PIL's 0, 1, 2 = 4:4:4, 4:2:2, 4:2:0)"
        )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.subsampling = _SUBSAMPLING[self.p.subsampling]
        self.params = {"subsampling": self.p.subsampling}

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
