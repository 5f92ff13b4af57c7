"""Suites: YAML validated with pydantic (unknown keys are errors), ``extends:`` includes, expansion to cells.

Why strict: a typo such as ``strenghts:`` silently falling back to defaults would produce a plausible but wrong
table; every error names the suite file and the key path, and unknown names get the closest registered ones.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from wmbench.api import Attack, Method, WmbenchError
from wmbench.registry import attacks as attack_registry
from wmbench.registry import methods as method_registry
from wmbench.validation import format_validation_error, read_yaml_mapping


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImagesSpec(_Strict):
    """Where the covers come from and their working size (square, ``size`` × ``size``)."""

    source: Literal["builtin", "folder"] = "builtin"
    count: int | None = Field(default=16, ge=1)
    size: int = Field(default=128, ge=16, le=4096)
    path: str | None = None
    split: Literal["eval", "train"] = "eval"

    @model_validator(mode="after")
    def _folder_needs_path(self) -> ImagesSpec:
        if self.source == "folder" and not self.path:
            raise ValueError("source 'folder' needs a 'path'")
        return self


class MethodSpec(_Strict):
    """A method entry; ``label`` tells apart two configurations of the same method."""

    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.label or self.name


class StepSpec(_Strict):
    """One step of a ``sequence:`` attack; the step without ``strength`` is swept by ``strengths``."""

    name: str
    strength: float | None = None
    params: dict[str, Any] = Field(default_factory=dict)


class AttackSpec(_Strict):
    """An attack entry: absolute ``strengths`` (canonical unit), or ``relative`` strengths in [0,1]."""

    name: str | None = None
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    strengths: list[float] | None = None
    relative: list[float] | None = None
    sequence: list[StepSpec] | None = None

    @model_validator(mode="after")
    def _check(self) -> AttackSpec:
        if self.sequence is not None:
            if self.name not in (None, "sequence"):
                raise ValueError("give either 'name' or 'sequence', not both")
            if not self.sequence:
                raise ValueError("'sequence' is empty")
        elif not self.name:
            raise ValueError("an attack needs 'name' (or 'sequence')")
        if self.strengths is not None and self.relative is not None:
            raise ValueError("give either 'strengths' or 'relative', not both")
        for r in self.relative or []:
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"relative strength {r} is outside [0, 1]")
        return self


class Suite(_Strict):
    """A benchmark suite: images × methods × attacks × strengths, metrics, seed and run settings."""

    name: str
    description: str = ""
    seed: int = 0
    images: ImagesSpec = Field(default_factory=ImagesSpec)
    methods: list[MethodSpec]
    attacks: list[AttackSpec] = Field(default_factory=list)
    metrics: list[str] = Field(default_factory=lambda: ["bit_acc", "psnr", "ssim", "ms_ssim", "lpips"])
    target_fpr: float = Field(default=1e-3, gt=0.0, lt=1.0)
    batch_size: int = Field(default=16, ge=1)
    #: images per unit of work (default 256): a run holds O(shard) images in memory
    shard_size: int | None = Field(default=None, ge=1)
    device: str = "auto"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\\0") or v.startswith("."):
            raise ValueError("must be a plain name (used as the results folder name)")
        return v

    @field_validator("methods")
    @classmethod
    def _some_methods(cls, v: list[MethodSpec]) -> list[MethodSpec]:
        if not v:
            raise ValueError("at least one method is needed")
        return v


# ----------------------------------------------------------------------------------------------- loading


def _deep_merge(base: dict, over: dict) -> dict:
    """Dicts merge key by key; any other value (lists included) in ``over`` replaces the base's."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in chain:
        raise WmbenchError(f"{path}: 'extends' loops back to itself ({' -> '.join(p.name for p in chain)})")
    if not path.is_file():
        raise WmbenchError(f"suite file not found: {path}")
    data = read_yaml_mapping(path, "a suite must be a mapping of keys (name, images, methods, attacks…)")
    parents = data.pop("extends", None)
    if parents is None:
        return data
    merged: dict = {}
    for p in [parents] if isinstance(parents, str) else list(parents):
        merged = _deep_merge(merged, _read_yaml(path.parent / p, (*chain, path)))
    return _deep_merge(merged, data)


def load_suite(path: str | Path) -> Suite:
    """Read, merge ``extends:``, validate (schema + registered names + params). Raises WmbenchError."""
    path = Path(path)
    data = _read_yaml(path)
    try:
        suite = Suite.model_validate(data)
    except ValidationError as e:
        raise WmbenchError(format_validation_error(path, e, Suite, "suite")) from None
    if suite.images.source == "folder" and suite.images.path:
        p = Path(suite.images.path).expanduser()
        suite.images.path = str(p if p.is_absolute() else (path.resolve().parent / p).resolve())
    expand(suite, where=str(path))  # checks names, params and strengths now rather than mid-run
    return suite


