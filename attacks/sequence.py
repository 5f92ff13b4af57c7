"""A chain of registered attacks declared in a suite, e.g. blur then JPEG.

    - sequence:
        - {name: gaussian_blur, strength: 1.0}
        - {name: jpeg}            # no strength: swept by the entry's strengths / relative

At most one step omits ``strength``; it receives the cell's strength, and the instance takes that step's unit,
default strengths, range and rounding.  With every strength fixed, the unit is "preset" (one strength, 1.0).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from torch import Tensor

from wmbench.api import Attack, Method, WmbenchError
from wmbench.params import Num, PluginParams
from wmbench.registry import attacks
from wmbench.rng import Gen


class Step(PluginParams):
    """One step of the chain; the one without ``strength`` takes the cell's."""

    name: str = Field(min_length=1, max_length=100, description="a registered attack")
    strength: float | None = Num(None, description="fixed strength (absent: the swept step)")
    params: dict[str, Any] = Field(default_factory=dict, description="the attack's params")


def _build_step(j: int, step: Step) -> tuple[Attack, float | None]:
    where = f"attack 'sequence': params.steps[{j}]"
    if step.name == "sequence":
        raise WmbenchError(f"{where}: a sequence cannot contain a sequence; list its steps here instead")
    if step.name not in attacks():
        raise WmbenchError(f"{where}.name: {attacks().unknown_message(step.name)}")
    try:
        atk = attacks().get(step.name)(**step.params)
    except WmbenchError as e:
        raise WmbenchError(f"{where}: {e}") from None
    return atk, step.strength


def _fmt(atk: Attack, s: float) -> str:
    return str(int(round(s))) if atk.integer_strength else repr(float(s))


class Sequence(Attack):
    """Applies its steps in order, sharing one generator (so the chain is deterministic under a seed)."""

    name = "sequence"
    description = "a chain of attacks applied in order (one step may be swept)"
    unit = "preset"
    default_strengths = (1.0,)
    strength_range = (1.0, 1.0)

    class Params(PluginParams):
        steps: list[Step] = Field(min_length=1, max_length=64, description="the attacks, in order")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        steps: list[Step] = self.p.steps
        built = [_build_step(j, s) for j, s in enumerate(steps)]
        free = [j for j, (_, s) in enumerate(built) if s is None]
        if len(free) > 1:
            names = ", ".join(f"steps[{j}] ({built[j][0].name})" for j in free)
            raise WmbenchError(
                f"attack 'sequence': only one step may omit 'strength' (it is the swept one); {names} do"
            )
        self.steps: list[tuple[Attack, float | None]] = built
        self.free: int | None = free[0] if free else None
        self.params = {"steps": [s.model_dump(exclude_unset=True) for s in steps]}
        atks = [a for a, _ in built]
        self.differentiable = all(a.differentiable for a in atks)
        self.needs_cover = any(a.needs_cover for a in atks)
        self.needs_method = any(a.needs_method for a in atks)
        families = {a.family for a in atks}
        self.family = families.pop() if len(families) == 1 else "mixed"
        self.description = f"sequence: {self.label()}"
        if self.free is not None:
            a = atks[self.free]
            self.unit = a.unit
            self.default_strengths = tuple(a.default_strengths)
            self.strength_range = a.strength_range
            self.integer_strength = a.integer_strength

    def from_relative(self, r: float) -> float:
        """The swept step's mapping (instance values, unlike the base classmethod); 1.0 for a preset."""
        if not 0.0 <= r <= 1.0:
            raise WmbenchError(f"attack 'sequence' ({self.label()}): relative strength {r} is outside [0, 1]")
        if self.free is None:
            return 1.0
        return self.steps[self.free][0].from_relative(r)

    def check_strength(self, strength: float) -> None:
        for atk, s in self._strengths(strength):
            atk.check_strength(s)

    def _strengths(self, strength: float) -> list[tuple[Attack, float]]:
        return [(a, strength if s is None else s) for a, s in self.steps]

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        for atk, s in self._strengths(strength):
            x = atk.apply(x, s, gen=gen, method=method, cover=cover)  # b 3 h w
        return x

    def forward_st(self, x: Tensor, strength: float, *, gen: Gen, cover: Tensor | None = None) -> Tensor:
        """Each step's own training form: differentiable steps stay exact, the others pass gradients through."""
        for atk, s in self._strengths(strength):
            x = atk.forward_st(x, s, gen=gen, cover=cover)
        return x

    def label(self) -> str:
        return "+".join(a.name if s is None else f"{a.name}({_fmt(a, s)})" for a, s in self.steps)
