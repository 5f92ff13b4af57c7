"""Lossy codecs run through the real libraries (libjpeg / libwebp via PIL), in memory.

A batch goes to 8 bits once (on the input's device), then each image is encoded and decoded by PIL in a thread
pool as wide as torch's thread count (PIL releases the GIL while it codes, so a 2-core CPU codes two images at
once; one thread codes them in turn, without a pool), and the decoded bytes come back as one tensor.  The values
are exactly those of a plain per-image PIL round trip.  Not differentiable: training uses the base class's
straight-through ``forward_st``.
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from wmbench.api import Attack, Method, WmbenchError
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


_SCRATCH = threading.local()


def _scratch(shape: torch.Size) -> Tensor:
    """A float32 buffer of ``shape`` owned by the calling thread (fresh allocations of this size cost more in
    page faults than the arithmetic)."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.shape != shape:
        buf = _SCRATCH.buf = torch.empty(shape)
    return buf


def _planes_u8(t: Tensor) -> np.ndarray:
    """One image to 8 bits, rounded as saving a PNG would.  3 h w float in [0,1] (or uint8) -> 3 h w uint8

    ``round(x·255)`` clamped to [0, 255] equals the old ``round(clamp(x, 0, 1)·255)`` for every x.  Per image the
    passes stay in the CPU cache, and numpy casts the exact integers to uint8 (torch's cast is ~8× slower here).
    """
    if t.dtype == torch.uint8:
        return t.numpy()
    f = torch.mul(t, 255.0, out=_scratch(t.shape)) if t.dtype == torch.float32 else t.mul(255.0)
    return f.round_().clamp_(0, 255).numpy().astype(np.uint8)


def _write_planes(dec: np.ndarray, dst: Tensor) -> None:
    """A decoded image into ``dst`` as ``bytes / 255`` (float: the exact float32 quotient, as torch's), one
    plane at a time (OpenCV splits the channels).  dec: h w 3 uint8; dst: 3 h w float or uint8"""
    import cv2

    planes = cv2.split(dec)  # 3 × (h w)
    if dst.dtype == torch.float32:
        out = dst.numpy()
        for c, p in enumerate(planes):
            np.divide(p, np.float32(255.0), out=out[c], dtype=np.float32)
    elif dst.dtype == torch.uint8:
        dst.copy_(torch.from_numpy(np.stack(planes)))
    else:
        dst.copy_(torch.from_numpy(np.stack(planes))).div_(255.0)


def _quality(name: str, strength: float) -> int:
    q = int(round(strength))
    if not 0 <= q <= 100:
        raise WmbenchError(f"attack {name!r}: quality {strength} is outside [0, 100]")
    return q


def _roundtrip(src: Tensor, dst: Tensor, fmt: str, save: dict[str, Any]) -> None:
    """Encode one image with PIL and decode it into ``dst``.  src: 3 h w (float in [0,1] or uint8, CPU);
    dst: 3 h w (float, written as decoded/255, or uint8), CPU.

    OpenCV's merge/split interleave and de-interleave the channels (torch's strided uint8 copies are far slower).
    """
    import cv2  # imported here: only the codecs and median blur need OpenCV

    buf = io.BytesIO()
    Image.fromarray(cv2.merge(list(_planes_u8(src))), "RGB").save(buf, format=fmt, **save)
    buf.seek(0)
    with Image.open(buf) as im:
        dec = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))  # h w 3 uint8
    _write_planes(dec, dst)


def _codec(x: Tensor, fmt: str, **save: Any) -> Tensor:
    """PIL round trip of every image of a batch.  b 3 h w in [0,1] -> b 3 h w in [0,1] (x's device and dtype)

    On the CPU each worker converts, codes and writes back one image; elsewhere the batch goes to 8 bits on its
    device first, so only bytes cross to the CPU and back.
    """
    x = x.detach()
    on_cpu = x.device.type == "cpu"
    src = x.contiguous() if on_cpu else x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).cpu()
    dst = torch.empty_like(src) if on_cpu else torch.empty(src.shape, dtype=torch.uint8)
    workers = min(torch.get_num_threads(), src.shape[0])
    if workers <= 1:
        for i in range(src.shape[0]):
            _roundtrip(src[i], dst[i], fmt, save)
    else:
        jobs = [_pool(workers).submit(_roundtrip, src[i], dst[i], fmt, save) for i in range(src.shape[0])]
        for j in jobs:
            j.result()
    return dst if on_cpu else dst.to(x.device).to(x.dtype).div_(255.0)


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
