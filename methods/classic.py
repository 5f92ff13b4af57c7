"""DWT-DCT and DWT-DCT-SVD: the two classic watermarks of the ``invisible-watermark`` package (0.2.0).

Embedding calls the package's own per-image encoders (``EmbedMaxDct``, ``EmbedDwtDctSvd``) on 8-bit BGR, so the
watermark is exactly what users of that package deploy, defects included (see docs/baselines.md).  The package's
top-level ``WatermarkEncoder`` refuses images under 256×256 pixels; that guard is not part of the algorithm, so we
call the per-method classes directly and 128² works.

Extraction is our own vectorised reading of the same transform (YUV -> one-level Haar DWT -> ``block``×``block``
blocks of the approximation band, bit ``i % nbits`` per block in raster order), kept soft: the package decides
bit 1 when the block statistic ``v`` satisfies ``(v mod scale) > scale/2`` and votes over blocks; we score each
block with ``-sin(2π v / scale)`` — +1 at the bit-1 target (3/4 of a step), -1 at the bit-0 target (1/4), with the
same decision boundaries — and average over the bit's blocks.  Logits lie in [-1, 1]; 0 means abstention.
"""

from __future__ import annotations

import warnings
from typing import Annotated, Any, ClassVar

import cv2
import numpy as np
import pywt
import torch
from pydantic import Field
from torch import Tensor

from wmbench.api import Method, WmbenchError
from wmbench.params import Int, PluginParams

#: an embedded image whose own read-back gets fewer bits right than this counts as "watermark did not take"
READBACK_MIN_ACC = 0.75


class WatermarkFailureWarning(UserWarning):
    """A watermark could not be embedded or read on some image; the batch went on (see docs/baselines.md)."""


def check_batch(name: str, x: Tensor, msg: Tensor | None, nbits: int) -> None:
    """Shape checks shared by the wrappers.  x: b 3 h w; msg: b nbits"""
    if x.ndim != 4 or x.shape[1] != 3:
        raise WmbenchError(f"method {name!r}: expected images b 3 h w, got shape {tuple(x.shape)}")
    if msg is not None and (msg.ndim != 2 or msg.shape[0] != x.shape[0] or msg.shape[1] != nbits):
        raise WmbenchError(
            f"method {name!r}: expected messages {x.shape[0]}×{nbits} (it carries {nbits} bits), "
            f"got shape {tuple(msg.shape)}"
        )


def to_bgr_u8(x: Tensor) -> np.ndarray:
    """RGB float [0,1] -> BGR uint8 (rounded, as OpenCV code expects).  b 3 h w -> b h w 3"""
    u8 = torch.round(x.detach().float().clamp(0, 1) * 255.0).to(torch.uint8)
    return np.ascontiguousarray(u8.flip(1).permute(0, 2, 3, 1).cpu().numpy())


def from_bgr_u8(bgr: np.ndarray, like: Tensor) -> Tensor:
    """BGR uint8 -> RGB float [0,1] on ``like``'s device.  b h w 3 -> b 3 h w"""
    t = torch.from_numpy(np.ascontiguousarray(bgr[..., ::-1])).permute(0, 3, 1, 2).float() / 255.0
    return t.to(device=like.device, dtype=like.dtype if like.is_floating_point() else torch.float32)


class WarnOnce:
    """Emits each kind of failure warning once per method instance (a run has many batches)."""

    def _warn_once(self, key: str, text: str) -> None:
        seen: set[str] = self.__dict__.setdefault("_warned", set())
        if key not in seen:
            seen.add(key)
            warnings.warn(text, WatermarkFailureWarning, stacklevel=3)


#: one entry of ``scales``: a finite quantisation step ≥ 0
Scale = Annotated[float, Field(strict=True, ge=0, allow_inf_nan=False)]


