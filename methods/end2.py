"""END² (Sun, Fang et al., AAAI'25): one encoder, two structurally identical decoders (teacher and student).

Why: real distortions (libjpeg, WebP, …) have no gradient.  A plain encoder–noise–decoder has to replace them by
a differentiable approximation (HiDDeN's JPEG-Mask) or pass them straight-through; END² instead never
differentiates through them:

* the teacher decodes the 8-bit watermarked image; the encoder's gradients come only through it;
* the student decodes a really distorted copy (drawn from the training noise pool, computed on a detached
  image: no gradient flows through the distortion, straight-through or otherwise);
* the student's intermediate vector is pulled towards the teacher's (cosine similarity on the hypersphere,
  teacher detached), so what the student needs to read distorted images shapes the shared representation;
* the decoders swap roles every ``swap_every`` steps (so the encoder is in turn trained through a decoder that has
  learnt to read distorted images) and the teacher follows the student by a momentum (EMA) update.

The backbone is ``hidden``'s (tiled message map, fully convolutional; see ``methods/hidden.py``) so the comparison
against the ``hidden`` baseline isolates END²'s training scheme.  The intermediate vector is the decoder's folded
feature map (``dec_channels × q × q``).  Evaluation averages teacher and student logits (``decode: mean``;
``teacher`` / ``student`` pick one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from wmbench.api import WmbenchError
from wmbench.params import Int, Num

from .hidden import Decoder, Hidden, NoDiscriminatorParams


def _quantize_st(y: Tensor) -> Tensor:
    """8-bit rounding with an identity gradient.  b 3 h w -> b 3 h w"""
    q = torch.round(y.clamp(0, 1) * 255.0) / 255.0
    return y + (q - y).detach()


class End2(Hidden):
    """END² dual-decoder watermark on the ``hidden`` backbone (module docstring).

    Params: those of ``hidden`` (architecture, ``checkpoint``, ``weights`` default "end2", ``init``, ``seed``,
    ``strength``) plus ``decode`` (mean|teacher|student, default mean), and for training ``swap_every``
    (default 1: swap each batch, as in the paper) and ``momentum`` (EMA of the teacher towards the student after
    each step, default 0.999; 1 disables it).
    """

    name = "end2"
    description = "END² dual-decoder watermark (teacher/student, real distortions, no gradient through them)"
    loss_weights: ClassVar[dict[str, float]] = {"message": 1.0, "image": 0.7, "student": 1.0, "align": 0.1}
    _state_attrs: ClassVar[tuple[str, ...]] = ("enc", "dec", "dec_s")
    accepts_checkpoints: ClassVar[tuple[str, ...]] = ("end2",)

    class Params(NoDiscriminatorParams):
        decode: Literal["mean", "teacher", "student"] = Field(
            "mean", description="which decoder(s) read the bits"
        )
        swap_every: int = Int(1, ge=0, le=1_000_000, description="training: swap teacher/student (0 = never)")
        momentum: float = Num(0.999, ge=0, le=1, description="training: the student's EMA momentum")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        decode, swap_every, momentum = self.p.decode, self.p.swap_every, self.p.momentum
        self.decode_mode, self.swap_every, self.momentum = decode, swap_every, momentum
        self.params.update(
            {
                **({"decode": decode} if decode != "mean" else {}),
                **({"swap_every": swap_every} if swap_every != 1 else {}),
                **({"momentum": self.momentum} if self.momentum != 0.999 else {}),
            }
        )
        self.dec_s: Decoder | None = None
        self._steps = 0

    def _build(self) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.enc, self.dec, self.dec_s = self._make_nets()
            self.disc = None

    def _make_nets(self) -> tuple[Any, Decoder, Decoder]:
        from .hidden import Encoder

        return Encoder(self.arch), Decoder(self.arch), Decoder(self.arch)

    def _weight_nets(self) -> dict[str, nn.Module]:
        enc, dec = self._ready()
        if self.dec_s is None:
            raise WmbenchError("method 'end2': call setup(device) before embed/extract")
        return {"encoder": enc, "decoder": dec, "decoder_student": self.dec_s}

    def _decoders(self) -> list[tuple[nn.Module, float]]:
        """Teacher, student, or both at weight 0.5 (``decode``)."""
        _, dec = self._ready()
        assert self.dec_s is not None or self.decode_mode == "teacher"
        if self.decode_mode == "teacher":
            return [(dec, 1.0)]
        if self.decode_mode == "student":
            return [(self.dec_s, 1.0)]
        return [(dec, 0.5), (self.dec_s, 0.5)]

    def _decode(self, y: Tensor) -> Tensor:
        """Logits of the teacher, the student, or their mean.  b 3 h w -> b k"""
        if self.sync:
            return self._synced(y)
        _, dec = self._ready()
        ws = self.arch["work_size"]
        if ws is not None:
            from .hidden import _resize

            y = _resize(y, (ws, ws))
        if self.decode_mode == "teacher":
            return dec(y)
        assert self.dec_s is not None
        if self.decode_mode == "student":
            return self.dec_s(y)
        return 0.5 * (dec(y) + self.dec_s(y))

    # ------------------------------------------------------------------------------------------ training
    def training_state(self) -> dict[str, Any]:
        return {**super().training_state(), "steps": self._steps}

    def load_training_state(self, state: dict[str, Any]) -> None:
        super().load_training_state(state)
        self._steps = int(state.get("steps", 0))

    def train_step(self, batch: Tensor, noise: Callable[[Tensor, Tensor], Tensor]) -> dict[str, float]:
        """One END² step on covers b 3 h w.  ``noise(wm, cover)`` is called on a DETACHED watermarked image and
        its output is detached again: the student never passes a gradient through a distortion."""
        t = self._tstate()
        enc, teacher = self._ready()
        student = self.dec_s
        assert student is not None
        w = t["w"]
        for n in self._nets():
            n.train()
        x = batch.to(self.device)
        b = x.shape[0]
        msg = torch.randint(0, 2, (b, self.nbits), generator=t["gen"]).to(x)
        y = x + self._residual(x, msg * 2 - 1)  # b 3 h w
        yq = _quantize_st(y)  # the teacher reads the 8-bit image; its gradient reaches the encoder
        with torch.no_grad():
            distorted = noise(y.detach(), x).detach()  # b 3 h w, real (non-differentiable) distortion
        v_t = teacher.vector(yq)
        v_s = student.vector(distorted)
        logit_t, logit_s = teacher.head(v_t), student.head(v_s)
        l_msg = F.binary_cross_entropy_with_logits(logit_t, msg)
        l_stu = F.binary_cross_entropy_with_logits(logit_s, msg)
        l_align = (1.0 - F.cosine_similarity(v_s, v_t.detach(), dim=1)).mean()
        l_img = F.mse_loss(y, x)
        loss = w["message"] * l_msg + w["student"] * l_stu + w["align"] * l_align + w["image"] * l_img
        t["opt"].zero_grad(set_to_none=True)
        loss.backward()
        t["opt"].step()
        self._steps += 1
        with torch.no_grad():
            if self.momentum < 1.0:  # teacher <- EMA towards the student
                for pt, ps in zip(teacher.parameters(), student.parameters(), strict=True):
                    pt.lerp_(ps, 1.0 - self.momentum)
            if self.swap_every and self._steps % self.swap_every == 0:
                self.dec, self.dec_s = student, teacher
            mse = F.mse_loss(y.clamp(0, 1), x).clamp_min(1e-10)
            return {
                "loss": float(loss),
                "message_loss": float(l_msg),
                "student_loss": float(l_stu),
                "align_loss": float(l_align),
                "image_loss": float(l_img),
                "bit_acc": float(((logit_t > 0).float() == msg).float().mean()),
                "student_bit_acc": float(((logit_s > 0).float() == msg).float().mean()),
                "psnr": float(-10 * torch.log10(mse)),
            }
