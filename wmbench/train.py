"""``wmbench train``: one seeded, resumable trainer for every learned model (methods now, attack models later).

A training config (YAML, validated like suites: unknown keys are errors naming the file and key path) names the
model (a registered method implementing the training hooks below, and its params), the data, the schedule, the
loss weights and the noise layers.  Noise layers come from the ATTACK registry: differentiable attacks are applied
as they are, the others straight-through (``Attack.forward_st``); the 8-bit rounding the runner applies before
every attack is applied straight-through first.

Why a warm-up: a message decoder learns fastest with no noise and a weak image loss; a strong image loss from step
0 keeps the residual too small to carry a signal (REFERENCE §1).  So for ``warmup.steps`` the noise is off and
each loss named in ``warmup.scale`` is multiplied by its factor; over ``warmup.ramp_steps`` the factors rise
linearly to 1 and the probability of applying a noise layer to a batch rises from 0 to 1.

Outputs in ``out_dir``: ``checkpoint.pt`` (every ``checkpoint_every`` steps: nets, optimiser states, RNG states;
``resume=True`` continues from it bit-exactly), ``log.jsonl`` (one row per ``log_every`` steps: means of the
step stats; rows with ``"kind": "eval"`` for evaluations), ``config.yaml`` (the config as used), and at the end
``<name>.safetensors`` (weights; metadata holds the architecture) + ``<name>.json`` (the card).

Hooks a trainable model provides besides ``TrainableMethod.train_step`` (see ``methods/hidden.py``):
``loss_weights`` (class dict: loss name -> default weight), ``begin_training(lr=, gen=)``,
``set_schedule(lr=, loss_weights=)``, ``training_state()`` / ``load_training_state(state)`` (torch.save-able:
tensors, numbers, dicts), ``export_weights() -> dict[str, Tensor]`` and ``architecture() -> dict``.
Attack models (``model.kind: attack``, e.g. a regeneration autoencoder) come from the attack registry and also
provide ``evaluate_model(images uint8 n 3 h w, batch_size) -> dict`` (what their card reports, e.g. PSNR, bpp)
and optionally ``eval_description``; ``train_stats`` (class tuple) names the stats ``train_step`` reports.
Diffusers models (``model.kind: diffusers``, names in ``DIFFUSERS_MODELS``: the latent-diffusion stack the
regeneration attacks load with ``from_pretrained``) have the same hooks plus ``save_pretrained(folder)``: their
output is the folder ``<name>/`` in diffusers' own layout with the card inside it (``<name>/wmbench_card.json``,
which lists every file's sha256) instead of ``<name>.safetensors`` + ``<name>.json``.

``quality_target`` steers the image-loss weight to a training PSNR (see ``QualityTarget``).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch import Tensor

from wmbench.api import Attack, WmbenchError, quantize_8bit
from wmbench.registry import attacks as attack_registry
from wmbench.registry import methods as method_registry
from wmbench.validation import format_validation_error, read_yaml_mapping

CONFIGS_PACKAGE = "wmbench.configs"
CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
#: the hooks train() calls on a model (beyond being constructible from params and ``setup(device)``)
HOOKS = (
    "loss_weights",
    "begin_training",
    "set_schedule",
    "train_step",
    "training_state",
    "load_training_state",
    "export_weights",
    "architecture",
)
#: trainable diffusers-format models (``model.kind: diffusers``): name -> "module:Class"
DIFFUSERS_MODELS = {
    "autoencoder_kl": "wmbench.attacks.latent_diffusion:VaeModel",
    "latent_unet": "wmbench.attacks.latent_diffusion:LatentUnetModel",
}
#: the card a diffusers-format output folder carries (next to its config.json / model_index-like subfolders)
FOLDER_CARD = "wmbench_card.json"
#: config keys that do not change the trained weights (a resumed run may change them, e.g. to train longer)
_NOT_HASHED = ("description", "steps", "log_every", "checkpoint_every", "eval", "device")


# ----------------------------------------------------------------------------------------------- config schema
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Strict):
    """The model to train: a registered name, its params, and optionally a checkpoint to start from."""

    kind: Literal["method", "attack", "diffusers"] = "method"
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    init_from: str | None = None


class DataSpec(_Strict):
    """Training images: built-in tiles (a split) or a folder, loaded at ``size``², random ``crop``² per sample."""

    source: Literal["builtin", "folder"] = "builtin"
    split: Literal["train", "eval"] = "train"
    path: str | None = None
    size: int = Field(default=64, ge=8, le=4096)
    crop: int | None = Field(default=None, ge=8)
    count: int | None = Field(default=None, ge=1)
    flip: bool = True

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        if self.source == "folder" and not self.path:
            raise ValueError("source 'folder' needs a 'path'")
        if self.crop is not None and self.crop > self.size:
            raise ValueError(f"crop {self.crop} is larger than size {self.size}")
        return self


class WarmupSpec(_Strict):
    """No noise and scaled losses for ``steps``, then a linear ramp over ``ramp_steps``."""

    steps: int = Field(default=0, ge=0)
    ramp_steps: int = Field(default=0, ge=0)
    scale: dict[str, float] = Field(default_factory=dict)


class NoiseLayerSpec(_Strict):
    """A registered attack used as a noise layer.  Strength: fixed, uniform in ``range``, or (neither) one of
    the attack's default strengths; ``weight``: relative chance of being the batch's layer."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    strength: float | None = None
    range: tuple[float, float] | None = None
    weight: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> NoiseLayerSpec:
        if self.strength is not None and self.range is not None:
            raise ValueError("give either 'strength' or 'range', not both")
        return self