class _InvisibleWatermarkDwt(WarnOnce, Method):
    """Shared wrapper of the package's DWT-domain methods; subclasses name the package class and the statistic.

    Params: ``nbits`` (any length ≥ 1; bit i goes to every block with index ≡ i mod nbits; bits that get no block
    on a small image read as 0 = abstain), ``scales`` ([Y, U, V] quantisation steps as in the package; it only
    ever reads Y and U, V is ignored), ``block`` (block side in the DWT band, even, default 4).
    """

    differentiable_extract: ClassVar[bool] = False
    package_method: ClassVar[str] = ""
    default_scales: ClassVar[tuple[float, float, float]] = (0.0, 36.0, 0.0)

    class Params(PluginParams):
        nbits: int = Int(32, ge=1, le=4096, description="payload length (bit i goes to blocks ≡ i mod nbits)")
        scales: list[Scale] | None = Field(
            None,
            min_length=3,
            max_length=3,
            description="[Y, U, V] quantisation steps (V unused); null = default",
        )
        block: int = Int(4, ge=2, le=256, multiple_of=2, description="block side in the DWT band (even)")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        sc = list(self.default_scales if self.p.scales is None else self.p.scales)
        if sc[0] <= 0 and sc[1] <= 0:
            raise WmbenchError(
                f"method {self.name!r}: params.scales: {sc} embed nothing — invisible-watermark only uses the Y "
                "and U entries (the first two); make one of them > 0"
            )
        self.nbits, self.block = self.p.nbits, self.p.block
        self.scales = [float(s) for s in sc]
        self.params = {"nbits": self.nbits, "scales": self.scales, "block": self.block}

    # -- the package's encoder ---------------------------------------------------------------------------------
    def _encoder(self, bits: list[int]) -> Any:
        raise NotImplementedError

    def embed(self, x: Tensor, msg: Tensor) -> Tensor:
        """Package encoder per image on 8-bit BGR.  x: b 3 h w in [0,1]; msg: b nbits -> b 3 h w (8-bit values)"""
        check_batch(self.name, x, msg, self.nbits)
        bgr = to_bgr_u8(x)
        bits = (msg.detach().cpu() > 0.5).to(torch.int64).numpy()
        out = np.empty_like(bgr)
        raised: list[int] = []
        weak = 0
        for i in range(bgr.shape[0]):
            try:
                out[i] = self._encoder([int(b) for b in bits[i]]).encode(bgr[i].copy())
            except Exception:  # one bad image must not sink the batch
                out[i] = bgr[i]
                raised.append(i)
                continue
            if np.mean((self._logits(out[i]) > 0) == (bits[i] == 1)) < READBACK_MIN_ACC:
                weak += 1
        if raised:
            self._warn_once(
                "raised",
                f"{self.name}: invisible-watermark raised on {len(raised)} of {len(bgr)} image(s) (e.g. images under "
                "4 px); returned them unchanged (they carry no watermark; extract abstains with zero logits)",
            )
        if weak:
            self._warn_once(
                "weak",
                f"{self.name}: the watermark did not take on {weak} of {len(bgr)} image(s): reading it back right "
                f"after embedding gave < {READBACK_MIN_ACC:.0%} of the bits (flat, smooth-chroma or saturated "
                "content, or too few blocks); see docs/baselines.md",
            )
        y = from_bgr_u8(out, x)
        if raised:  # exactly the input, not its 8-bit rounding
            y[raised] = x[raised].detach().to(y.dtype)
        return y

    # -- our soft reader of the same transform -----------------------------------------------------------------
    def _statistic(self, blocks: np.ndarray) -> np.ndarray:
        """The quantity the package quantises, per block.  m block block -> m"""
        raise NotImplementedError

    def block_statistics(self, bgr: np.ndarray) -> list[tuple[np.ndarray, float]]:
        """Per channel the package embeds in (Y, U): the quantised statistic of every block in the package's raster
        order (bit ``j % nbits`` for block ``j``) and the channel's step.  h w 3 uint8 BGR -> [(m, scale)]"""
        h, w = bgr.shape[:2]
        h4, w4 = (
            h // 4 * 4,
            w // 4 * 4,
        )  # the package's crop (pywt raises on an empty array; we return no blocks)
        if h4 == 0 or w4 == 0:
            return []
        yuv = cv2.cvtColor(np.ascontiguousarray(bgr), cv2.COLOR_BGR2YUV)
        out = []
        for ch in (0, 1):  # the package reads Y and U only
            scale = self.scales[ch]
            if scale <= 0:
                continue
            band = pywt.dwt2(yuv[:h4, :w4, ch], "haar")[0]  # h/2 w/2 float64
            n = self.block
            nr, nc = band.shape[0] // n, band.shape[1] // n
            blocks = band[: nr * n, : nc * n].reshape(nr, n, nc, n).swapaxes(1, 2).reshape(nr * nc, n, n)
            out.append((self._statistic(blocks) if nr * nc else np.zeros(0), scale))
        return out

    def _logits(self, bgr: np.ndarray) -> np.ndarray:
        """Soft per-bit scores of one image.  h w 3 uint8 BGR -> nbits in [-1, 1] (0 = no information)"""
        total, count = np.zeros(self.nbits), np.zeros(self.nbits)
        stats = self.block_statistics(bgr)
        # every block with the same statistic (e.g. a flat image) gives every bit the same score: no information
        if all(len(v) == 0 or np.ptp(v) == 0 for v, _ in stats):
            return total
        for v, scale in stats:
            score = -np.sin(2.0 * np.pi * v / scale)  # +1 at 3/4 of a step (bit 1), -1 at 1/4 (bit 0)
            idx = np.arange(len(v)) % self.nbits
            total += np.bincount(idx, weights=score, minlength=self.nbits)
            count += np.bincount(idx, minlength=self.nbits)
        return total / np.maximum(count, 1)

    def extract(self, y: Tensor) -> Tensor:
        """Soft read per image.  y: b 3 h w in [0,1] -> b nbits logits in [-1, 1] (> 0: bit 1; 0: abstain)"""
        check_batch(self.name, y, None, self.nbits)
        bgr = to_bgr_u8(y)
        out = np.zeros((bgr.shape[0], self.nbits))
        failed = 0
        for i in range(bgr.shape[0]):
            try:
                out[i] = self._logits(bgr[i])
            except Exception:  # zero logits = abstain
                failed += 1
        if failed:
            self._warn_once("extract", f"{self.name}: could not read {failed} image(s); returned zero logits")
        return torch.from_numpy(out).float().to(y.device)


