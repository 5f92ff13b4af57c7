"""Plugins used only by the tests: a fast spread-spectrum method and a slow attack (for kill/resume tests).

They are registered into the live registries by ``register()`` (the way an outside package's plugin would be),
so runner tests do not depend on the speed of the real baselines.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from wmbench.api import Attack, Method, SkipCell
from wmbench.registry import attacks, methods


class SpreadSpectrum(Method):
    """Adds ±amp·P_j per bit (fixed random ±1 patterns); extracts by correlation with each pattern."""

    name = "test_ss"
    description = "test-only additive spread-spectrum watermark"
    differentiable_extract = True

    def __init__(self, nbits: int = 16, amp: float = 6.0) -> None:
        self.nbits, self.amp = int(nbits), float(amp)
        self.params = {"nbits": self.nbits, "amp": self.amp}
        self.device = torch.device("cpu")

    def _patterns(self, h: int, w: int) -> Tensor:  # k h w
        g = torch.Generator().manual_seed(1234)
        return (torch.randint(0, 2, (self.nbits, h, w), generator=g).float() * 2 - 1).to(self.device)

    def embed(self, x: Tensor, msg: Tensor) -> Tensor:
        p = self._patterns(*x.shape[-2:])
        sign = msg * 2 - 1  # b k
        delta = torch.einsum("bk,khw->bhw", sign, p) / self.nbits**0.5
        return (x + self.amp / 255.0 * delta[:, None]).clamp(0, 1)

    def extract(self, y: Tensor) -> Tensor:
        p = self._patterns(*y.shape[-2:])
        z = y.mean(1) - y.mean(dim=(1, 2, 3))[:, None, None]
        return torch.einsum("bhw,khw->bk", z, p) * 255.0 / (y.shape[-1] * y.shape[-2]) ** 0.5


class SlowBlur(Attack):
    """A box blur that sleeps, so a test can kill a run in the middle."""

    name = "test_slow"
    unit = "seconds of sleep"
    differentiable = True
    default_strengths = (0.2,)
    strength_range = (0.0, 1.0)

    def apply(self, x, strength, *, gen, method=None, cover=None):
        time.sleep(float(strength))
        return torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class StatBlur(SlowBlur):
    """A blur that reports a per-image stat (as compressai reports bpp), without sleeping."""

    name = "test_stat"

    def apply(self, x, strength, *, gen, method=None, cover=None):
        self.last_stats = {"mean_in": x.flatten(1).mean(1), "ignored_scalar": torch.tensor(1.0)}
        return torch.nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class NoWeights(SpreadSpectrum):
    """A method whose weights are never installed: every cell of it is skipped."""

    name = "test_noweights"

    def setup(self, device):
        raise SkipCell("weights file nowhere.safetensors is not installed")


def register() -> None:
    if "test_stat" not in attacks():
        attacks().register("test_stat", StatBlur)
    if "test_ss" not in methods():
        methods().register("test_ss", SpreadSpectrum)
    if "test_noweights" not in methods():
        methods().register("test_noweights", NoWeights)
    if "test_slow" not in attacks():
        attacks().register("test_slow", SlowBlur)
