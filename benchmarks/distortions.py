"""Images/s of every CPU distortion: ``attack.apply`` vs the bare library call vs plain PIL per image.

    python benchmarks/distortions.py [--repeat 5] [--threads 1 0] [--only jpeg rotation …] [--prefix-note TEXT]

Images: 96 photographs at 256² (``_photos.py``), in ``apply`` calls of ``--batch`` images (16, a suite's default;
fresh tensors of 96 images are ~75 MB, and on this VM each fresh allocation that size costs more in page faults
than most distortions do), with per-image generators (``rng.ImageGens``, as a run passes them).  For each attack and thread count (``0`` = the default), the three are timed side by side in
turn, ``--repeat`` times, and the median is printed:

* ``apply``: the attack on the float batch (b 3 h w in [0,1], on the 8-bit grid as the runner passes it),
  conversions included;
* ``bare``: the library call the attack wraps, on the same pixels already in that library's own layout (uint8
  h w 3 arrays for PIL/OpenCV codecs and median, float32 h w 3 for OpenCV's blur, the float batch for torch and
  kornia), one call per image or one per batch as the library is used: no conversions, no checks;
* ``pil``: for the distortions WAVES implements (rotation, resized crop, brightness, contrast, Gaussian blur,
  JPEG), plain PIL on a list of ``PIL.Image``\\ s, one call per image, written here the way such code is usually
  written (not WAVES' code).

``--before DIR`` also times the attacks of another checkout (e.g. ``git archive HEAD | tar -x -C DIR``) in the
same rounds, so old and new are compared side by side on a shared machine.

Ratios: ``apply/before`` (the speed-up), ``apply/bare`` (the goal: ≥ 0.9) and ``apply/pil`` (≥ 1).  Threads: torch's, OpenCV's and the codec
thread pool all follow ``--threads``.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import math
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _photos import photos  # noqa: E402

from wmbench import rng  # noqa: E402
from wmbench.registry import attacks  # noqa: E402

#: attack name -> the strength timed (a middle default)
STRENGTHS: dict[str, float] = {
    "jpeg": 50,
    "webp": 50,
    "gaussian_blur": 1.0,
    "median_blur": 5,
    "resize": 0.5,
    "crop": 0.75,
    "center_crop": 0.75,
    "rotation": 15.0,
    "perspective": 0.3,
    "brightness": 1.5,
    "contrast": 1.5,
    "saturation": 0.5,
    "hue": 0.1,
    "sharpness": 2.0,
    "gaussian_noise": 0.05,
    "salt_pepper": 0.05,
    "dropout": 0.3,
    "cropout": 0.5,
}


class Inputs:
    """The same 96 photos in every layout a library wants."""

    def __init__(self, u8: np.ndarray, first: int = 0) -> None:
        self.u8 = list(np.ascontiguousarray(u8))  # n × (h w 3 uint8)
        self.f = torch.from_numpy(u8).permute(0, 3, 1, 2).float().div(255).contiguous()  # n 3 h w
        self.cover = self.f.flip(-1).contiguous()
        self.f32 = [a.astype(np.float32) / 255 for a in self.u8]  # n × (h w 3 float32)
        self.pil = [Image.fromarray(a) for a in self.u8]
        self.ids = [str(first + i) for i in range(len(self.u8))]


# ------------------------------------------------------------------------------------------- bare calls


def _codec(fmt: str, q: int, **kw: object) -> Callable[[Inputs], object]:
    def go(d: Inputs) -> list[np.ndarray]:
        out = []
        for a in d.u8:
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format=fmt, quality=q, **kw)
            buf.seek(0)
            out.append(np.asarray(Image.open(buf).convert("RGB")))
        return out

    return go


def _blur(s: float) -> Callable[[Inputs], object]:
    k = 2 * math.ceil(3 * s) + 1
    return lambda d: [cv2.GaussianBlur(a, (k, k), s, borderType=cv2.BORDER_REFLECT_101) for a in d.f32]


def _crop(a: float, centre: bool) -> Callable[[Inputs], object]:
    """OpenCV's bilinear resize of each 8-bit h w 3 image's window back to h w (the kernel ``crop`` /
    ``center_crop`` use on 8-bit batches); random windows for ``crop``."""

    def go(d: Inputs) -> list[np.ndarray]:
        h, w = d.u8[0].shape[:2]
        ch, cw = round(h * math.sqrt(a)), round(w * math.sqrt(a))
        g = np.random.default_rng(0)
        out = []
        for im in d.u8:
            y0, x0 = (
                ((h - ch) // 2, (w - cw) // 2) if centre else (g.integers(h - ch + 1), g.integers(w - cw + 1))
            )
            out.append(cv2.resize(im[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR))
        return out

    return go


def _rotation(deg: float) -> Callable[[Inputs], object]:
    """OpenCV's bilinear warp of each 8-bit h w 3 image (the kernel ``rotation`` uses on 8-bit batches)."""

    def go(d: Inputs) -> list[np.ndarray]:
        h, w = d.u8[0].shape[:2]
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), deg, 1.0)
        return [cv2.warpAffine(a, m, (w, h), flags=cv2.INTER_LINEAR) for a in d.u8]

    return go


