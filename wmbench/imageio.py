"""Reading image files of any common kind as float RGB tensors, and writing 8-bit PNGs atomically.

Policies (also in docs/images.md):
  * EXIF orientation is applied (``ImageOps.exif_transpose``), so a phone photo is read the way a viewer shows it;
  * alpha (RGBA, LA, PA, palette with transparency) is composited over white: that is what a viewer shows, and
    the colour stored under fully transparent pixels is often garbage;
  * grayscale (1, L, I;16, I, F) is replicated to 3 channels; CMYK/YCbCr/palette go through Pillow's ``convert``;
  * 16-bit and float images are scaled by their type's full range (65535 for 16-bit), never clipped at 255;
    16-bit colour PNG/TIFF, which Pillow truncates to 8 bits, is read at full depth with OpenCV;
  * resizing works on float values, and the result is rounded to 8 bits once, at the end (``to_uint8``).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps

from wmbench.api import WmbenchError

#: file extensions a folder source reads (compared lower-case)
EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"})

_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
_INT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


class ImageSkipWarning(UserWarning):
    """An image file of a folder source could not be read and was skipped (one warning per file)."""


def _int_peak(im: Image.Image, fmt: str | None, bits: int | None) -> float:
    """Full-scale value of an integer grayscale image, from its format/bit depth (not from its content)."""
    if im.mode.startswith("I;16") or fmt == "PNG":  # PNG grayscale is at most 16-bit
        return 65535.0
    if bits:
        return float(2**bits - 1)
    m = float(np.asarray(im).max(initial=0))  # unknown depth: the smallest usual range that holds the data
    return 255.0 if m <= 255 else 65535.0 if m <= 65535 else m


def _tiff_bits(im: Image.Image) -> int | None:
    tags = getattr(im, "tag_v2", None)
    if tags is None:
        return None
    b = tags.get(258)  # BitsPerSample
    if isinstance(b, tuple):
        b = b[0] if b else None
    return int(b) if b else None


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """h w 3 and h w float in [0,1] -> h w 3 composited over white."""
    a = alpha[..., None]
    return rgb * a + (1.0 - a)


def _to_float_rgb(im: Image.Image, fmt: str | None, bits: int | None) -> np.ndarray:
    """Any PIL mode -> h w 3 float32 in [0,1]."""
    mode = im.mode
    if mode in _INT_MODES:
        a = np.asarray(im, dtype=np.float64) / _int_peak(im, fmt, bits)
        g = np.clip(a, 0, 1).astype(np.float32)
        return np.repeat(g[..., None], 3, axis=2)
    if mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        m = float(a.max(initial=0))
        if m > 1.0:  # a float image stored on an integer scale
            a = a / (255.0 if m <= 255 else 65535.0 if m <= 65535 else m)
        g = np.clip(a, 0, 1).astype(np.float32)
        return np.repeat(g[..., None], 3, axis=2)
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0
        return _over_white(rgba[..., :3], rgba[..., 3]).astype(np.float32)
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def _is_16bit_colour(im: Image.Image) -> bool:
    """True for a 16-bit-per-channel colour PNG/TIFF, which Pillow would truncate to 8 bits."""
    if im.mode not in ("RGB", "RGBA") or im.format not in ("PNG", "TIFF"):
        return False
    if im.format == "TIFF":
        return _tiff_bits(im) == 16
    return any(";16" in str(t[3]) for t in im.tile if len(t) > 3)


def _read_16bit_colour(path: Path, orientation: int) -> np.ndarray | None:
    """16-bit colour via OpenCV at full depth, EXIF orientation applied.  -> h w 3 float32, or None."""
    import cv2

    a = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if a is None or a.dtype != np.uint16 or a.ndim != 3 or a.shape[2] not in (3, 4):
        return None
    f = a.astype(np.float32) / 65535.0
    rgb = f[..., 2::-1]  # BGR(A) -> RGB
    out = _over_white(rgb, f[..., 3]) if a.shape[2] == 4 else rgb
    # EXIF orientation -> (transpose first?, quarter-turns ccw, then mirror left-right?), as exif_transpose does
    ops = {2: (False, 0, True), 3: (False, 2, False), 4: (False, 2, True), 5: (True, 0, False),
           6: (False, 3, False), 7: (True, 2, False), 8: (False, 1, False)}  # fmt: skip
    if orientation in ops:
        transpose, k, flip = ops[orientation]
        if transpose:
            out = out.transpose(1, 0, 2)
        out = np.rot90(out, k)
        if flip:
            out = out[:, ::-1]
    return np.ascontiguousarray(out, dtype=np.float32)


def load_image(path: Path, exact_u8: int | None = None) -> torch.Tensor:
    """Read an image file as RGB, EXIF orientation applied, alpha over white.  -> 3 h w float32 in [0,1]

    ``exact_u8=size``: an 8-bit RGB file of exactly size × size (no EXIF turn) comes back as its 3 h w uint8
    pixels, the values ``to_uint8(resize_center_crop(load_image(p), size))`` would give, without the float
    round trip (a folder of ready-made covers is read once per run, and twice as fast).
    Raises WmbenchError naming the file when it is missing, truncated, corrupt or not an image.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            _check_aspect(path, *im.size)  # from the header, before any pixel is decoded
            fmt, bits = im.format, _tiff_bits(im)
            deep = _is_16bit_colour(im)  # before anything loads the pixels (that clears im.tile)
            if ImageFile.LOAD_TRUNCATED_IMAGES and fmt == "JPEG":
                # someone enabled Pillow's lenient mode globally; a cut JPEG is still an error here
                _check_jpeg_complete(path)
            im.load()
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            if exact_u8 is not None and not deep and im.mode == "RGB" and orientation == 1:
                if im.size == (exact_u8, exact_u8):  # already a cover: its bytes are the answer
                    return torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1).contiguous()
            arr = _read_16bit_colour(path, orientation) if deep else None
            if arr is None:
                arr = _to_float_rgb(ImageOps.exif_transpose(im), fmt, bits)
    except WmbenchError:
        raise
    except Exception as e:
        # Pillow raises many types on corrupt input (OSError, SyntaxError, struct.error, ...)
        raise WmbenchError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
    if arr.ndim != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise WmbenchError(f"{path}: empty image")
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).contiguous()