class NoiseSpec(_Strict):
    """One layer (drawn per batch by weight) is applied to each batch once the warm-up allows."""

    quantize: bool = True
    layers: list[NoiseLayerSpec] = Field(default_factory=list)


class QualityTarget(_Strict):
    """Steer one loss weight (default ``image``) so that the training PSNR settles at ``psnr`` dB.

    Why: the weight that gives a wanted PSNR depends on the noise pool, the net and the data, and a fixed weight
    either leaves the image visibly marked or starves the message (REFERENCE §1).  Each step after the warm-up,
    ``log w += rate * (psnr - batch_psnr)`` (clamped to [``min_weight``, ``max_weight``]): a dual-ascent step on
    the constraint PSNR ≥ target.  The weight is part of the resumable state.
    """

    psnr: float = Field(gt=0, le=100)
    loss: str = "image"
    rate: float = Field(default=0.01, gt=0, le=1)
    min_weight: float = Field(default=1e-3, gt=0)
    max_weight: float = Field(default=1e4, gt=0)


class EvalSpec(_Strict):
    """Clean bit accuracy and PSNR of 8-bit watermarked images (the card uses ``count``; every ``every`` steps
    the log gets the same on the first ``every_count`` images; 0 = only at the end)."""

    split: Literal["eval", "train"] = "eval"
    size: int = Field(default=128, ge=8, le=4096)
    count: int = Field(default=64, ge=1)
    every: int = Field(default=0, ge=0)
    every_count: int = Field(default=16, ge=1)
    batch_size: int = Field(default=16, ge=1)


class TrainConfig(_Strict):
    """A training run; see the module docstring and ``wmbench/configs/hidden.yaml``."""

    name: str
    description: str = ""
    seed: int = 0
    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    steps: int = Field(ge=1)
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    lr_milestones: list[int] = Field(default_factory=list)
    lr_gamma: float = Field(default=0.1, gt=0)
    loss_weights: dict[str, float] = Field(default_factory=dict)
    warmup: WarmupSpec = Field(default_factory=WarmupSpec)
    quality_target: QualityTarget | None = None
    noise: NoiseSpec = Field(default_factory=NoiseSpec)
    log_every: int = Field(default=50, ge=1)
    checkpoint_every: int = Field(default=500, ge=1)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    device: str = "auto"

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if not self.name or any(c in self.name for c in "/\\\0") or self.name.startswith("."):
            raise ValueError("name must be a plain file stem (the output files are <name>.safetensors/.json)")
        return self


