"""RivaGAN (Zhang et al. 2019) as shipped, pre-trained, in ``invisible-watermark`` 0.2.0 (two ONNX networks).

We run the package's ``rivagan_{encoder,decoder}.onnx`` with onnxruntime ourselves (CPU provider; CUDA only when
onnxruntime has it and the method is set up on a cuda device), feeding frames the way the package does: BGR, the
8-bit values mapped to [-1, 1], shape ``b 3 1 h w`` (a one-frame video).  Both networks are fully convolutional
with a global pooling decoder, so any size works (probed 1×1 to 512²); the package's ``WatermarkEncoder`` refuses
images under 256×256 pixels, a guard of its API, not of the networks.

Differences from the package's ``RivaWatermark.encode``: it truncates the output to uint8 (``astype``), which
costs ~1.8 dB PSNR; we return the clamped float output and let the runner round it to 8 bits like any method.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

from wmbench.api import Method
from wmbench.params import PluginParams

from .classic import WarnOnce, check_batch, to_bgr_u8

#: the package decides bit 1 when the decoder's output exceeds this; our logit is output - threshold
PACKAGE_THRESHOLD = 0.52
#: images whose every channel has a spatial std below this (in [0,1] units) are "flat": RivaGAN reads them unreliably
FLAT_STD = 2.0 / 255.0
#: images per onnxruntime call (bounds memory; the networks take any batch size)
CHUNK = 8


def _onnx_dir() -> Path:
    import imwatermark

    return Path(imwatermark.__file__).parent


@cache
def _weights_hash() -> str:
    h = hashlib.sha256()
    for part in ("encoder", "decoder"):
        h.update((_onnx_dir() / f"rivagan_{part}.onnx").read_bytes())
    return h.hexdigest()[:16]


@cache
def _sessions(providers: tuple[str, ...]) -> tuple[Any, Any]:
    """Encoder and decoder sessions, loaded once per process and provider list."""
    import onnxruntime as ort

    d = _onnx_dir()
    return tuple(  # type: ignore[return-value]
        ort.InferenceSession(str(d / f"rivagan_{p}.onnx"), providers=list(providers))
        for p in ("encoder", "decoder")
    )


class RivaGan(WarnOnce, Method):
    """RivaGAN, 32 bits, pre-trained weights from invisible-watermark.

    Soft logits: yes — the ONNX decoder outputs one unbounded real value per bit (about ±10 on watermarked
    photos, near 0 on flat images); logit = output - 0.52, the package's threshold, so bit decisions match it.
    Deterministic (no sampling inside the networks).  Flat images: no error, but reading back is unreliable
    (about 45–85 % of bits on flat grey, black, white or pure colours); embed warns once.
    Params: ``nbits`` may only be 32.  Measured (docs/baselines.md): PSNR 42.4 dB at 128² and 256²; clean bit
    accuracy ~0.93–0.97 at 128², ~0.99 at 256²; ~0.05–0.19 s per 128² image and ~0.25–1 s per 256² image
    each way on 2 shared CPU threads.
    """

    name = "rivagan"
    description = "RivaGAN: pre-trained attention encoder/decoder (ONNX shipped by invisible-watermark)"
    differentiable_extract: ClassVar[bool] = False
    nbits = 32

    class Params(PluginParams):
        nbits: Literal[32] = Field(32, description="the pre-trained networks carry exactly 32 bits")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._providers: tuple[str, ...] = ("CPUExecutionProvider",)

    def setup(self, device: torch.device) -> None:
        """Pick the onnxruntime provider for ``device`` and load both networks."""
        import onnxruntime as ort

        self.device = torch.device(device)
        cuda = self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        self._providers = (
            ("CUDAExecutionProvider", "CPUExecutionProvider") if cuda else ("CPUExecutionProvider",)
        )
        _sessions(self._providers)

    def weights_hash(self) -> str:
        """sha256 (16 hex) of the encoder and decoder ONNX files."""
        return _weights_hash()

    @staticmethod
    def _frames(x: Tensor) -> np.ndarray:
        """RGB [0,1] -> the package's network input: BGR 8-bit values in [-1, 1].  b 3 h w -> b 3 1 h w"""
        bgr = to_bgr_u8(x)  # b h w 3
        return np.ascontiguousarray(bgr.transpose(0, 3, 1, 2)[:, :, None].astype(np.float32) / 127.5 - 1.0)

    def embed(self, x: Tensor, msg: Tensor) -> Tensor:
        """x: b 3 h w in [0,1]; msg: b 32 -> b 3 h w in [0,1] (float; the runner quantises)"""
        check_batch(self.name, x, msg, self.nbits)
        enc, _ = _sessions(self._providers)
        frames = self._frames(x)
        data = (msg.detach().cpu() > 0.5).float().numpy()
        out = frames.copy()
        failed: list[int] = []
        for s in range(0, len(frames), CHUNK):
            sl = slice(s, s + CHUNK)
            try:
                out[sl] = enc.run(None, {"frame": frames[sl], "data": data[sl]})[0]
            except Exception:  # retry one by one so one bad image does not sink the chunk
                for i in range(s, min(s + CHUNK, len(frames))):
                    try:
                        one = {"frame": frames[i : i + 1], "data": data[i : i + 1]}
                        out[i : i + 1] = enc.run(None, one)[0]
                    except Exception:  # leave the image unchanged
                        failed.append(i)
        if failed:
            self._warn_once(
                "raised", f"rivagan: the encoder failed on {len(failed)} image(s); returned them unchanged"
            )
        spread = (
            x.detach().float().flatten(2).std(dim=2).amax(dim=1)
        )  # b: the largest per-channel spatial std
        flat = int((spread < FLAT_STD).sum())
        if flat:
            self._warn_once(
                "flat",
                f"rivagan: {flat} near-flat image(s) (pixel std < 2/255): RivaGAN reads its watermark back "
                "unreliably from flat images (about 45-85 % of bits); see docs/baselines.md",
            )
        rgb = np.clip(out[:, ::-1, 0], -1.0, 1.0)  # b 3 h w, BGR -> RGB
        y = torch.from_numpy(np.ascontiguousarray(rgb)).to(torch.float32) * 0.5 + 0.5
        if failed:  # failed images: exactly the input (not its 8-bit rounding)
            y[failed] = x.detach().cpu().float()[failed]
        return y.to(device=x.device, dtype=x.dtype)

    def extract(self, y: Tensor) -> Tensor:
        """y: b 3 h w in [0,1] -> b 32 logits (decoder output - 0.52; > 0: bit 1; 0 rows: could not read)"""
        check_batch(self.name, y, None, self.nbits)
        _, dec = _sessions(self._providers)
        frames = self._frames(y)
        logits = np.zeros((len(frames), self.nbits), dtype=np.float32)
        failed = 0
        for s in range(0, len(frames), CHUNK):
            sl = slice(s, s + CHUNK)
            try:
                logits[sl] = dec.run(None, {"frame": frames[sl]})[0] - PACKAGE_THRESHOLD
            except Exception:
                for i in range(s, min(s + CHUNK, len(frames))):
                    try:
                        logits[i] = dec.run(None, {"frame": frames[i : i + 1]})[0][0] - PACKAGE_THRESHOLD
                    except Exception:  # zero logits = abstain
                        failed += 1
        if failed:
            self._warn_once(
                "extract", f"rivagan: the decoder failed on {failed} image(s); returned zero logits"
            )
        return torch.from_numpy(logits).to(y.device)
