"""Which methods and attacks of a plan can run here: weights installed, model folders present and loadable.

Why one function: the Ray driver decides this before dispatch (so a skip never depends on the node a unit lands
on) and ``wmbench validate`` reports it before a run, both with the messages the run itself would record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from wmbench.errors import SkipCell
from wmbench.suite import Plan


@dataclass
class Availability:
    """Skip reasons by method label and by attack index in ``plan.attacks`` (empty: everything can run)."""

    methods: dict[str, str] = field(default_factory=dict)
    attacks: dict[int, str] = field(default_factory=dict)


def probe_plan(plan: Plan) -> Availability:
    """Set up every method and run every method-free attack once on a small grey image; -> what would skip.

    Other exceptions of the probe are left to the real cells (a probe-size problem is not a missing model)."""
    from wmbench.registry import methods

    av = Availability()
    for mp in plan.methods:
        try:
            methods().get(mp.name)(**mp.params).setup(torch.device("cpu"))
        except SkipCell as e:
            av.methods[mp.label] = str(e)
    probe = torch.full((1, 3, 64, 64), 0.5)
    for i, ap in enumerate(plan.attacks):
        if ap.attack.needs_method:
            continue
        try:
            ap.attack.apply(probe, ap.strengths[0], gen=torch.Generator().manual_seed(0), cover=probe)
        except SkipCell as e:
            av.attacks[i] = str(e)
        except Exception:  # noqa: BLE001, S110 - see the docstring
            pass
    return av