#: longest ÷ shortest side a cover may have: scaling the shorter side of a 65535×1 strip to 256 px would need
#: a 16-million-pixel-wide float image before the centre crop
MAX_ASPECT = 16.0


def _check_aspect(path: Path, w: int, h: int) -> None:
    if min(w, h) < 1 or max(w, h) / min(w, h) > MAX_ASPECT:
        raise WmbenchError(
            f"{path}: {w}x{h} px, an aspect ratio beyond {MAX_ASPECT:g}:1; covers are centre-cropped squares, so "
            "crop such an image first"
        )


def _check_jpeg_complete(path: Path) -> None:
    """Pillow's lenient mode would grey-fill a cut JPEG; demand the end-of-image marker near the end instead."""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 1024))
        tail = f.read()
    if b"\xff\xd9" not in tail:
        raise WmbenchError(f"{path}: cannot read image (truncated JPEG: no end-of-image marker)")


def resize_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Scale the shorter side to ``size`` (bicubic, antialiased when shrinking), then centre-crop the longer one.

    Works on float values so 16-bit detail survives until the final rounding.  3 h w -> 3 size size in [0,1]
    """
    _, h, w = x.shape
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    if (nh, nw) != (h, w):
        x = F.interpolate(
            x[None].float(), size=(nh, nw), mode="bicubic", antialias=True, align_corners=False
        )[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[:, top : top + size, left : left + size].clamp(0, 1)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0,1] float -> uint8 on the 8-bit grid (rounded half to even, clamped), any shape.

    A float32 CPU tensor goes through numpy in place: the same float32 arithmetic and rounding, but torch's
    float -> uint8 cast and its per-op thread barriers cost several times more on a small CPU (profiled: 7 % of
    a folder run's wall time went to this one line for reading the covers)."""
    x = x.detach()
    if x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad:
        a = np.clip(x.numpy(), 0.0, 1.0)  # a new float32 array
        a *= np.float32(255.0)
        np.rint(a, out=a)
        return torch.from_numpy(a.astype(np.uint8))
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0,1], any shape (float input is returned as float32 unchanged)."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def save_png(img: torch.Tensor, path: Path | str, *, compress_level: int = 1) -> None:
    """Write ``img`` (3 h w or 1 h w; float in [0,1] or uint8) as a lossless 8-bit PNG, atomically.

    The temp file lives in the target folder and is renamed over ``path``, so readers (e.g. a parallel run
    sharing the watermark cache) never see half a file. Level 1 compression: fast, still lossless.
    """
    from wmbench.store import atomic_write_bytes

    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise WmbenchError(f"save_png: expected 3 h w or 1 h w, got shape {tuple(img.shape)}")
    u8 = (img if img.dtype == torch.uint8 else to_uint8(img)).detach().cpu()
    arr = u8.permute(1, 2, 0).contiguous().numpy()
    pil = Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", compress_level=compress_level)
    atomic_write_bytes(Path(path), buf.getvalue())


def warn_skip(path: Path, reason: str) -> None:
    """One warning per unreadable file, naming it and why."""
    warnings.warn(f"skipping unreadable image {path}: {reason}", ImageSkipWarning, stacklevel=3)
