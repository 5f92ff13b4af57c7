"""Regeneration attacks: a learned codec or generative model re-synthesises the image, washing out the watermark.

    - ``compressai``:      a CompressAI zoo codec, real entropy coding (strength = quality 1..8, 1 = lowest rate);
    - ``sd_vae``:          a diffusers AutoencoderKL encode/decode round trip (strength = number of round trips);
    - ``diffusion_regen``: noise the VAE latent to step t, denoise with the pipeline's UNet (strength = t).

Weights are pretrained only and loaded offline only: CompressAI checkpoints from the torch hub cache the zoo fills,
diffusers models with ``from_pretrained(..., local_files_only=True)`` from a hub id in the local cache, a local
folder, or ``builtin``: the small SD-layout VAE and latent UNet wmbench trains and ships as package data
(``wmbench/weights/sd_vae_builtin/``, ``ldm_builtin/``; ``attacks/latent_diffusion.py``), loaded by the same call.
When weights are absent the attack raises ``SkipCell`` at once with a message naming the missing file/model/folder
and how to provide it; a folder that exists but does not load is an error naming it; random weights are never
substituted in a run.

Tests (and callers with their own networks) hand modules in explicitly with ``use_modules(...)``; the instance then
records ``params["modules"] = "injected"`` so its label and params never pass for the hub model.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Self, get_args

import torch
import torch.nn.functional as F
from pydantic import Field, StrictBool, model_validator
from torch import Tensor, nn

from wmbench import rng
from wmbench.api import Attack, Method, SkipCell, WmbenchError
from wmbench.params import Int, PluginParams, param_defaults
from wmbench.rng import Gen

INJECTED = "injected"

#: CompressAI zoo architectures with pretrained weights -> highest quality level
COMPRESSAI_MODELS: dict[str, int] = {
    "bmshj2018-factorized": 8,
    "bmshj2018-hyperprior": 8,
    "mbt2018-mean": 8,
    "mbt2018": 8,
    "cheng2020-anchor": 6,
    "cheng2020-attn": 6,
}
CompressaiModel = Literal[
    "bmshj2018-factorized",
    "bmshj2018-hyperprior",
    "mbt2018-mean",
    "mbt2018",
    "cheng2020-anchor",
    "cheng2020-attn",
]
assert set(get_args(CompressaiModel)) == set(COMPRESSAI_MODELS)

#: bounds of a model reference: a hub id, a local folder or ``builtin``
ModelRef: dict[str, Any] = {"min_length": 1, "max_length": 4096}


def params_label(name: str, params: dict[str, Any], defaults: dict[str, Any]) -> str:
    """``name`` plus the params that differ from their defaults, e.g. ``sd_vae[model=x/y]``."""
    diff = [f"{k}={v}" for k, v in params.items() if k not in defaults or defaults[k] != v]
    return f"{name}[{','.join(diff)}]" if diff else name


def _integer_strength(who: str, strength: float, lo: int, hi: int, what: str) -> int:
    s = int(round(strength))
    if s != strength or not lo <= s <= hi:
        raise WmbenchError(f"attack {who!r}: {what} {strength} must be an integer in [{lo}, {hi}]")
    return s


def _pad_to(x: Tensor, m: int) -> Tensor:
    """Replicate-pad the bottom/right so h and w are multiples of ``m``.  # b 3 h w -> b 3 h' w'"""
    h, w = x.shape[-2:]
    ph, pw = (-h) % m, (-w) % m
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


# ------------------------------------------------------------------------------------------- offline loading