class DwtDct(_InvisibleWatermarkDwt):
    """invisible-watermark's ``dwtDct``: quantises, in each 4×4 block of the U channel's Haar approximation band,
    the largest-magnitude coefficient (other than the block's first) to step 36.

    Despite the name no DCT is taken (the package quantises the band's values directly).  Soft logits: yes
    (``-sin(2π|c|/36)`` of that coefficient, averaged over the bit's blocks).  Decoding is fragile where the
    chroma is smooth: quantising the largest coefficient can make another one the largest, so the reader looks
    at the wrong coefficient.  Measured (docs/baselines.md): PSNR ~37 dB; clean bit accuracy ~0.85–0.95 at 128²
    (a quarter of photo tiles below 0.75) and ~0.94–0.97 at 256²; embed ~2–15 ms, extract ~0.3–3 ms per image.
    """

    name = "dwtdct"
    description = "invisible-watermark dwtDct: quantised largest U-channel Haar coefficient per 4×4 block"
    package_method = "dwtDct"
    default_scales = (0.0, 36.0, 36.0)

    def _encoder(self, bits: list[int]) -> Any:
        from imwatermark.maxDct import EmbedMaxDct

        return EmbedMaxDct(bits, wmLen=self.nbits, scales=list(self.scales), block=self.block)

    def _statistic(self, blocks: np.ndarray) -> np.ndarray:
        flat = blocks.reshape(blocks.shape[0], -1)
        pos = np.argmax(np.abs(flat[:, 1:]), axis=1) + 1  # ties: first, as np.argmax in the package
        return np.abs(flat[np.arange(flat.shape[0]), pos])


class DwtDctSvd(_InvisibleWatermarkDwt):
    """invisible-watermark's ``dwtDctSvd``: quantises the largest singular value of the DCT of each 4×4 block of
    the U channel's Haar approximation band to step 36.

    Soft logits: yes (``-sin(2π s₀/36)``, averaged over the bit's blocks).  The DCT is orthonormal, so the
    singular values of DCT(block) are those of the block; we take them directly, batched (identical decisions).
    Measured (docs/baselines.md): PSNR ~37 dB; clean bit accuracy ~0.99–1.0 at 128² and 1.0 at 256²; embed
    ~5–60 ms, extract ~1–25 ms per image (2 shared CPU threads).
    """

    name = "dwtdctsvd"
    description = "invisible-watermark dwtDctSvd: quantised top singular value of U-channel DWT-DCT blocks"
    package_method = "dwtDctSvd"
    default_scales = (0.0, 36.0, 0.0)

    def _encoder(self, bits: list[int]) -> Any:
        from imwatermark.dwtDctSvd import EmbedDwtDctSvd

        return EmbedDwtDctSvd(bits, wmLen=self.nbits, scales=list(self.scales), block=self.block)

    def _statistic(self, blocks: np.ndarray) -> np.ndarray:
        return np.linalg.svd(blocks, compute_uv=False)[:, 0]
