"""The units of work a run is cut into, as plain picklable data (no live plugins, generators or consoles).

Why: the same unit must run in this process or on a Ray worker on another machine. A unit is one method on one
shard of images: the worker embeds the shard once and runs every cell (attack × strength) still missing for it.
Its result carries rows, skips, errors, examples and timings back to the driver, the only writer of the folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from wmbench.store import CLEAN, part_key
from wmbench.suite import Plan


@dataclass(frozen=True)
class Shard:
    """Images ``start:stop`` of the run (in run order) and their ids."""

    index: int
    start: int
    stop: int
    ids: tuple[str, ...]

    @property
    def n(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class CellSpec:
    """One attack at one strength (``attack_index`` -1: the clean covers), identified across shards by ``cell``."""

    cell: str  # cell key (method, attack, strength) without the shard
    attack_index: int
    attack_label: str
    strength: float
    relative: float | None


@dataclass(frozen=True)
class MethodRef:
    """A method of the plan as data: the worker builds it from the registry."""

    label: str
    name: str
    params: dict[str, Any]


@dataclass
class Unit:
    """One method on one shard: the cells still to compute, and the stored quality metrics if a run kept them."""

    method: MethodRef
    shard: Shard
    cells: list[CellSpec]
    quality: pd.DataFrame | None = (
        None  # image_id, t_embed, psnr, ssim, … of an earlier run (never recomputed)
    )
    example_slots: list[int] = field(
        default_factory=list
    )  # run-order indices in this shard saved as examples

    def key(self, cell: CellSpec) -> str:
        return part_key(cell.cell, self.shard.index)

    @property
    def images_of_work(self) -> int:
        """Images this unit moves through the pipeline (embed + each cell), for the progress bar."""
        return self.shard.n * (1 + len(self.cells))


@dataclass
class CellResult:
    cell: CellSpec
    rows: pd.DataFrame | None = None
    skip: str | None = None
    error: dict | None = None


@dataclass
class UnitResult:
    """What a worker sends back for a unit; the driver writes it."""

    unit: Unit
    cells: list[CellResult] = field(default_factory=list)
    quality: pd.DataFrame | None = (
        None  # freshly computed per-image quality (stored so a resume never redoes it)
    )
    examples: list[tuple[str, Any]] = field(default_factory=list)  # (name relative to examples/, 3 h w uint8)
    timings: dict[str, float] = field(default_factory=dict)
    skip: str | None = None  # the method could not be set up here (every cell skipped)
    error: dict | None = None  # setup or embed failed (every cell of the unit lost, recorded)
    host: str = ""


def cells_of(plan: Plan, method: str) -> list[CellSpec]:
    """Every cell of one method in run order: the clean covers first, then attacks × strengths."""
    from wmbench.store import cell_key

    out = [CellSpec(cell_key(method, CLEAN, 0.0), -1, CLEAN, 0.0, None)]
    for i, ap in enumerate(plan.attacks):
        for s, rel in zip(ap.strengths, ap.relative, strict=True):
            out.append(CellSpec(cell_key(method, ap.label, s), i, ap.label, float(s), rel))
    return out


def shards_of(ids: list[str], shard_size: int) -> list[Shard]:
    """Consecutive shards of at most ``shard_size`` images, in run order."""
    return [
        Shard(j, s, min(s + shard_size, len(ids)), tuple(ids[s : s + shard_size]))
        for j, s in enumerate(range(0, len(ids), shard_size))
    ]