def suite_hash(suite: Suite) -> str:
    """Hash of everything that changes results: not the device, batch or shard size (values do not depend on them,
    so a resume may change them)."""
    d = suite.model_dump(mode="json")
    for k in ("device", "description", "batch_size", "shard_size"):
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------- expansion


@dataclass
class AttackPlan:
    """One attack entry resolved: the instance, its label and the absolute strengths to run."""

    label: str
    attack: Attack
    strengths: list[float]
    relative: list[float | None]


@dataclass
class MethodPlan:
    label: str
    name: str
    params: dict[str, Any]

    def build(self) -> Method:
        return method_registry().get(self.name)(**self.params)


@dataclass
class Plan:
    suite: Suite
    methods: list[MethodPlan]
    attacks: list[AttackPlan]

    @property
    def n_cells_per_method(self) -> int:
        return sum(len(a.strengths) for a in self.attacks)


def _build_attack(spec: AttackSpec, where: str) -> Attack:
    reg = attack_registry()
    name = "sequence" if spec.sequence is not None else str(spec.name)
    if name not in reg:
        raise WmbenchError(f"{where}: {reg.unknown_message(name)}")
    params = dict(spec.params)
    if spec.sequence is not None:
        for j, step in enumerate(spec.sequence):
            if step.name not in reg:
                raise WmbenchError(f"{where}.sequence[{j}].name: {reg.unknown_message(step.name)}")
        params["steps"] = [s.model_dump(exclude_none=True) for s in spec.sequence]
    try:
        return reg.get(name)(**params)
    except WmbenchError as e:
        raise WmbenchError(f"{where}: {e}") from None
    except TypeError as e:
        raise WmbenchError(f"{where}.params: {e}") from None


def expand(suite: Suite, where: str = "suite") -> Plan:
    """Resolve every entry to instances and absolute strengths; the identity attack always comes first."""
    from wmbench.metrics import metric_names

    known = metric_names()
    for j, m in enumerate(suite.metrics):
        if m not in known:
            close = difflib.get_close_matches(m, known, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise WmbenchError(
                f"{where}: metrics[{j}]: unknown metric {m!r}.{hint} Known: {', '.join(known)}."
            )
    mreg = method_registry()
    mplans: list[MethodPlan] = []
    for i, m in enumerate(suite.methods):
        if m.name not in mreg:
            raise WmbenchError(f"{where}: methods[{i}].name: {mreg.unknown_message(m.name)}")
        try:
            mreg.get(m.name)(**m.params)  # constructors are cheap; weights load in setup()
        except (WmbenchError, TypeError) as e:
            raise WmbenchError(f"{where}: methods[{i}].params: {e}") from None
        mplans.append(MethodPlan(m.key, m.name, dict(m.params)))
    _no_dupes([m.label for m in mplans], where, "methods", "method")

    specs = list(suite.attacks)
    if not any(s.name == "identity" for s in specs):
        specs.insert(0, AttackSpec(name="identity", strengths=[0.0]))
    aplans: list[AttackPlan] = []
    for i, s in enumerate(specs):
        w = f"{where}: attacks[{i}]" if s in suite.attacks else f"{where}: (implicit identity)"
        atk = _build_attack(s, w)
        if s.relative is not None:
            strengths = [atk.from_relative(r) for r in s.relative]
            rel: list[float | None] = list(s.relative)
        else:
            strengths = [float(v) for v in (s.strengths or atk.default_strengths)]
            rel = [None] * len(strengths)
        if not strengths:
            raise WmbenchError(f"{w}: no strengths given and attack {atk.name!r} has no defaults")
        if len(set(strengths)) != len(strengths):
            raise WmbenchError(f"{w}: repeated strengths {strengths}")
        aplans.append(AttackPlan(s.label or atk.label(), atk, strengths, rel))
    _no_dupes([a.label for a in aplans], where, "attacks", "attack")
    return Plan(suite, mplans, aplans)


def _no_dupes(labels: list[str], where: str, key: str, what: str) -> None:
    seen = {x for x in labels if labels.count(x) > 1}
    if seen:
        raise WmbenchError(
            f"{where}: {key}: {what} {sorted(seen)} appears twice; give each entry a distinct 'label'"
        )