def hf_cache_dir() -> str:
    """The Hugging Face hub cache that ``from_pretrained`` reads (HF_HUB_CACHE / HF_HOME respected)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")


def missing_hf_message(who: str, what: str, model_id: str, err: BaseException, param: str = "model") -> str:
    """The SkipCell text for a diffusers model absent offline: what is missing and how to provide it."""
    cache = hf_cache_dir()
    folder = "models--" + model_id.replace("/", "--")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (
        f"attack {who!r}: {what} {model_id!r} is not available offline ({first}). wmbench loads hub models with "
        f"local_files_only and never substitutes random weights. To provide it, on a machine with network run "
        f"`hf download {model_id}` (huggingface_hub) and copy {cache}/{folder} into this machine's cache {cache} "
        f"(HF_HOME / HF_HUB_CACHE choose it), or set the attack's params.{param} to a local folder in diffusers "
        f"layout."
    )


@contextmanager
def _hub_quiet() -> Iterator[None]:
    """Silence huggingface_hub's deprecation chatter that diffusers triggers on every offline load, and diffusers'
    note that fp16 weights (the shipped folders) are cast to the float32 model."""
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            yield
    finally:
        dlog.set_verbosity(level)


def _diffusers(who: str) -> Any:
    try:
        import diffusers
    except ImportError:
        raise SkipCell(f"attack {who!r} needs the diffusers package: pip install diffusers") from None
    return diffusers


def _is_path(model: str) -> bool:
    """A local folder rather than a hub id (``name`` or ``org/name``): it exists, or it is spelled like a path."""
    return (
        Path(model).expanduser().exists()
        or model.startswith(("/", ".", "~"))
        or model.count("/") > 1
        or "\\" in model
    )


def resolve_model(who: str, model: str, builtin_stem: str) -> tuple[str, bool]:
    """(what to hand ``from_pretrained``, whether it is a local folder).  ``builtin`` -> the shipped folder
    ``wmbench/weights/<builtin_stem>/``; a missing folder raises SkipCell naming it and how to provide it."""
    from .latent_diffusion import BUILTIN, shipped_folder

    if model == BUILTIN:
        folder = shipped_folder(builtin_stem)
        if not folder.is_dir():
            raise SkipCell(
                f"attack {who!r}: the built-in model folder {folder} is not installed; reinstall wmbench or train "
                f"it with `wmbench train {builtin_stem}` and pass params.model: <out dir>/{builtin_stem}"
            )
        return str(folder), True
    if _is_path(model):
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise SkipCell(
                f"attack {who!r}: model folder {folder} does not exist (params.model takes a hub id, a local "
                f"folder in diffusers layout, or 'builtin')"
            )
        return str(folder), True
    return model, False


def _load_failed(who: str, what: str, src: str, local: bool, e: BaseException, param: str) -> Exception:
    """The error for a model that did not load: a broken local folder is an error naming it; a hub id that is
    not cached offline skips the cell with how to provide it."""
    if local:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return WmbenchError(
            f"attack {who!r}: cannot load the {what} from the folder {src} (params.{param}): {first}. The folder "
            f"must be in diffusers layout (config.json + diffusion_pytorch_model.safetensors), as save_pretrained "
            f"writes it"
        )
    return SkipCell(missing_hf_message(who, what, src, e, param))


def load_autoencoder(
    who: str,
    model_id: str,
    subfolder: str | None = None,
    what: str | None = None,
    param: str = "model",
    builtin_stem: str = "sd_vae_builtin",
) -> nn.Module:
    """A pretrained diffusers AutoencoderKL (float32, eval, frozen) through ``from_pretrained``: a hub id from the
    local cache (else SkipCell, immediately), a local folder or ``builtin`` (broken: WmbenchError naming it)."""
    diffusers = _diffusers(who)
    src, local = resolve_model(who, model_id, builtin_stem)
    kw: dict[str, Any] = {"local_files_only": True, "low_cpu_mem_usage": False}
    if subfolder:
        kw["subfolder"] = subfolder
    what = what or "AutoencoderKL" + (f" (subfolder {subfolder!r})" if subfolder else "")
    try:
        with _hub_quiet():
            vae = diffusers.AutoencoderKL.from_pretrained(src, **kw)
    except Exception as e:  # noqa: BLE001 - missing files offline, bad JSON, truncated safetensors, ...
        if not local and not isinstance(e, OSError | ValueError):
            raise
        raise _load_failed(who, what, src, local, e, param) from None
    return vae.float().eval().requires_grad_(False)


class _Regen(Attack):
    """Shared plumbing: family, lazy per-device modules, explicit injection for tests."""

    family = "regeneration"
    _defaults: dict[str, Any] = {}

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)  # rejects unknown params with their names
        self.params = dict(self._defaults)
        self._mods: dict[str, Any] = {}

    def use_modules(self, **modules: Any) -> Self:
        """Use these networks instead of the pretrained ones (tests, in-code configs); recorded in params."""
        self._mods.update(modules)
        self.params["modules"] = INJECTED
        return self

    def label(self) -> str:
        return params_label(self.name, self.params, self._defaults)


# ------------------------------------------------------------------------------------------------ CompressAI


def compressai_checkpoint(model: str, metric: str, quality: int) -> tuple[Path, str]:
    """Where torch.hub keeps the zoo's checkpoint (no network): ``$TORCH_HOME/hub/checkpoints/<url name>``."""
    from urllib.parse import urlparse

    from compressai.zoo.image import model_urls

    url = model_urls[model][metric][quality]
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path), url


