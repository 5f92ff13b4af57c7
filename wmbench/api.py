"""The contracts of wmbench, and nothing else: Method, Attack and image-metric registration.

Conventions every plugin follows (the runner relies on them):
  * images are float tensors in [0, 1], shape ``b 3 h w``, on the method's device;
  * messages are {0, 1} float tensors, shape ``b k``;
  * ``extract`` returns logits ``b k``; a bit reads as 1 when its logit is > 0;
  * watermarked images are quantised to 8 bits by the runner before any attack.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel
from torch import Tensor

from wmbench.errors import SkipCell, WmbenchError
from wmbench.params import parse_params
from wmbench.rng import Gen

__all__ = [
    "Attack",
    "BitMetric",
    "ImageMetric",
    "Method",
    "SkipCell",
    "TrainableMethod",
    "TrainingHooks",
    "WmbenchError",
    "params_fingerprint",
    "quantize_8bit",
]


def quantize_8bit(x: Tensor) -> Tensor:
    """Round to the 8-bit grid, as saving a PNG would.  # b 3 h w -> b 3 h w

    In place on one fresh tensor (the same values as ``round(clamp(x) * 255) / 255``): it runs on every batch of
    every cell, and each temporary of an image batch is megabytes of fresh pages."""
    if x.requires_grad:
        return torch.round(x.clamp(0, 1) * 255.0) / 255.0
    return x.clamp(0, 1).mul_(255.0).round_().div_(255.0)


def params_fingerprint(name: str, params: dict[str, Any], extra: str = "") -> str:
    """Stable short hash of a plugin's name + params (+ e.g. a checkpoint hash), for cache keys."""
    blob = json.dumps({"name": name, "params": params, "extra": extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Method(ABC):
    """A watermarking method: embeds a k-bit message into images and extracts logits back.

    Subclasses take their suite ``params:`` as keyword arguments of ``__init__`` and declare them once in a nested
    ``Params`` model (wmbench/params.py); ``Method.__init__`` validates them through it into ``self.p``.  A method
    without a ``Params`` model takes no params (a third-party one may still check its own keyword arguments).
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: white-box attacks may backpropagate through ``extract`` (else they must use BPDA or a surrogate)
    differentiable_extract: ClassVar[bool] = False
    nbits: int = 32
    #: the declaration of the method's params (a pydantic model with extra="forbid"); None = no params
    Params: ClassVar[type[BaseModel] | None] = None

    def __init__(self, **params: Any) -> None:
        #: the validated params (an instance of ``Params``), or None for a method without params
        self.p: Any = parse_params(f"method {self.name!r}", type(self).Params, params)
        self.params: dict[str, Any] = {}
        self.device = torch.device("cpu")

    def setup(self, device: torch.device) -> None:
        """Load weights once and move them to ``device``."""
        self.device = device

    @abstractmethod
    def embed(self, x: Tensor, msg: Tensor) -> Tensor:
        """Watermark images.  x: b 3 h w in [0,1]; msg: b k in {0,1} -> b 3 h w in [0,1]"""

    @abstractmethod
    def extract(self, y: Tensor) -> Tensor:
        """Decode logits.  y: b 3 h w in [0,1] -> b k logits (bit = logit > 0)"""

    def fingerprint(self) -> str:
        """Identifies the exact embedding function (name, params, weights) for the watermark cache."""
        return params_fingerprint(self.name, getattr(self, "params", {}), self.weights_hash())

    def weights_hash(self) -> str:
        """Hash of the loaded weights; empty for methods without weights."""
        return ""


class TrainableMethod(Method):
    """A method whose networks ``wmbench train`` can fit."""

    @abstractmethod
    def train_step(self, batch: Tensor, noise: Callable[[Tensor, Tensor], Tensor]) -> dict[str, float]:
        """One optimisation step on a batch (b 3 h w); ``noise(wm, cover)`` applies a training distortion."""


class TrainingHooks:
    """Shared training plumbing for models ``wmbench train`` fits (methods and attack models alike).

    ``begin_training`` stores ``self._train = {"opt": ..., "opt_d": ... (optional), "gen": ..., "w": ...}``;
    ``set_schedule`` then sets every param group's lr to ``lr × group.get("lr_scale", 1)`` (a group may carry its
    own scale, e.g. SpecGuard's encoder) and the loss weights the next steps use.
    """

    name: ClassVar[str]
    loss_weights: ClassVar[dict[str, float]] = {}
    _train: dict[str, Any] | None = None

    def _tstate(self) -> dict[str, Any]:
        if self._train is None:
            raise WmbenchError(f"{self.name!r}: call begin_training() before training")
        return self._train

    def set_schedule(self, *, lr: float, loss_weights: dict[str, float]) -> None:
        """Learning rate and loss weights for the next steps (the trainer's warm-up, decay and quality target)."""
        t = self._tstate()
        for key in ("opt", "opt_d"):
            opt = t.get(key)
            if opt is not None:
                for g in opt.param_groups:
                    g["lr"] = lr * g.get("lr_scale", 1.0)
        t["w"] = {**self.loss_weights, **loss_weights}


class Attack(ABC):
    """A transformation of watermarked images, parametrised by a scalar ``strength`` in a canonical unit.

    ``strength_range`` maps a relative strength r in [0, 1] (WAVES-style; 0 = weakest, 1 = strongest) linearly
    onto the canonical unit: ``lo + r * (hi - lo)``.  ``differentiable`` is a claim the contract tests verify.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    unit: ClassVar[str] = "none"
    differentiable: ClassVar[bool] = False
    #: not differentiable itself, but ``forward_st`` is a differentiable stand-in (a codec with straight-through
    #: rounding, a frozen VAE) rather than the identity gradient
    stand_in_gradient: ClassVar[bool] = False
    #: False when ``forward_st`` refuses (attacks on a method's decoder, e.g. PGD): no training form at all
    training_form: ClassVar[bool] = True
    needs_method: ClassVar[bool] = False
    needs_cover: ClassVar[bool] = False
    integer_strength: ClassVar[bool] = False
    default_strengths: ClassVar[tuple[float, ...]] = ()
    strength_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    family: ClassVar[str] = "distortion"
    #: which way is good for the watermark: "removal" (a high bit accuracy after the attack = robust) or
    #: "forgery" (a high bit accuracy = the forgery worked); rankings never average the two
    goal: ClassVar[str] = "removal"
    #: the declaration of the attack's params (a pydantic model with extra="forbid"); None = no params
    Params: ClassVar[type[BaseModel] | None] = None

    def __init__(self, **params: Any) -> None:
        #: the validated params (an instance of ``Params``), or None for an attack without params
        self.p: Any = parse_params(f"attack {self.name!r}", type(self).Params, params)
        self.params: dict[str, Any] = {}

    @abstractmethod
    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        """Attack a batch.  x: b 3 h w in [0,1] -> b 3 h w in [0,1] (same shape)."""

    def check_strength(self, strength: float) -> None:
        """Refuse a strength this attack cannot run, with the message ``apply`` gives (WmbenchError).

        Why: attacks that load models are too costly to probe with ``apply``; ``validate`` calls this instead, so
        it reports what the run would.  Attacks whose ``apply`` checks before loading anything override it."""
        return None

    def forward_st(self, x: Tensor, strength: float, *, gen: Gen, cover: Tensor | None = None) -> Tensor:
        """Training form: the attack itself when differentiable, else straight-through (identity gradient)."""
        if self.differentiable:
            return self.apply(x, strength, gen=gen, cover=cover)
        with torch.no_grad():
            y = self.apply(x.detach(), strength, gen=gen, cover=cover)
        return x + (y - x).detach()

    @classmethod
    def from_relative(cls, r: float) -> float:
        """Map a relative strength in [0,1] onto the canonical unit."""
        if not 0.0 <= r <= 1.0:
            raise WmbenchError(f"attack {cls.name!r}: relative strength {r} is outside [0, 1]")
        lo, hi = cls.strength_range
        v = (1.0 - r) * lo + r * hi  # exact at both ends
        return float(round(v)) if cls.integer_strength else float(v)

    def label(self) -> str:
        return self.name


@dataclass(frozen=True)
class ImageMetric:
    """A per-sample full-reference image metric ``fn(ref, test) -> b``, both ``b 3 h w`` in [0,1]."""

    name: str
    fn: Callable[[Tensor, Tensor], Tensor]
    higher_is_better: bool
    description: str = ""


@dataclass(frozen=True)
class BitMetric:
    """A per-sample metric of decoded logits against the embedded message (computed for every row)."""

    name: str
    higher_is_better: bool
    description: str = ""
