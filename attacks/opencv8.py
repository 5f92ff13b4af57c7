"""OpenCV on 8-bit pixels for attacks whose runner input is on the 8-bit grid (shared by filtering and geometry).

The runner hands attacks float batches whose values are k/255 (watermarked images are quantised, part of the
protocol); OpenCV's 8-bit kernels are several times faster than float ones on a CPU.  ``u8_per_image`` takes such a
batch image by image, applies an OpenCV kernel to its h w 3 bytes and returns float values again, or None when a
value is off the grid (the caller then keeps its float path).  No plugin lives here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor


def plain(x: Tensor) -> bool:
    """A float32 batch that needs no gradient (any device): what the 8-bit paths take."""
    return x.dtype == torch.float32 and not (torch.is_grad_enabled() and x.requires_grad)


def plain_cpu(x: Tensor) -> bool:
    """``plain`` and on the CPU: for kernels whose float path is as good on a GPU."""
    return x.device.type == "cpu" and plain(x)


def u8_per_image(x: Tensor, fn: Callable[[int, np.ndarray], np.ndarray]) -> Tensor | None:
    """Apply ``fn(i, image i as h w 3 uint8) -> h w 3 uint8`` (an OpenCV kernel) to every image, when every value is
    on the 8-bit grid (else None); numpy per image, so the grid check and the conversions stay in cache.  A GPU batch
    makes the round trip through the CPU too (as the codecs do), so a cell's values never depend on the device.
    # b 3 h w -> b 3 h w"""
    import cv2  # imported here: only the 8-bit paths need OpenCV

    out = torch.empty(x.shape, dtype=torch.float32)
    src, dst = x.detach().cpu().contiguous().numpy(), out.numpy()
    for i in range(x.shape[0]):
        r = np.rint(src[i] * np.float32(255.0))  # round half to even, as torch.round
        if not (r.min() >= 0 and r.max() <= 255 and np.array_equal(r / np.float32(255.0), src[i])):
            return None
        for c, plane in enumerate(cv2.split(fn(i, cv2.merge(list(r.astype(np.uint8)))))):  # h w 3 -> planes
            np.divide(plane, np.float32(255.0), out=dst[i, c], dtype=np.float32)
    return out.to(x.device)
