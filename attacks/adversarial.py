"""Adversarial attacks: projected gradient descent within an ε-ball, strength = ε in 1/255 units.

    - ``pgd_remove``:    white-box; pushes the decoded bits of the watermarked image to a random message (default;
                         bit accuracy -> ~0.5, undetectable even by a two-sided test) or to the flipped bits;
    - ``pgd_forge``:     white-box; copies the watermark onto the clean cover: the target is what the method decodes
                         from the watermarked input, PGD starts from ``cover`` and the output is the forged cover;
    - ``vae_embedding``: no-box (WAVES); pushes the image's latent under a VAE encoder away from the original's
                         (by default the encoder of the shipped ``regen_local`` codec).

Norms: ``linf`` bounds every pixel change by ε/255; ``l2`` bounds the RMS change by ε/255 (‖δ‖₂ ≤ ε/255·√(3hw)),
so either way the attacked image keeps PSNR ≥ 20·log10(255/ε) against the attack's start image.

Gradients: by autograd through ``method.extract``, so only for methods that declare ``differentiable_extract``.
For the others the cell raises SkipCell naming the method: BPDA needs a differentiable approximation of the decoder
that this harness does not have for e.g. a numpy/ONNX decoder, and a query-based estimate (NES, tried) barely moves
per-pixel pseudo-random watermarks at affordable query counts (gradient cosine ≈ √(queries/pixels) ≈ 0.03 for 10
queries at 64²), so its rows would understate white-box attacks.  A trained surrogate decoder (the planned
``surrogate_transfer``) is the intended route for such methods.  Attacks always return detached tensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal, Self

import torch
import torch.nn.functional as F
from pydantic import Field, StrictBool
from torch import Tensor

from wmbench import rng
from wmbench.api import Attack, Method, SkipCell, WmbenchError
from wmbench.params import Int, Num, PluginParams, param_defaults
from wmbench.rng import Gen

from .regeneration import INJECTED, ModelRef, load_autoencoder, params_label

DEFAULT_EOT: tuple[str, ...] = ("jpeg", "gaussian_blur", "gaussian_noise", "resize")
#: vae_embedding's default model: the encoder of the shipped regen_local codec (attacks/regen_local.py)
LOCAL_ENCODER = "regen_local"
Objective = Callable[[Tensor], Tensor]  # b 3 h w -> b per-sample loss to minimise


def _eps(who: str, strength: float) -> float:
    if not math.isfinite(strength) or strength < 0:
        raise WmbenchError(f"attack {who!r}: epsilon {strength} (in 1/255) must be >= 0")
    return float(strength) / 255.0


def _need_method(who: str, method: Method | None) -> Method:
    if method is None:
        raise WmbenchError(f"attack {who!r} attacks a method's decoder: call apply(..., method=<Method>)")
    return method


class PgdParams(PluginParams):
    """The PGD knobs every ε-ball attack shares (white-box, surrogate transfer)."""

    norm: Literal["linf", "l2"] = Field("linf", description="the ball: L-inf, or L2 (RMS per pixel)")
    steps: int = Int(50, ge=0, le=10_000, description="PGD iterations (0 = no attack)")
    step_size: float = Num(0.05, gt=0, le=10, description="step as a fraction of the ball's radius")
    random_start: StrictBool = Field(False, description="start at a random point of the ball")


#: an objective restricted to some images of the batch: ``subset(idx)`` -> the objective of images ``idx`` only
Subset = Callable[[Tensor], Objective]
#: which of the images ``idx`` already decode as the attack wants: ``reached(y8, idx)`` -> bool per image
Reached = Callable[[Tensor, Tensor], Tensor]
#: how often (in steps) an image's 8-bit iterate is checked for ``reached``: a forward pass, a third of a step
CHECK_EVERY = 5


def pgd(
    x: Tensor,
    objective: Objective,
    *,
    eps: float,
    norm: str,
    steps: int,
    step_size: float,
    gen: Gen,
    random_start: bool = False,
    subset: Subset | None = None,
    reached: Reached | None = None,
) -> Tensor:
    """Minimise ``objective`` over x + δ, δ in the ε-ball (see module docstring for norms), x + δ in [0,1].

    ``step_size`` is a fraction of the ball's radius.  Returns, per image, the iterate with the lowest objective
    seen (the start included), detached.  Early stop (``subset`` and ``reached`` given): every ``CHECK_EVERY``
    steps an image whose 8-bit iterate ``reached`` the attack's goal leaves the batch with that iterate, and the
    steps go on for the others only (``subset(idx)``: the objective of images idx).  # x: b 3 h w -> b 3 h w
    """
    x = x.detach()
    b = x.shape[0]
    radius = eps if norm == "linf" else eps * math.sqrt(x[0].numel())
    alpha = step_size * radius

    def project(d: Tensor, x0: Tensor) -> Tensor:
        if norm == "linf":
            d = d.clamp(-eps, eps)
        else:
            n = d.flatten(1).norm(dim=1).clamp_min(1e-12)
            d = d * (radius / n).clamp(max=1.0).view(-1, 1, 1, 1)
        return (x0 + d).clamp(0, 1) - x0

    delta = torch.zeros_like(x)
    if random_start:
        u = rng.rand(gen, *x.shape).to(x) * 2 - 1  # b 3 h w in [-1, 1]
        delta = project(u * (eps if norm == "linf" else radius / math.sqrt(x[0].numel())), x)
    best, best_loss = x.clone(), torch.full((b,), math.inf, device=x.device)
    idx = torch.arange(b, device=x.device)  # the images still being attacked
    for i in range(steps + 1):
        obj = objective if subset is None or len(idx) == b else subset(idx)
        xi = x if len(idx) == b else x[idx]
        xa = xi + delta
        loss, g = _loss_and_grad(obj, xa, i < steps)  # the last iterate is only scored
        better = loss < best_loss[idx]
        best[idx[better]], best_loss[idx[better]] = xa[better].detach(), loss[better]
        if g is None:
            break
        with torch.no_grad():
            if norm == "linf":
                delta = project(delta - alpha * g.sign(), xi)
            else:
                gn = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                delta = project(delta - alpha * g / gn, xi)
            if reached is not None and subset is not None and (i + 1) % CHECK_EVERY == 0:
                y8 = torch.round((xi + delta).clamp(0, 1) * 255) / 255
                done = reached(y8, idx)
                if done.any():
                    best[idx[done]] = (xi + delta)[done]
                    idx, delta = idx[~done], delta[~done]
                    if len(idx) == 0:
                        break
    return best


def _loss_and_grad(objective: Objective, xa: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """The per-image objective at xa and, when asked, its gradient.  b 3 h w -> (b, b 3 h w | None)"""
    if not need_grad:
        with torch.no_grad():
            return objective(xa), None
    with torch.enable_grad():
        xa = xa.detach().requires_grad_(True)
        loss = objective(xa)  # b
        if not loss.requires_grad:
            raise WmbenchError(
                "pgd: the objective is detached from the image (does the method's extract run under "
                "torch.no_grad() although it declares differentiable_extract?)"
            )
        (g,) = torch.autograd.grad(loss.sum(), xa)
    return loss.detach(), g


class _Pgd(Attack):
    """Shared params, validation, EOT and differentiability check of the white-box attacks."""

    family = "adversarial"
    needs_method = True
    training_form = False  # forward_st refuses: it attacks a method, it is no training distortion
    #: one unit whatever the params (the norm is in the cell's label, e.g. ``pgd_remove(norm=l2)``)
    unit = "epsilon (1/255; L-inf, or RMS per pixel with norm l2)"
    default_strengths = (2.0, 4.0, 8.0)
    strength_range = (0.0, 8.0)  # WAVES adversarial: ε 2..8 /255
    _defaults: dict[str, Any] = {}

    class Params(PgdParams):
        eot: int = Int(0, ge=0, le=1000, description="random transforms averaged per step (EOT)")
        early_stop: StrictBool = Field(
            False,
            description="an image stops once its 8-bit iterate decodes as the target (checked every 5 steps)",
        )
        eot_attacks: list[str] = Field(
            list(DEFAULT_EOT), min_length=1, max_length=64, description="the attacks EOT draws from"
        )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.p
        self.norm, self.steps, self.step_size, self.eot = p.norm, p.steps, p.step_size, p.eot
        self.target, self.random_start, self.early_stop = p.target, p.random_start, p.early_stop
        from wmbench.registry import attacks

        self.eot_pool: list[Attack] = []
        for j, n in enumerate(p.eot_attacks):
            where = f"attack {self.name!r}: params.eot_attacks[{j}]"
            if n not in attacks():
                raise WmbenchError(f"{where}: {attacks().unknown_message(n)}")
            a = attacks().get(n)()
            if a.needs_method or not a.default_strengths:
                raise WmbenchError(f"{where}: {n!r} cannot serve as a random transform")
            self.eot_pool.append(a)
        self.params = {
            "norm": self.norm,
            "steps": self.steps,
            "step_size": self.step_size,
            "eot": self.eot,
            "eot_attacks": list(p.eot_attacks),
            "target": self.target,
            "random_start": self.random_start,
            # only when on: the fingerprints (cache keys, results) of runs without it stay what they were
            **({"early_stop": True} if self.early_stop else {}),
        }

    def label(self) -> str:
        return params_label(self.name, self.params, self._defaults)

    def check_strength(self, strength: float) -> None:
        _eps(self.name, strength)

    def forward_st(self, x: Tensor, strength: float, *, gen: Gen, cover: Tensor | None = None) -> Tensor:
        raise WmbenchError(f"attack {self.name!r} needs the method it attacks; it is no training distortion")

    def _check_differentiable(self, method: Method) -> None:
        if not method.differentiable_extract:
            raise SkipCell(
                f"attack {self.name!r}: method {method.name!r} declares no differentiable extract "
                f"(differentiable_extract = False), so white-box PGD has no gradient; the cell is not run rather "
                f"than report a weaker attack as white-box. Attack it through a surrogate decoder instead."
            )

    def _objective(self, method: Method, target: Tensor, gen: Gen, cover: Tensor | None) -> Objective:
        """Per-image BCE of the decoded logits against ``target`` (b k), averaged over ``eot`` random transforms."""

        def bce(y: Tensor) -> Tensor:
            logits = method.extract(y).float()  # b k
            return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1)

        if self.eot == 0:
            return bce

        def eot_bce(y: Tensor) -> Tensor:
            total = torch.zeros(y.shape[0], device=y.device)
            for _ in range(self.eot):
                # which transform: one choice for the whole batch from the cell's shared generator, so an image
                # sees the same sequence of transforms in any batch; the transform's own draws are per image
                j = int(torch.randint(len(self.eot_pool), (1,), generator=rng.shared(gen)))
                atk = self.eot_pool[j]
                pick = torch.randint(len(atk.default_strengths), (1,), generator=rng.shared(gen))
                s = atk.default_strengths[int(pick)]
                total = total + bce(atk.forward_st(y, s, gen=gen, cover=cover))
            return total / self.eot

        return eot_bce

    def _decoded(self, method: Method, x: Tensor) -> Tensor:
        """What the method reads from x now.  -> b k in {0,1}"""
        with torch.no_grad():
            return (method.extract(x) > 0).float()

    def _run(
        self, method: Method, start: Tensor, eps: float, target: Tensor, gen: Gen, cover: Tensor | None
    ) -> Tensor:
        """PGD from ``start`` towards decoding ``target`` (b k); with ``early_stop`` an image leaves once its 8-bit
        iterate decodes as ``target`` on every bit (per-image generators only: a training batch runs every step)."""
        stop = self.early_stop and isinstance(gen, rng.ImageGens)

        def subset(idx: Tensor) -> Objective:
            i = idx.tolist()
            assert isinstance(gen, rng.ImageGens)
            return self._objective(method, target[idx], gen.subset(i), None if cover is None else cover[idx])

        def reached(y8: Tensor, idx: Tensor) -> Tensor:
            return (self._decoded(method, y8) == target[idx]).all(1)

        return pgd(
            start,
            self._objective(method, target, gen, cover),
            eps=eps,
            norm=self.norm,
            steps=self.steps,
            step_size=self.step_size,
            gen=gen,
            random_start=self.random_start,
            subset=subset if stop else None,
            reached=reached if stop else None,
        )


class PgdRemove(_Pgd):
    """White-box removal: PGD from the watermarked image towards a target message that is not the decoded one.

    params: ``norm`` linf|l2, ``steps`` 50, ``step_size`` 0.05 (fraction of the ball's radius), ``eot`` 0
    (random transforms averaged per step, from ``eot_attacks``), ``target`` random|flip, ``random_start``.
    """

    name = "pgd_remove"
    description = "white-box PGD pushing the decoded bits away from the watermark"

    class Params(_Pgd.Params):
        target: Literal["random", "flip"] = Field(
            "random", description="a random message, or the decoded bits flipped"
        )

    _defaults = param_defaults(Params)

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        eps = _eps(self.name, strength)
        if eps == 0 or self.steps == 0:
            return x.detach()
        m = _need_method(self.name, method)
        self._check_differentiable(m)
        x0 = x.detach().float()
        decoded = self._decoded(m, x0)  # b k
        if self.target == "flip":
            target = 1.0 - decoded
        else:
            target = rng.randint(gen, 0, 2, *decoded.shape).to(decoded)
        y = self._run(m, x0, eps, target, gen, cover)
        return y.to(x.dtype)


class PgdForge(_Pgd):
    """White-box forgery: copy the watermark onto the clean cover.

    The target is what the method decodes from the watermarked input ``x``; PGD starts from ``cover`` and the
    attack returns the forged cover.  A row's bit accuracy (against the embedded message) is then the forgery's
    success rate: 1.0 means the clean image reads as the watermark.  Its ``psnr_attacked`` compares the forged
    cover with the watermarked image; against the cover itself the forgery keeps PSNR ≥ 20·log10(255/ε).
    """

    name = "pgd_forge"
    goal = "forgery"
    description = "white-box PGD forgery: a clean cover made to decode as the watermarked image's message"
    needs_cover = True

    class Params(_Pgd.Params):
        target: Literal["copy"] = Field("copy", description="the watermark decoded from the input")

    _defaults = param_defaults(Params)

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        if cover is None:
            raise WmbenchError(
                "attack 'pgd_forge' starts from the clean cover: call apply(..., cover=<b 3 h w>)"
            )
        if cover.shape != x.shape:
            raise WmbenchError(f"attack 'pgd_forge': cover shape {tuple(cover.shape)} != {tuple(x.shape)}")
        eps = _eps(self.name, strength)
        c0 = cover.detach().to(device=x.device, dtype=torch.float32)
        if eps == 0 or self.steps == 0:
            return c0.to(x.dtype)
        m = _need_method(self.name, method)
        self._check_differentiable(m)
        target = self._decoded(m, x.detach().float())  # b k: the watermark to copy
        y = self._run(m, c0, eps, target, gen, c0)
        return y.to(x.dtype)


class VaeEmbedding(Attack):
    """WAVES embedding attack: PGD maximising ‖E(x+δ) − E(x)‖² of a VAE encoder's latent mean (no method needed).

    params: ``model`` ("regen_local", the default: the analysis transform of the shipped ``regen_local`` codec,
    SkipCell when it is not installed; or a diffusers AutoencoderKL id or local folder, offline only),
    ``subfolder``, ``norm``, ``steps`` 200, ``step_size`` 0.05 (WAVES: α = 0.05·ε, 200 steps).  It always starts at
    a random point of the ball (from ``gen``): at δ = 0 the distance's gradient is exactly zero.
    ``use_modules(encoder=vae)`` injects an AutoencoderKL (tests).
    """

    name = "vae_embedding"
    description = "WAVES adversarial embedding attack on a VAE encoder's latent (no-box)"
    unit = "epsilon (1/255; L-inf, or RMS per pixel with norm l2)"
    family = "adversarial"
    default_strengths = (2.0, 4.0, 6.0, 8.0)
    strength_range = (0.0, 8.0)

    class Params(PluginParams):
        model: str = Field(LOCAL_ENCODER, description="regen_local, a hub id or a local folder", **ModelRef)
        subfolder: str | None = Field(None, max_length=200, description="e.g. vae inside a pipeline repo")
        norm: Literal["linf", "l2"] = PgdParams.model_fields["norm"]
        steps: int = Int(200, ge=0, le=10_000, description="PGD iterations (0 = no attack)")
        step_size: float = PgdParams.model_fields["step_size"]

    _defaults = param_defaults(Params)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.params = self.p.model_dump()
        self._encoder: Any = None

    def use_modules(self, encoder: Any) -> Self:
        """Attack this AutoencoderKL (anything with ``.encode(2x-1).latent_dist.mean``) instead of the hub one."""
        self._encoder = encoder
        self.params["modules"] = INJECTED
        return self

    def label(self) -> str:
        return params_label(self.name, self.params, self._defaults)

    def check_strength(self, strength: float) -> None:
        _eps(self.name, strength)

    def _load_encoder(self) -> Any:
        if self.params["model"] != LOCAL_ENCODER:
            return load_autoencoder(self.name, self.params["model"], self.params["subfolder"])
        from .regen_local import RegenLocal

        try:
            return RegenLocal().encoder()
        except SkipCell as e:
            raise SkipCell(f"attack {self.name!r} (model: {LOCAL_ENCODER}): {e}") from None

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        eps = _eps(self.name, strength)
        if eps == 0 or self.params["steps"] == 0:
            return x.detach()
        if self._encoder is None:
            self._encoder = self._load_encoder()
        enc = self._encoder.to(x.device)
        x0 = x.detach().float()

        def latent(y: Tensor) -> Tensor:
            return enc.encode(y * 2.0 - 1.0).latent_dist.mean  # b c h/f w/f

        with torch.no_grad():
            z0 = latent(x0)

        def objective(y: Tensor) -> Tensor:
            return -(latent(y) - z0).pow(2).flatten(1).mean(1)  # b: minimise = push the latent away

        y = pgd(
            x0,
            objective,
            eps=eps,
            norm=self.params["norm"],
            steps=self.params["steps"],
            step_size=self.params["step_size"],
            gen=gen,
            random_start=True,
        )
        return y.to(x.dtype)
