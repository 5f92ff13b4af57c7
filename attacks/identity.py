"""The no-op attack: every suite measures the clean (watermarked, 8-bit) images through it."""

from __future__ import annotations

from torch import Tensor

from wmbench.api import Attack, Method
from wmbench.rng import Gen


class Identity(Attack):
    """Returns the input unchanged; the baseline row of every result table."""

    name = "identity"
    description = "no distortion (baseline)"
    unit = "none"
    differentiable = True
    default_strengths = (0.0,)
    strength_range = (0.0, 0.0)

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        return x  # b 3 h w