class CompressAI(_Regen):
    """A CompressAI zoo codec: real ``compress`` (entropy-coded bit strings) then ``decompress``.

    params: ``model`` (one of COMPRESSAI_MODELS), ``metric`` ("mse" | "ms-ssim").  After each call
    ``last_stats["bpp"]`` holds the coded bits per pixel of each image (b), measured on the real strings.
    """

    name = "compressai"
    description = (
        "CompressAI learned codec, real entropy coding (pretrained weights from the torch hub cache)"
    )
    unit = "compressai quality (1 = lowest rate)"
    integer_strength = True
    default_strengths = (1.0, 3.0, 6.0)
    #: weakest = highest quality; the cheng2020 models stop at 6 (``max_quality``; ``from_relative`` maps per model)
    strength_range = (8.0, 1.0)

    class Params(PluginParams):
        model: CompressaiModel = Field("bmshj2018-factorized", description="CompressAI zoo architecture")
        metric: Literal["mse", "ms-ssim"] = Field(
            "mse", description="the distortion the codec was trained for"
        )

    _defaults = param_defaults(Params)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.params = {"model": self.p.model, "metric": self.p.metric}
        self.max_quality = COMPRESSAI_MODELS[self.p.model]
        self.last_stats: dict[str, Tensor] = {}

    def from_relative(self, r: float) -> float:  # type: ignore[override]
        """Per model (instance ``max_quality``): cheng2020 models stop at quality 6."""
        if not 0.0 <= r <= 1.0:
            raise WmbenchError(f"attack 'compressai': relative strength {r} is outside [0, 1]")
        return float(round((1.0 - r) * self.max_quality + r * 1.0))

    def _quality(self, strength: float) -> int:
        return _integer_strength(
            self.name, strength, 1, self.max_quality, f"quality for {self.params['model']}"
        )

    def check_strength(self, strength: float) -> None:
        self._quality(strength)

    def _net(self, q: int) -> nn.Module:
        if "net" in self._mods:
            self._mods["net"].update()  # an injected codec may not have built its CDF tables yet
            return self._mods["net"]
        key = f"q{q}"
        if key in self._mods:
            return self._mods[key]
        try:
            from compressai.zoo.image import load_pretrained, model_architectures
        except ImportError as e:
            raise SkipCell(
                f"attack 'compressai' needs the compressai package: pip install compressai ({e})"
            ) from None
        model, metric = self.params["model"], self.params["metric"]
        path, url = compressai_checkpoint(model, metric, q)
        if not path.is_file():
            fn = model.replace("-", "_")
            raise SkipCell(
                f"attack 'compressai': pretrained weights of {model} ({metric}, quality {q}) are not in the torch "
                f"hub cache: {path} is missing. wmbench never downloads them during a run nor uses random weights. "
                f'To provide them, on a machine with network run `python -c "from compressai.zoo import {fn}; '
                f"{fn}({q}, metric='{metric}', pretrained=True)\"` and copy the file, or download {url} to {path} "
                f"(TORCH_HOME chooses the cache)."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = model_architectures[model].from_state_dict(load_pretrained(state))
        net.eval().requires_grad_(False)
        net.update()  # builds the entropy coder's CDF tables when the checkpoint lacks them
        self._mods[key] = net
        return net

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        q = self._quality(strength)
        net = self._net(q).to(x.device)
        h, w = x.shape[-2:]
        # the factorized prior downsamples 16x; a hyperprior (h_a) adds two more stride-2 layers (64x)
        mult = 64 if hasattr(net, "h_a") else 16
        with torch.no_grad():
            xp = _pad_to(x.detach().float().clamp(0, 1), mult)  # b 3 h' w'
            enc = net.compress(xp)
            y = net.decompress(enc["strings"], enc["shape"])["x_hat"][..., :h, :w]  # b 3 h w
        nbytes = [sum(len(s[i]) for s in enc["strings"]) for i in range(x.shape[0])]
        self.last_stats = {"bpp": torch.tensor(nbytes, dtype=torch.float64) * 8.0 / (h * w)}
        return y.clamp(0, 1).to(x.dtype)


# -------------------------------------------------------------------------------------------------- SD VAE


def _encode(vae: nn.Module, x: Tensor, sample: bool, gen: Gen) -> Tensor:
    """Latent of an AutoencoderKL: the posterior mean, or a draw from it with ``gen``.  # b 3 h w -> b c h/f w/f"""
    dist = vae.encode(x * 2.0 - 1.0).latent_dist
    if not sample:
        return dist.mean
    eps = rng.randn(gen, *dist.mean.shape).to(dist.mean)
    return dist.mean + dist.std * eps


def _decode(vae: nn.Module, z: Tensor) -> Tensor:
    """# b c h/f w/f -> b 3 h w in [0,1]"""
    return ((vae.decode(z).sample + 1.0) / 2.0).clamp(0, 1)


class SdVae(_Regen):
    """Encode with a pretrained AutoencoderKL and decode again, ``strength`` times (a rinse).

    params: ``model`` (hub id, local folder, or ``builtin``: the shipped ``wmbench/weights/sd_vae_builtin/``),
    ``subfolder`` (e.g. "vae" inside a pipeline repo), ``sample`` (False: decode the posterior mean, deterministic;
    True: a posterior draw from ``gen``).
    """

    name = "sd_vae"
    description = "diffusers AutoencoderKL encode/decode round trip (hub, local folder or model: builtin)"
    stand_in_gradient = True  # forward_st: autograd through the frozen VAE
    unit = "VAE round trips"
    integer_strength = True
    default_strengths = (1.0,)
    strength_range = (1.0, 4.0)

    class Params(PluginParams):
        model: str = Field(
            "stabilityai/sd-vae-ft-mse", description="hub id, local folder or builtin", **ModelRef
        )
        subfolder: str | None = Field(None, max_length=200, description="e.g. vae inside a pipeline repo")
        sample: StrictBool = Field(False, description="decode a posterior draw instead of the mean")

    _defaults = param_defaults(Params)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.params = self.p.model_dump()

    def check_strength(self, strength: float) -> None:
        _integer_strength(self.name, strength, 0, 64, "round trips")

    def _vae(self) -> nn.Module:
        if "vae" not in self._mods:
            self._mods["vae"] = load_autoencoder(self.name, self.params["model"], self.params["subfolder"])
        return self._mods["vae"]

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        n = _integer_strength(self.name, strength, 0, 64, "round trips")  # as check_strength
        if n == 0:
            return x
        with torch.no_grad():
            return self._rinse(x.detach(), n, gen)

    def forward_st(self, x: Tensor, strength: float, *, gen: Gen, cover: Tensor | None = None) -> Tensor:
        """Differentiable form (an optimiser such as AdvMark's stage 2 aims at it): the same round trips with
        autograd through the frozen VAE, not the identity gradient of a straight-through copy.  b 3 h w -> b 3 h w"""
        return self._rinse(x, _integer_strength(self.name, strength, 0, 64, "round trips"), gen)

    def _rinse(self, x: Tensor, n: int, gen: Gen) -> Tensor:
        """``n`` encode/decode round trips, in float32 (the VAE is loaded frozen by ``load_autoencoder``; an
        injected module is used as given).  b 3 h w -> b 3 h w in x's dtype"""
        vae = self._vae().to(x.device)
        y = x.float()
        for _ in range(n):
            y = _decode(vae, _encode(vae, y, self.params["sample"], gen))  # b 3 h w
        return y.to(x.dtype)


# ----------------------------------------------------------------------------------------- diffusion regen


def ddim_regenerate(
    vae: nn.Module,
    denoise: Any,
    alphas_cumprod: Tensor,
    prediction_type: str,
    x: Tensor,
    t: int,
    steps: int,
    gen: Gen,
) -> Tensor:
    """One regeneration: z0 = E(x); z_t = √ᾱ_t z0 + √(1-ᾱ_t) ε; deterministic DDIM (η = 0) from t to 0; D(z).

    ``denoise(z, t_vec)`` returns the model output (ε, v or x0 per ``prediction_type``); the DDIM grid has
    ``ceil(t·steps/T)`` steps from exactly t, and the last one predicts z0 (ᾱ_prev = 1).  # b 3 h w -> b 3 h w
    """
    sf = float(getattr(vae.config, "scaling_factor", 1.0))
    z = _encode(vae, x, False, gen) * sf  # b c h/f w/f
    if t > 0:
        ac = alphas_cumprod.to(device=z.device, dtype=torch.float64)
        n = max(1, math.ceil(t * steps / ac.shape[0]))
        grid = [int(round(t - i * t / n)) for i in range(n)]  # t = t_0 > t_1 > ... > t_{n-1} > 0
        noise = rng.randn(gen, *z.shape).to(z)
        a = ac[t]
        z = (a.sqrt() * z + (1 - a).sqrt() * noise).to(z.dtype)
        for i, ti in enumerate(grid):
            a = ac[ti]
            a_prev = (
                ac[grid[i + 1]] if i + 1 < len(grid) else torch.ones((), dtype=ac.dtype, device=ac.device)
            )
            out = denoise(z, torch.full((z.shape[0],), ti, device=z.device, dtype=torch.long))
            out = out[:, : z.shape[1]].to(torch.float64)  # learned-variance UNets emit 2c channels
            zd = z.to(torch.float64)
            if prediction_type == "epsilon":
                eps = out
                x0 = (zd - (1 - a).sqrt() * eps) / a.sqrt()
            elif prediction_type == "v_prediction":
                x0 = a.sqrt() * zd - (1 - a).sqrt() * out
                eps = (1 - a).sqrt() * zd + a.sqrt() * out
            elif prediction_type == "sample":
                x0 = out
                eps = (zd - a.sqrt() * x0) / (1 - a).sqrt()
            else:
                raise WmbenchError(
                    f"diffusion_regen: unsupported scheduler prediction_type {prediction_type!r}"
                )
            z = (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps).to(z.dtype)
    return _decode(vae, z / sf)


class DiffusionRegen(_Regen):
    """WAVES / W-Bench regeneration: noise the latent to step t and denoise with an empty prompt, ``rinse`` times.

    params: ``model`` (a Stable-Diffusion-layout repo id or local folder: unet/, scheduler/, vae/ unless ``vae`` is
    given, and text_encoder/ + tokenizer/ when the UNet is text-conditioned; or ``builtin``: the shipped
    ``ldm_builtin/`` UNet + DDIM scheduler with the ``sd_vae_builtin/`` VAE; ``pipeline`` is an older name for it),
    ``vae`` (an AutoencoderKL to use instead of the model's vae/: hub id, folder or ``builtin``), ``rinse`` (full
    regenerations in a row), ``steps`` (DDIM steps over the whole 1000-step schedule; denoising from t takes
    ceil(t·steps/1000)).  strength t = 0 is a plain VAE round trip.  The UNet class (UNet2DConditionModel, or an
    unconditional UNet2DModel) is the one its config names.
    """

    name = "diffusion_regen"
    description = "latent diffusion regeneration: noise to step t, DDIM-denoise, decode (hub, local folder or model: builtin)"
    unit = "diffusion noise step t (of 1000)"
    integer_strength = True
    default_strengths = (60.0, 120.0, 180.0, 240.0)
    strength_range = (0.0, 240.0)  # W-Bench: steps 60..240

    class Params(PluginParams):
        model: str = Field(
            "stabilityai/stable-diffusion-2-1-base",
            description="SD-layout repo id, local folder or builtin",
            **ModelRef,
        )
        vae: str | None = Field(
            None, description="an AutoencoderKL to use instead of the model's vae/", **ModelRef
        )
        rinse: int = Int(1, ge=1, le=100, description="full regenerations in a row")
        steps: int = Int(50, ge=1, le=1000, description="DDIM steps over the whole 1000-step schedule")
        pipeline: str | None = Field(None, description="older name of model", **ModelRef)

        @model_validator(mode="after")
        def _pipeline_is_model(self) -> Self:
            if self.pipeline is not None:
                if "model" in self.model_fields_set and self.model != self.pipeline:
                    raise ValueError("give model or its older name pipeline, not both")
                self.model, self.pipeline = self.pipeline, None
            return self

    _defaults = param_defaults(Params, exclude=("pipeline",))

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.params = self.p.model_dump(exclude={"pipeline"})

    def _noise_step(self, strength: float) -> int:
        sched = self._mods.get("scheduler")
        T = int(sched.config.num_train_timesteps) if sched is not None else 1000
        return _integer_strength(self.name, strength, 0, T - 1, "noise step")

    def check_strength(self, strength: float) -> None:
        self._noise_step(strength)

    def _vae_source(self) -> tuple[str, str | None]:
        """(model id/folder, subfolder) of the VAE: ``vae`` if given, the shipped VAE for builtin, else vae/."""
        from .latent_diffusion import BUILTIN

        if self.params["vae"] is not None:
            return self.params["vae"], None
        if self.params["model"] == BUILTIN:
            return BUILTIN, None
        return self.params["model"], "vae"

    def _load(self) -> None:
        if "unet" in self._mods:
            return
        from .latent_diffusion import BUILTIN_LDM

        who = self.name
        diffusers = _diffusers(who)
        vsrc, vsub = self._vae_source()
        vae = load_autoencoder(who, vsrc, vsub, what="VAE", param="vae" if vsub is None else "model")
        pid, local = resolve_model(who, self.params["model"], BUILTIN_LDM)
        kw: dict[str, Any] = {"local_files_only": True}
        try:
            with _hub_quiet():
                sched = diffusers.DDIMScheduler.from_pretrained(pid, subfolder="scheduler", **kw)
                cfg = diffusers.UNet2DConditionModel.load_config(pid, subfolder="unet", **kw)
                unet_cls = getattr(diffusers, str(cfg.get("_class_name", "UNet2DConditionModel")))
                unet = unet_cls.from_pretrained(pid, subfolder="unet", low_cpu_mem_usage=False, **kw)
        except Exception as e:  # noqa: BLE001 - missing files offline, bad JSON, truncated safetensors, ...
            if not local and not isinstance(e, OSError | ValueError | AttributeError):
                raise
            raise _load_failed(who, "pipeline (unet/, scheduler/)", pid, local, e, "model") from None
        cond = None
        if getattr(unet.config, "cross_attention_dim", None):
            cond = self._empty_prompt(pid)
        unet = unet.float().eval().requires_grad_(False)
        self._mods.update(vae=vae, unet=unet, scheduler=sched, cond=cond)

    def _empty_prompt(self, pid: str) -> Tensor:
        """The text encoder's embedding of the empty prompt (no classifier-free guidance).  -> 1 L d"""
        who = self.name
        try:
            from transformers import CLIPTextModel, CLIPTokenizer
        except ImportError:
            raise SkipCell(
                f"attack {who!r}: pipeline {pid!r} is text-conditioned; its text encoder needs the "
                f"transformers package: pip install transformers"
            ) from None
        kw: dict[str, Any] = {"local_files_only": True}
        try:
            with _hub_quiet():
                tok = CLIPTokenizer.from_pretrained(pid, subfolder="tokenizer", **kw)
                enc = CLIPTextModel.from_pretrained(pid, subfolder="text_encoder", **kw).eval()
        except (OSError, ValueError) as e:
            raise SkipCell(missing_hf_message(who, "pipeline text encoder of", pid, e, "model")) from None
        ids = tok("", padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
        with torch.no_grad():
            return enc(ids)[0]

    def _denoiser(self, device: torch.device) -> Any:
        unet, cond = self._mods["unet"].to(device), self._mods.get("cond")
        if cond is None:
            return lambda z, t: unet(z, t).sample
        c = cond.to(device)
        return lambda z, t: unet(z, t, encoder_hidden_states=c.expand(z.shape[0], -1, -1)).sample

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        t = self._noise_step(strength)
        self._load()
        sched = self._mods["scheduler"]
        vae = self._mods["vae"].to(x.device)
        denoise = self._denoiser(x.device)
        pred = str(getattr(sched.config, "prediction_type", "epsilon"))
        y = x.detach().float()
        with torch.no_grad():
            for _ in range(self.params["rinse"]):
                y = ddim_regenerate(vae, denoise, sched.alphas_cumprod, pred, y, t, self.params["steps"], gen)
        return y.to(x.dtype)