def _perspective(d_: float) -> Callable[[Inputs], object]:
    """OpenCV's bilinear perspective warp of each 8-bit h w 3 image, each with its own random corners (the kernel
    ``perspective`` uses on 8-bit batches)."""

    def go(d: Inputs) -> list[np.ndarray]:
        h, w = d.u8[0].shape[:2]
        g = np.random.default_rng(0)
        src = np.float32([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]])
        inward = np.float32([[1, 1], [-1, 1], [-1, -1], [1, -1]])
        half = np.float32([(w - 1) / 2, (h - 1) / 2])
        out = []
        for a in d.u8:
            m = cv2.getPerspectiveTransform(src, src + inward * g.random((4, 2), np.float32) * d_ * half)
            out.append(cv2.warpPerspective(a, m, (w, h), flags=cv2.INTER_LINEAR))
        return out

    return go


def _cropout(a: float) -> Callable[[Inputs], object]:
    def go(d: Inputs) -> torch.Tensor:
        h, w = d.f.shape[-2:]
        ch, cw = round(h * math.sqrt(a)), round(w * math.sqrt(a))
        out = d.cover.clone()
        out[..., :ch, :cw] = d.f[..., :ch, :cw]  # one rectangle for the whole batch: the cheapest form
        return out

    return go


def _bare(name: str, s: float) -> Callable[[Inputs], object]:
    from kornia.enhance import adjust_hue, sharpness

    gray = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    table: dict[str, Callable[[Inputs], object]] = {
        "jpeg": _codec("JPEG", int(s), subsampling=2),
        "webp": _codec("WEBP", int(s)),
        "gaussian_blur": _blur(s),
        "median_blur": lambda d: [cv2.medianBlur(a, int(s)) for a in d.u8],
        "resize": lambda d: F.interpolate(
            F.interpolate(d.f, scale_factor=s, mode="bilinear", antialias=True),
            size=d.f.shape[-2:],
            mode="bilinear",
        ),
        "crop": _crop(s, False),
        "center_crop": _crop(s, True),
        "rotation": _rotation(s),
        "perspective": _perspective(s),
        "brightness": lambda d: d.f.mul(s).clamp_(0, 1),
        "contrast": lambda d: (
            torch.mul(d.f, s)
            .add_((d.f.mean((2, 3), keepdim=True) * gray).sum(1, keepdim=True) * (1 - s))
            .clamp_(0, 1)
        ),
        "saturation": lambda d: (d.f - (g := (d.f * gray).sum(1, keepdim=True))).mul_(s).add_(g).clamp_(0, 1),
        "hue": lambda d: adjust_hue(d.f, 2 * math.pi * s),
        "sharpness": lambda d: sharpness(d.f, s),
        "gaussian_noise": lambda d: (
            torch.randn(d.f.shape, generator=torch.Generator().manual_seed(0)).mul_(s).add_(d.f).clamp_(0, 1)
        ),
        "salt_pepper": lambda d: torch.where(
            torch.rand(d.f.shape[0], 1, *d.f.shape[2:]) < s, torch.rand(d.f.shape[0], 1, *d.f.shape[2:]), d.f
        ),
        "dropout": lambda d: torch.where(torch.rand(d.f.shape[0], 1, *d.f.shape[2:]) < s, d.cover, d.f),
        "cropout": _cropout(s),
    }
    return table[name]


# ------------------------------------------------------------------------- the same work from the float batch