# ----------------------------------------------------------------------------------------------- loading
def packaged_configs() -> list[str]:
    """Names of the training configs shipped in ``wmbench/configs`` (``train(NAME, ...)`` accepts them)."""
    root = importlib.resources.files(CONFIGS_PACKAGE)
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def resolve_config(config: str | Path) -> Path:
    """A path to a YAML file, or the name of a packaged config (e.g. ``hidden``)."""
    p = Path(config).expanduser()
    if p.is_file():
        return p.resolve()
    name = str(config).removeprefix("wmbench/configs/").removesuffix(".yaml")
    if "/" not in name and "\\" not in name:  # a packaged config, by name or as a card records it
        res = importlib.resources.files(CONFIGS_PACKAGE) / f"{name}.yaml"
        if res.is_file():
            return Path(str(res))
    known = ", ".join(packaged_configs())
    raise WmbenchError(f"training config not found: {config} (not a file, nor a packaged config: {known})")


def load_train_config(config: str | Path) -> tuple[Path, TrainConfig]:
    """Read and validate a config (schema, registered names, params, loss names). Raises WmbenchError."""
    path = resolve_config(config)
    data = read_yaml_mapping(path, "a training config must be a mapping (name, model, data, steps, …)")
    try:
        cfg = TrainConfig.model_validate(data)
    except ValidationError as e:
        raise WmbenchError(format_validation_error(path, e, TrainConfig, "training config")) from None
    if cfg.data.source == "folder" and cfg.data.path:
        p = Path(cfg.data.path).expanduser()
        cfg.data.path = str(p if p.is_absolute() else (path.parent / p).resolve())
    if cfg.model.init_from:
        p = Path(cfg.model.init_from).expanduser()
        cfg.model.init_from = str(p if p.is_absolute() else (path.parent / p).resolve())
    _check_names(path, cfg)
    return path, cfg


def _model_registry(cfg: TrainConfig) -> Any:
    if cfg.model.kind == "diffusers":
        from wmbench.registry import Registry

        reg: Registry[Any] = Registry("diffusers model", "wmbench.diffusers_models")
        for k, v in DIFFUSERS_MODELS.items():
            reg.register(k, v)
        return reg
    return method_registry() if cfg.model.kind == "method" else attack_registry()


