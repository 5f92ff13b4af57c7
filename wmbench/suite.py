"""Suites: YAML validated with pydantic (unknown keys are errors), ``extends:`` includes, expansion to cells.

Why strict: a typo such as ``strenghts:`` silently falling back to defaults would produce a plausible but wrong
table; every error names the suite file and the key path, and unknown names get the closest registered ones.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from wmbench.api import Attack, Method, WmbenchError
from wmbench.registry import attacks as attack_registry
from wmbench.registry import methods as method_registry
from wmbench.validation import format_validation_error, read_yaml_mapping


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ImagesSpec(_Strict):
    """Where the covers come from and their working size (square, ``size`` × ``size``)."""

    source: Literal["builtin", "folder"] = "builtin"
    count: int | None = Field(default=16, ge=1, le=10_000_000, strict=True)
    size: int = Field(default=128, ge=16, le=4096, strict=True)
    path: str | None = None
    split: Literal["eval", "train"] = "eval"
    #: at most this many of the images (fewer if the source has fewer): what ``--limit`` sets for a quick profile
    limit: int | None = Field(default=None, ge=1, strict=True)

    @model_validator(mode="after")
    def _folder_needs_path(self) -> ImagesSpec:
        if self.source == "folder" and not self.path:
            raise ValueError("source 'folder' needs a 'path'")
        if self.source == "builtin" and self.path is not None:
            raise ValueError(
                "'path' is only read for source 'folder' (the builtin source has no path); remove it"
            )
        return self


MAX_LABEL = 100  # names and labels end up in file names


def _number(v: Any) -> Any:
    """A YAML number (int or float), not a bool or a string that looks like one."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"must be a number, got {v!r}")
    return v


Num = Annotated[float, BeforeValidator(_number)]


def _check_label(v: str | None) -> str | None:
    if v is None:
        return v
    if not v.strip() or len(v) > MAX_LABEL or any(ord(c) < 32 for c in v):
        raise ValueError(f"must be 1 to {MAX_LABEL} printable characters")
    return v


def _check_strengths(v: list[float] | None) -> list[float] | None:
    if v is None:
        return v
    if not v:
        raise ValueError(
            "is empty; give at least one strength, or leave the key out for the attack's defaults"
        )
    for x in v:
        if not math.isfinite(x):
            raise ValueError(f"strength {x} is not a finite number")
    return v


class MethodSpec(_Strict):
    """A method entry; ``label`` tells apart two configurations of the same method."""

    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    _label = field_validator("label")(classmethod(lambda cls, v: _check_label(v)))

    @property
    def key(self) -> str:
        return self.label or self.name


class StepSpec(_Strict):
    """One step of a ``sequence:`` attack; the step without ``strength`` is swept by ``strengths``."""

    name: str
    strength: Num | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("strength")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        return v if v is None else _check_strengths([v])[0]  # type: ignore[index]


class AttackSpec(_Strict):
    """An attack entry: absolute ``strengths`` (canonical unit), or ``relative`` strengths in [0,1]."""

    name: str | None = None
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    strengths: list[Num] | None = None
    relative: list[Num] | None = None
    sequence: list[StepSpec] | None = None

    _label = field_validator("label")(classmethod(lambda cls, v: _check_label(v)))
    _strengths = field_validator("strengths", "relative")(classmethod(lambda cls, v: _check_strengths(v)))

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
    seed: int = Field(default=0, ge=0, lt=2**63, strict=True)
    images: ImagesSpec = Field(default_factory=ImagesSpec)
    methods: list[MethodSpec]
    attacks: list[AttackSpec] = Field(default_factory=list)
    metrics: list[str] = Field(default_factory=lambda: ["bit_acc", "psnr", "ssim", "ms_ssim", "lpips"])
    target_fpr: Num = Field(default=1e-3, gt=0.0, lt=1.0)
    batch_size: int = Field(default=16, ge=1, le=100_000, strict=True)
    #: images per unit of work (default 256): a run holds O(shard) images in memory
    shard_size: int | None = Field(default=None, ge=1, le=10_000_000, strict=True)
    device: str = "auto"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\\0") or v.startswith(".") or len(v) > MAX_LABEL:
            raise ValueError(
                f"must be a plain name of at most {MAX_LABEL} characters (the results folder's name)"
            )
        return v

    @field_validator("metrics")
    @classmethod
    def _no_repeated_metrics(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"{sorted({m for m in v if v.count(m) > 1})} listed twice")
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
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) and p for p in parents):
        raise WmbenchError(f"{path}: extends: must be a file name or a list of file names, got {parents!r}")
    merged: dict = {}
    for p in parents:
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
        if not Path(suite.images.path).is_dir():
            raise WmbenchError(
                f"{path}: images.path: {suite.images.path} is not a folder (paths are relative to the suite file); "
                "point it at a folder of images"
            )
    expand(suite, where=str(path), probe=True)  # checks names, params and strengths now rather than mid-run
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


def expand(suite: Suite, where: str = "suite", probe: bool = False) -> Plan:
    """Resolve every entry to instances and absolute strengths; the identity attack always comes first.

    ``probe``: also run each plain distortion once per strength on a small grey image, so a strength the attack
    refuses is reported now, with the attack's own message, instead of mid-run (``validate`` and ``run`` do)."""
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

    specs: list[tuple[str, AttackSpec]] = [(f"{where}: attacks[{i}]", s) for i, s in enumerate(suite.attacks)]
    if not any(s.name == "identity" for s in suite.attacks):
        specs.insert(0, (f"{where}: (implicit identity)", AttackSpec(name="identity", strengths=[0.0])))
    aplans: list[AttackPlan] = []
    for w, s in specs:
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
        if probe:
            _probe_strengths(atk, strengths, f"{w}.{'relative' if s.relative is not None else 'strengths'}")
        aplans.append(AttackPlan(s.label or atk.label(), atk, strengths, rel))
    _no_dupes([a.label for a in aplans], where, "attacks", "attack")
    return Plan(suite, mplans, aplans)


def _probe_strengths(atk: Attack, strengths: list[float], where: str) -> None:
    """Each strength through the attack's own ``check_strength``, and a plain distortion also run once on a 64²
    grey image: a strength the run would refuse becomes a load-time error with the run's message."""
    for j, v in enumerate(strengths):
        try:
            atk.check_strength(v)
        except WmbenchError as e:
            raise WmbenchError(f"{where}[{j}]: {e}") from None
    if atk.family != "distortion" or atk.needs_method:
        return  # models and white-box attacks: check_strength above; running them would cost too much
    import torch

    x = torch.full((1, 3, 64, 64), 0.5)
    for j, v in enumerate(strengths):
        try:
            atk.apply(x, v, gen=torch.Generator().manual_seed(0), cover=x)
        except WmbenchError as e:
            raise WmbenchError(f"{where}[{j}]: {e}") from None
        except Exception:
            return  # a failure that is no refusal of the strength: the run records it against its cell


def _no_dupes(labels: list[str], where: str, key: str, what: str) -> None:
    seen = {x for x in labels if labels.count(x) > 1}
    if seen:
        raise WmbenchError(
            f"{where}: {key}: {what} {sorted(seen)} appears twice; give each entry a distinct 'label'"
        )