def _u8_batch(x: torch.Tensor) -> np.ndarray:
    """b 3 h w float -> b h w 3 uint8, written plainly (round, clamp, cast, permute)."""
    return x.mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _from_u8(arrs: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div(255)


def _per_image_mask(d: Inputs, p: float, name: str) -> torch.Tensor:
    """One uniform draw per pixel and image from that image's own generator (the draw-order contract)."""
    h, w = d.f.shape[-2:]
    gens = [torch.Generator().manual_seed(hash((name, i)) & 0xFFFF) for i in d.ids]
    return torch.stack([torch.rand(1, h, w, generator=g) for g in gens]) < p


def _batch(name: str, s: float) -> Callable[[Inputs], object] | None:
    """What a user would write to do the attack's work on the float batch it gets (b 3 h w in [0,1]) with the
    same library call: conversions in and out included, and per-image random draws where the attack must make
    them.  None where that is exactly the bare call (torch/kornia on the float batch)."""
    k = 2 * math.ceil(3 * s) + 1

    def codec(fmt: str, **kw: object) -> Callable[[Inputs], object]:
        one = _codec(fmt, int(s), **kw)
        return lambda d: _from_u8(one(_Wrap(_u8_batch(d.f))))

    def salt(d: Inputs) -> torch.Tensor:
        hit, white = _per_image_mask(d, s, "hit"), _per_image_mask(d, 0.5, "salt")
        return torch.where(hit, white.float(), d.f)

    def cropout(d: Inputs) -> torch.Tensor:
        h, w = d.f.shape[-2:]
        ch, cw = round(h * math.sqrt(s)), round(w * math.sqrt(s))
        out = d.cover.clone()
        for i, key in enumerate(d.ids):
            g = torch.Generator().manual_seed(int(key))
            t, l_ = (int(torch.randint(0, n + 1, (1,), generator=g)) for n in (h - ch, w - cw))
            out[i, :, t : t + ch, l_ : l_ + cw] = d.f[i, :, t : t + ch, l_ : l_ + cw]
        return out

    table: dict[str, Callable[[Inputs], object]] = {
        "jpeg": codec("JPEG", subsampling=2),
        "webp": codec("WEBP"),
        "median_blur": lambda d: _from_u8([cv2.medianBlur(a, int(s)) for a in _u8_batch(d.f)]),
        "rotation": lambda d: _from_u8(_rotation(s)(_Wrap(_u8_batch(d.f)))),
        "crop": lambda d: _from_u8(_crop(s, False)(_Wrap(_u8_batch(d.f)))),
        "center_crop": lambda d: _from_u8(_crop(s, True)(_Wrap(_u8_batch(d.f)))),
        "perspective": lambda d: _from_u8(_perspective(s)(_Wrap(_u8_batch(d.f)))),
        "gaussian_blur": lambda d: torch.from_numpy(
            np.stack(
                [
                    cv2.GaussianBlur(a, (k, k), s, borderType=cv2.BORDER_REFLECT_101)
                    for a in d.f.permute(0, 2, 3, 1).contiguous().numpy()
                ]
            )
        ).permute(0, 3, 1, 2),
        "resize": lambda d: F.interpolate(  # the attack's own precision: float64 (see docs/performance.md)
            F.interpolate(d.f.double(), scale_factor=s, mode="bilinear", antialias=True),
            size=d.f.shape[-2:],
            mode="bilinear",
        ).float(),
        "salt_pepper": salt,
        "dropout": lambda d: torch.where(_per_image_mask(d, s, "drop"), d.cover, d.f),
        "gaussian_noise": lambda d: (
            torch.stack(
                [torch.randn(d.f.shape[1:], generator=torch.Generator().manual_seed(int(i))) for i in d.ids]
            )
            .mul_(s)
            .add_(d.f)
            .clamp_(0, 1)
        ),
        "cropout": cropout,
    }
    return table.get(name)


class _Wrap:
    """Hands converted arrays to the bare codec (it reads ``.u8``)."""

    def __init__(self, u8: np.ndarray) -> None:
        self.u8 = list(u8)


# ------------------------------------------------------------------------------------ plain PIL per image


def _pil(name: str, s: float) -> Callable[[Inputs], object] | None:
    def per_image(fn: Callable[[Image.Image], Image.Image]) -> Callable[[Inputs], object]:
        return lambda d: [fn(im) for im in d.pil]

    def jpeg(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=int(s))
        buf.seek(0)
        out = Image.open(buf)
        out.load()
        return out

    def crop(im: Image.Image) -> Image.Image:
        w, h = im.size
        cw, ch = round(w * math.sqrt(s)), round(h * math.sqrt(s))
        return im.crop((0, 0, cw, ch)).resize((w, h), Image.Resampling.BILINEAR)

    table = {
        "jpeg": jpeg,
        "gaussian_blur": lambda im: im.filter(ImageFilter.GaussianBlur(s)),
        "crop": crop,
        "rotation": lambda im: im.rotate(s, resample=Image.Resampling.BILINEAR),
        "brightness": lambda im: ImageEnhance.Brightness(im).enhance(s),
        "contrast": lambda im: ImageEnhance.Contrast(im).enhance(s),
    }
    return per_image(table[name]) if name in table else None


# ------------------------------------------------------------------------------------------------- main


CLOCK = time.perf_counter


def _time(fn: Callable[[], object]) -> float:
    t0 = CLOCK()
    fn()
    return CLOCK() - t0


def _before_class(root: Path, name: str) -> type:
    """The attack class as it is in another checkout ``root`` (its module loaded under another name, importing
    this checkout's ``wmbench.api``), to time the old code side by side with the new in one process."""
    target = attacks()._targets[name]  # noqa: SLF001 - the registry's "module:Class" string
    mod_name, _, cls_name = str(target).partition(":")
    pkg = "_before_attacks"  # a package of its own, so relative imports and pydantic's name lookups resolve
    if pkg not in sys.modules:
        sys.modules[pkg] = types.ModuleType(pkg)
        sys.modules[pkg].__path__ = [str(root / "attacks")]
    leaf = mod_name.rsplit(".", 1)[1]
    mod = importlib.import_module(f"{pkg}.{leaf}")
    return getattr(mod, cls_name)


def measure(name: str, chunks: list[Inputs], repeat: int, before: Path | None) -> dict[str, float | None]:
    """Median images/s of apply, bare, batch, pil and the older checkout's apply over every chunk (None where
    absent)."""
    s = STRENGTHS[name]
    atk = attacks().get(name)()
    old = _before_class(before, name)() if before else None
    bare, pil, batch = _bare(name, s), _pil(name, s), _batch(name, s)
    n = sum(len(d.ids) for d in chunks)
    times: dict[str, list[float]] = {"apply": [], "bare": [], "batch": [], "pil": [], "before": []}

    def run_apply(a: object) -> float:
        gens = [rng.ImageGens.for_cell(0, "bench", name, s, image_ids=d.ids) for d in chunks]
        t0 = CLOCK()
        for d, g in zip(chunks, gens, strict=True):
            a.apply(d.f, s, gen=g, cover=d.cover)
        return CLOCK() - t0

    with torch.no_grad():
        for _ in range(repeat + 1):  # the first round warms up every path
            times["apply"].append(run_apply(atk))
            if old is not None:
                times["before"].append(run_apply(old))
            times["bare"].append(_time(lambda: [bare(d) for d in chunks]))
            times["batch"].append(_time(lambda: [(batch or bare)(d) for d in chunks]))
            if pil is not None:
                times["pil"].append(_time(lambda: [pil(d) for d in chunks]))
    return {k: (n / statistics.median(v[1:]) if v else None) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="0 = torch's default")
    ap.add_argument("--only", nargs="+", default=None)
    ap.add_argument("--batch", type=int, default=16, help="images per apply() call (a suite's batch_size)")
    ap.add_argument("--before", type=Path, default=None, help="another checkout: time its attacks too")
    ap.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="cpu: process CPU time (all threads)"
    )
    a = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if a.clock == "cpu" else time.perf_counter
    default = torch.get_num_threads()
    u8 = photos()
    chunks = [Inputs(u8[j : j + a.batch], j) for j in range(0, len(u8), a.batch)]
    names = a.only or list(STRENGTHS)
    print(
        f"# {len(u8)} photos 256² in batches of {a.batch}, median of {a.repeat}, images/s ({a.clock} clock)"
    )
    print(
        f"{'attack':<15} {'s':>5} {'thr':>3} {'before':>8} {'apply':>8} {'bare':>8} {'batch':>8} {'pil':>8} "
        f"{'a/before':>8} {'a/bare':>7} {'a/batch':>7} {'a/pil':>6}"
    )
    for nt in a.threads:
        t = nt or default
        torch.set_num_threads(t)
        cv2.setNumThreads(t)
        for name in names:
            r = measure(name, chunks, a.repeat, a.before)
            pil = f"{r['pil']:8.0f}" if r["pil"] else f"{'-':>8}"
            ap_ = f"{r['apply'] / r['pil']:6.2f}" if r["pil"] else f"{'-':>6}"
            old = f"{r['before']:8.0f}" if r["before"] else f"{'-':>8}"
            ab = f"{r['apply'] / r['before']:8.2f}" if r["before"] else f"{'-':>8}"
            print(
                f"{name:<15} {STRENGTHS[name]:>5g} {t:>3} {old} {r['apply']:8.0f} {r['bare']:8.0f} "
                f"{r['batch']:8.0f} {pil} {ab} {r['apply'] / r['bare']:7.2f} {r['apply'] / r['batch']:7.2f} {ap_}",
                flush=True,
            )
    torch.set_num_threads(default)


if __name__ == "__main__":
    main()