def _check_names(path: Path, cfg: TrainConfig) -> None:
    mreg = _model_registry(cfg)
    if cfg.model.name not in mreg:
        raise WmbenchError(f"{path}: model.name: {mreg.unknown_message(cfg.model.name)}")
    cls = mreg.get(cfg.model.name)
    missing = [h for h in HOOKS if not hasattr(cls, h)]
    if cfg.model.kind in ("attack", "diffusers") and not hasattr(cls, "evaluate_model"):
        missing.append("evaluate_model")
    if cfg.model.kind == "diffusers" and not hasattr(cls, "save_pretrained"):
        missing.append("save_pretrained")
    if missing:
        raise WmbenchError(
            f"{path}: model.name: {cfg.model.kind} {cfg.model.name!r} is not trainable "
            f"(lacks {', '.join(missing)})"
        )
    for k in ("init", "seed", "checkpoint"):
        if k in cfg.model.params:
            raise WmbenchError(
                f"{path}: model.params.{k}: set by the trainer (seed: top-level 'seed'; start weights: "
                "model.init_from)"
            )
    known = list(cls.loss_weights)
    qt = {cfg.quality_target.loss: 0} if cfg.quality_target else {}
    for where, keys in (
        ("loss_weights", cfg.loss_weights),
        ("warmup.scale", cfg.warmup.scale),
        ("quality_target.loss", qt),
    ):
        for k in keys:
            if k not in known:
                close = difflib.get_close_matches(k, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise WmbenchError(
                    f"{path}: {where}.{k}: unknown loss of {cfg.model.name!r}{hint}; known: {', '.join(known)}"
                )
    _build_noise(path, cfg)


# ----------------------------------------------------------------------------------------------- noise
@dataclass
class _Layer:
    attack: Attack
    spec: NoiseLayerSpec


def _build_noise(path: Path, cfg: TrainConfig) -> list[_Layer]:
    reg = attack_registry()
    out: list[_Layer] = []
    for i, spec in enumerate(cfg.noise.layers):
        where = f"{path}: noise.layers[{i}]"
        if spec.name not in reg:
            raise WmbenchError(f"{where}.name: {reg.unknown_message(spec.name)}")
        cls = reg.get(spec.name)
        if cls.needs_method:
            raise WmbenchError(
                f"{where}.name: attack {spec.name!r} needs a method; it cannot be a noise layer"
            )
        try:
            atk = cls(**spec.params)
        except (WmbenchError, TypeError) as e:
            raise WmbenchError(f"{where}.params: {e}") from None
        if spec.strength is None and spec.range is None and not cls.default_strengths:
            raise WmbenchError(
                f"{where}: attack {spec.name!r} has no default strengths; give strength or range"
            )
        x = torch.full((1, 3, 16, 16), 0.5)
        for s in _strengths(spec, cls):  # fail now, not at the first noisy step
            try:
                atk.apply(x, s, gen=torch.Generator().manual_seed(0), cover=x)
            except WmbenchError as e:
                raise WmbenchError(f"{where}: strength {s:g}: {e}") from None
        out.append(_Layer(atk, spec))
    return out


def _strengths(spec: NoiseLayerSpec, cls: type[Attack]) -> list[float]:
    if spec.strength is not None:
        return [spec.strength]
    if spec.range is not None:
        return list(spec.range)
    return list(cls.default_strengths)


def quantize_st(y: Tensor) -> Tensor:
    """8-bit rounding (with clamping) forward, identity gradient.  b 3 h w -> b 3 h w"""
    return y + (quantize_8bit(y) - y).detach()


class NoisePool:
    """``noise(wm, cover)``: 8-bit rounding, then with probability ``p`` one layer drawn by weight, its strength
    drawn from ``gen`` (every draw comes from ``gen``, so a seed and a step fix the result)."""

    def __init__(self, layers: list[_Layer], quantize: bool, gen: torch.Generator) -> None:
        self.layers, self.quantize, self.gen = layers, quantize, gen
        self.p = 1.0
        w = torch.tensor([lay.spec.weight for lay in layers], dtype=torch.float64)
        self.cum = (w.cumsum(0) / w.sum()).tolist() if layers else []

    def draw(self) -> tuple[_Layer, float] | None:
        """The layer and strength for the next batch, or None (no layer)."""
        if not self.layers or float(torch.rand((), generator=self.gen)) >= self.p:
            return None
        u = float(torch.rand((), generator=self.gen))
        lay = self.layers[min(i for i, c in enumerate(self.cum) if u < c or i == len(self.cum) - 1)]
        spec, cls = lay.spec, type(lay.attack)
        if spec.strength is not None:
            s = float(spec.strength)
        elif spec.range is not None:
            lo, hi = spec.range
            s = lo + (hi - lo) * float(torch.rand((), generator=self.gen))
            s = float(round(s)) if cls.integer_strength else s
        else:
            j = int(torch.randint(0, len(cls.default_strengths), (1,), generator=self.gen))
            s = float(cls.default_strengths[j])
        return lay, s

    def __call__(self, wm: Tensor, cover: Tensor) -> Tensor:  # b 3 h w, b 3 h w -> b 3 h w
        z = quantize_st(wm) if self.quantize else wm
        d = self.draw()
        if d is None:
            return z
        lay, s = d
        return lay.attack.forward_st(z, s, gen=self.gen, cover=cover)


# ----------------------------------------------------------------------------------------------- schedule
def schedule(
    cfg: TrainConfig, base_weights: dict[str, float], step: int
) -> tuple[float, dict[str, float], float]:
    """(lr, loss weights, noise probability) for the 0-based ``step``."""
    lr = cfg.lr * cfg.lr_gamma ** sum(step >= m for m in cfg.lr_milestones)
    w0, r = cfg.warmup.steps, cfg.warmup.ramp_steps
    a = 0.0 if step < w0 else (1.0 if step >= w0 + r else (step - w0) / r)
    weights = dict(base_weights)
    for k, s in cfg.warmup.scale.items():
        weights[k] = base_weights[k] * (s + (1.0 - s) * a)
    return lr, weights, a


# ----------------------------------------------------------------------------------------------- helpers
def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise WmbenchError(f"device: {e}") from None


def _device_words(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(dev)} (torch {torch.__version__})"
    return f"cpu: {platform.processor() or platform.machine()} (torch {torch.__version__}, {torch.get_num_threads()} threads)"


def _config_hash(cfg: TrainConfig) -> str:
    d = cfg.model_dump(mode="json")
    for k in _NOT_HASHED:
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _train_images(cfg: TrainConfig) -> tuple[Tensor, dict[str, Any]]:
    """-> n 3 size size uint8, the image set's info"""
    from wmbench.data import load_image_set

    d = cfg.data
    s = load_image_set(d.source, size=d.size, count=d.count, path=d.path, split=d.split)
    return s.images, s.info


def _eval_images(cfg: TrainConfig, count: int) -> tuple[Tensor, dict[str, Any]]:
    """Built-in tiles of the eval split (whatever the training data), so cards compare.  -> n 3 s s uint8, info"""
    from wmbench.data import load_image_set

    s = load_image_set("builtin", size=cfg.eval.size, count=count, split=cfg.eval.split)
    return s.images, s.info


def _sample(images: Tensor, cfg: TrainConfig, gen: torch.Generator) -> Tensor:
    """A random batch of random crops (and flips).  n 3 S S uint8 -> b 3 c c float in [0,1]"""
    b, size = cfg.batch_size, images.shape[-1]
    crop = cfg.data.crop or size
    idx = torch.randint(0, images.shape[0], (b,), generator=gen)
    oy = torch.randint(0, size - crop + 1, (b,), generator=gen)
    ox = torch.randint(0, size - crop + 1, (b,), generator=gen)
    flip = (
        torch.randint(0, 2, (b,), generator=gen).bool() if cfg.data.flip else torch.zeros(b, dtype=torch.bool)
    )
    out = torch.stack(
        [
            images[i, :, y : y + crop, x : x + crop]
            for i, y, x in zip(idx.tolist(), oy.tolist(), ox.tolist(), strict=True)
        ]
    )
    out[flip] = out[flip].flip(-1)
    return out.float() / 255.0


def evaluate(model: Any, images: Tensor, batch_size: int, seed: int = 0) -> dict[str, float]:
    """Clean bit accuracy and PSNR of 8-bit watermarked images.  images: n 3 h w uint8"""
    from wmbench.metrics import psnr

    dev = model.device
    gen = torch.Generator().manual_seed(seed)
    accs, psnrs = [], []
    with torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            x = images[i : i + batch_size].float().div(255.0).to(dev)
            msg = torch.randint(0, 2, (x.shape[0], model.nbits), generator=gen).float().to(dev)
            y = quantize_8bit(model.embed(x, msg))
            accs.append(((model.extract(y) > 0).float() == msg).float().mean(1).cpu())
            psnrs.append(psnr(x, y).cpu())
    acc, ps = torch.cat(accs), torch.cat(psnrs)
    return {
        "bit_acc": float(acc.mean()),
        "bit_acc_min": float(acc.min()),
        "psnr": float(ps.mean()),
        "psnr_min": float(ps.min()),
        "count": int(acc.numel()),
    }


def _evaluate(model: Any, images: Tensor, batch_size: int) -> dict[str, Any]:
    """The model's own evaluation (attack models: ``evaluate_model``), else clean bit accuracy and PSNR."""
    if hasattr(model, "evaluate_model"):
        return dict(model.evaluate_model(images, batch_size))
    return evaluate(model, images, batch_size)


def _probe_stats_keys(model: Any) -> set[str]:
    """Stat names a model's train_step reports (its ``train_stats`` class attribute; psnr assumed if absent)."""
    return set(getattr(model, "train_stats", ("psnr",)))


def _quality_step(qt: QualityTarget, qlog: float, base: float, stats: dict[str, float]) -> float:
    """One dual-ascent step on the quality-target weight's log multiplier (clamped to its bounds)."""
    qlog += qt.rate * (qt.psnr - stats["psnr"])
    lo, hi = math.log(qt.min_weight / base), math.log(qt.max_weight / base)
    return min(max(qlog, lo), hi)


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")


def train_means(path: Path) -> dict[str, float]:
    """Means of every training statistic over the whole run, from the log (rows weighted by the steps they cover):
    e.g. the fraction of steps on which a conditional update fired."""
    tot: dict[str, float] = {}
    last, n = 0, 0
    if not path.exists():
        return {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r.get("kind") != "train":
            continue
        span, last = r["step"] - last, r["step"]
        n += span
        for k, v in r.items():
            if k not in ("step", "kind", "elapsed_s") and isinstance(v, int | float):
                tot[k] = tot.get(k, 0.0) + v * span
    return {k: round(v / n, 6) for k, v in tot.items()} if n else {}


def _truncate_log(path: Path, step: int) -> None:
    """Keep the rows up to ``step`` (a resumed run rewrites what followed the checkpoint)."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def _build_model(cfg: TrainConfig, dev: torch.device) -> Any:
    cls = _model_registry(cfg).get(cfg.model.name)
    params = dict(cfg.model.params)
    if cfg.model.init_from:
        params["checkpoint"] = cfg.model.init_from
    else:
        params.update(init="random", seed=cfg.seed)
    model = cls(**params)
    model.setup(dev)
    return model


def _command() -> str:
    argv = list(sys.argv)
    if argv:
        argv[0] = Path(argv[0]).name
    return shlex.join(argv)


def _config_ref(path: Path) -> str:
    """Package-relative for a shipped config (reproducible on any install), else the absolute path."""
    root = Path(str(importlib.resources.files(CONFIGS_PACKAGE))).resolve()
    try:
        return f"wmbench/configs/{path.resolve().relative_to(root)}"
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------------- train
def train(
    config_path: str | Path,
    out_dir: str | Path,
    resume: bool = False,
    device: str | None = None,
    max_steps: int | None = None,
) -> Path:
    """Train the config's model; returns ``<out_dir>/<name>.safetensors`` (diffusers models: the folder ``<name>/``).

    ``config_path``: a YAML file or a packaged config name (``hidden``, ``tiny``).  ``resume``: continue from
    ``out_dir/checkpoint.pt`` (bit-exact; starts fresh if there is none); without it, an ``out_dir`` that already
    holds a checkpoint is an error.  ``device``: overrides the config's (``auto`` = cuda if available).
    ``max_steps``: stop at this global step (< the config's ``steps``) after checkpointing and writing the
    weights and card of the model as it stands; a later ``resume=True`` goes on to ``steps``.
    """
    path, cfg = load_train_config(config_path)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / CHECKPOINT, out / LOG
    if ckpt_path.exists() and not resume:
        raise WmbenchError(
            f"{out} already holds a training run ({ckpt_path.name}); resume it (--resume) or use another folder"
        )
    if max_steps is not None and max_steps < 1:
        raise WmbenchError(f"max_steps must be >= 1, got {max_steps}")
    stop = min(cfg.steps, max_steps) if max_steps is not None else cfg.steps
    dev = _device(device or cfg.device)
    chash = _config_hash(cfg)

    torch.manual_seed(cfg.seed)
    gen_data = torch.Generator().manual_seed(cfg.seed)
    gen_noise = torch.Generator().manual_seed(cfg.seed + 1_000_003)
    gen_model = torch.Generator().manual_seed(cfg.seed + 2_000_003)
    images, data_info = _train_images(cfg)
    model = _build_model(cfg, dev)
    model.begin_training(lr=cfg.lr, gen=gen_model)
    base_w = {**type(model).loss_weights, **cfg.loss_weights}
    noise = NoisePool(_build_noise(path, cfg), cfg.noise.quantize, gen_noise)

    step, elapsed, acc, n_acc = 0, 0.0, {}, 0
    qlog = 0.0  # log multiplier of the quality-target loss weight (see QualityTarget)
    commands = [_command()]
    if resume and ckpt_path.exists():
        st = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if st["config_hash"] != chash:
            raise WmbenchError(
                f"{ckpt_path}: written with a different config (hash {st['config_hash']} != {chash}); only "
                f"{', '.join(_NOT_HASHED)} may change between runs; start a new output folder"
            )
        model.load_training_state(st["model"])
        gen_data.set_state(st["gens"]["data"])
        gen_noise.set_state(st["gens"]["noise"])
        gen_model.set_state(st["gens"]["model"])
        torch.set_rng_state(st["gens"]["torch"])
        step, elapsed, acc, n_acc = st["step"], st["elapsed_s"], st["acc"], st["n_acc"]
        qlog = float(st.get("qlog", 0.0))
        commands = [*st["commands"], _command()]
        _truncate_log(log_path, step)
    elif log_path.exists():
        log_path.unlink()
    (out / "config.yaml").write_text(path.read_text())

    eval_small = _eval_images(cfg, cfg.eval.every_count)[0] if cfg.eval.every else None
    qt = cfg.quality_target
    if qt is not None and "psnr" not in _probe_stats_keys(model):
        raise WmbenchError(f"{path}: quality_target: model {cfg.model.name!r} reports no 'psnr' per step")

    def save_checkpoint() -> None:
        _save_atomic(
            {
                "step": step,
                "config_hash": chash,
                "elapsed_s": elapsed,
                "acc": acc,
                "n_acc": n_acc,
                "qlog": qlog,
                "commands": commands,
                "model": model.training_state(),
                "gens": {
                    "data": gen_data.get_state(),
                    "noise": gen_noise.get_state(),
                    "model": gen_model.get_state(),
                    "torch": torch.get_rng_state(),
                },
            },
            ckpt_path,
        )

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    t_last = time.perf_counter()
    with Progress(
        TextColumn(f"[bold]train {cfg.name}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
        transient=False,
    ) as bar:
        task = bar.add_task("train", total=stop, completed=step, stats="")
        while step < stop:
            lr, weights, p = schedule(cfg, base_w, step)
            if qt is not None:
                weights[qt.loss] *= math.exp(qlog)
            model.set_schedule(lr=lr, loss_weights=weights)
            noise.p = p
            stats = model.train_step(_sample(images, cfg, gen_data), noise)
            if not all(math.isfinite(v) for v in stats.values()):
                raise WmbenchError(
                    f"training diverged at step {step + 1}: {stats}; lower lr or check the config"
                )
            if qt is not None and step >= cfg.warmup.steps:
                qlog = _quality_step(qt, qlog, base_w[qt.loss], stats)
            for k, v in stats.items():
                acc[k] = acc.get(k, 0.0) + v
            n_acc += 1
            step += 1
            now = time.perf_counter()
            elapsed += now - t_last
            t_last = now
            if step % cfg.log_every == 0 or step == stop:
                row = {"step": step, "kind": "train", "lr": lr, "noise_p": p}
                row.update({f"w_{k}": v for k, v in weights.items()})
                row.update({k: v / n_acc for k, v in acc.items()})
                row["elapsed_s"] = round(elapsed, 2)
                _write_log(log_path, [row])
                bar.update(
                    task,
                    stats=" ".join(
                        f"{k} {row[k]:.4g}" for k in ("message_loss", "bit_acc", "psnr") if k in row
                    ),
                )
                acc, n_acc = {}, 0
            if eval_small is not None and step % cfg.eval.every == 0:
                ev = _evaluate(model, eval_small, cfg.eval.batch_size)
                _write_log(log_path, [{"step": step, "kind": "eval", "size": cfg.eval.size, **ev}])
                t_last = time.perf_counter()  # evaluation time is not training time
            if step % cfg.checkpoint_every == 0 or step == stop:
                save_checkpoint()
                t_last = time.perf_counter()
            bar.update(task, completed=step)
    if not ckpt_path.exists():  # resumed at or past the end: keep a checkpoint for later extensions
        save_checkpoint()
    return _finish(path, cfg, out, model, data_info, step, elapsed, commands, dev)


def _write_safetensors(cfg: TrainConfig, out: Path, model: Any, step: int) -> tuple[Path, dict[str, Any]]:
    """``<name>.safetensors`` (weights, architecture in the metadata) -> (path, the card's file fields)."""
    from safetensors.torch import save_file

    weights = model.export_weights()
    st_path = out / f"{cfg.name}.safetensors"
    tmp = st_path.with_name(st_path.name + ".tmp")
    save_file(
        weights,
        str(tmp),
        metadata={
            "wmbench_method": cfg.model.name,
            "params": json.dumps(model.architecture(), sort_keys=True),
            "steps": str(step),
        },
    )
    os.replace(tmp, st_path)
    st_path.chmod(0o644)
    return st_path, {
        "file": st_path.name,
        "file_sha256": hashlib.sha256(st_path.read_bytes()).hexdigest(),
        "file_bytes": st_path.stat().st_size,
        "parameters": int(sum(v.numel() for v in weights.values())),
    }


def folder_files(folder: Path) -> dict[str, str]:
    """sha256 of every file under a diffusers output folder except its card (posix relative path -> hex)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != FOLDER_CARD
    }


def _write_folder(cfg: TrainConfig, out: Path, model: Any) -> tuple[Path, dict[str, Any]]:
    """``<name>/`` written by the model's ``save_pretrained`` (diffusers layout): written beside, then swapped in,
    so a crash never leaves half a folder under the final name.  -> (folder, the card's file fields)"""
    import shutil

    folder = out / cfg.name
    tmp = out / f".{cfg.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    files = folder_files(folder)
    return folder, {
        "file": f"{folder.name}/",
        "files": files,
        "file_bytes": sum((folder / f).stat().st_size for f in files),
        "parameters": int(sum(v.numel() for v in model.export_weights().values())),
    }


def _finish(
    path: Path,
    cfg: TrainConfig,
    out: Path,
    model: Any,
    data_info: dict[str, Any],
    step: int,
    elapsed: float,
    commands: list[str],
    dev: torch.device,
) -> Path:
    """Write the weights (``<name>.safetensors``, or the diffusers folder ``<name>/``) and the card."""
    import wmbench

    if cfg.model.kind == "diffusers":
        st_path, file_fields = _write_folder(cfg, out, model)
        card_path = st_path / FOLDER_CARD
    else:
        st_path, file_fields = _write_safetensors(cfg, out, model, step)
        card_path = out / f"{cfg.name}.json"
    arch = model.architecture()
    t0 = time.perf_counter()
    ev_images, ev_info = _eval_images(cfg, cfg.eval.count)
    ev = _evaluate(model, ev_images, cfg.eval.batch_size)
    card = {
        "name": cfg.name,
        "method": cfg.model.name,
        "description": cfg.description,
        "architecture": arch,
        "kind": cfg.model.kind,
        **({"nbits": int(model.nbits)} if cfg.model.kind == "method" else {}),
        "train_image_size": cfg.data.crop or cfg.data.size,
        **file_fields,
        "data": {k: v for k, v in data_info.items() if k != "photos"}
        | {"crop": cfg.data.crop, "flip": cfg.data.flip},
        "steps": step,
        "steps_planned": cfg.steps,
        "complete": step >= cfg.steps,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "wall_time_s": round(elapsed, 1),
        "device": _device_words(dev),
        "command": commands[-1],
        "call": f"wmbench.train.train({_config_ref(path)!r}, {str(out)!r}, device={dev.type!r})",
        "commands": commands,
        "config": _config_ref(path),
        "config_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "config_hash": _config_hash(cfg),
        "eval": {
            "what": getattr(
                model,
                "eval_description",
                "clean bit accuracy and PSNR (dB) of 8-bit watermarked images, seeded random messages",
            ),
            "split": cfg.eval.split,
            "size": cfg.eval.size,
            "images_sha256": ev_info["sha256"],
            **ev,
            "eval_time_s": round(time.perf_counter() - t0, 1),
        },
        "train_means": train_means(out / LOG),
        "wmbench": getattr(wmbench, "__version__", "unknown"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return st_path
