"""Reading and writing image files as float tensors (placeholder; the data work replaces it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps


def load_image(path: Path) -> torch.Tensor:
    """Read any image file as RGB.  -> 3 h w float in [0,1]"""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
