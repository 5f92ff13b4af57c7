"""The built-in latent-diffusion stack: a small Stable-Diffusion-layout VAE and a latent denoiser, trained here.

Why: regeneration (a VAE round trip, or noising a latent and denoising it) is the attack family modern watermarks
are judged by, and no installed package ships a Stable Diffusion VAE or UNet (REFERENCE §1).  So wmbench trains a
small one itself, saves it with diffusers' own ``save_pretrained`` and ships the folders as package data; the
attacks load them with ``from_pretrained``, the very call that takes a hub id (``attacks/regeneration.py``).

- ``autoencoder_kl`` (:class:`VaeModel`): a diffusers ``AutoencoderKL`` with SD's layout (4 resolution levels =
  8× downsampling, 4 latent channels, a mid block with attention) and narrower widths.  Loss as SD's VAE minus the
  GAN: L1 + LPIPS + a tiny KL.  Its ``scaling_factor`` (1 / std of the latents, SD's 0.18215 convention) is a
  running estimate over the training batches.  Shipped as ``wmbench/weights/sd_vae_builtin/``.
- ``latent_unet`` (:class:`LatentUnetModel`): a diffusers ``UNet2DModel`` trained as an ε-prediction diffusion
  model on that VAE's scaled latents with SD's noise schedule (scaled_linear β 0.00085 → 0.012, 1000 steps), so a
  noise step t means the same noise level as in W-Bench's SD-2.1 regeneration.  Shipped as
  ``wmbench/weights/ldm_builtin/`` with ``unet/`` and ``scheduler/`` (a ``DDIMScheduler`` config); the VAE stays in
  its own folder and ``diffusion_regen`` pairs them (param ``vae``), so the VAE is not stored twice.

Both are trained by ``wmbench train sd_vae_builtin`` / ``wmbench train ldm_builtin`` (``model.kind: diffusers``;
configs in ``wmbench/configs/``), on crops of the built-in *train* split only.
"""

from __future__ import annotations

import importlib.resources
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmbench import rng
from wmbench.api import TrainingHooks, WmbenchError, quantize_8bit
from wmbench.checkpoints import WEIGHTS_PACKAGE, check_init

#: shipped folders (package data under wmbench/weights/)
BUILTIN_VAE = "sd_vae_builtin"
BUILTIN_LDM = "ldm_builtin"
#: the value of ``params.model`` (sd_vae, diffusion_regen) that selects the shipped folders
BUILTIN = "builtin"

VAE_ARCH_DEFAULTS: dict[str, Any] = {
    "block_out_channels": [32, 64, 128, 128],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "mid_block_add_attention": True,
}
UNET_ARCH_DEFAULTS: dict[str, Any] = {
    "block_out_channels": [32, 64, 128],
    "layers_per_block": 1,
    "attention": [False, False, True],
    "norm_num_groups": 32,
    "attention_head_dim": 32,
}
#: SD 1.x / 2.x noise schedule (so t has W-Bench's meaning); DDIM settings as SD's scheduler config
SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def shipped_folder(stem: str) -> Path:
    """Where the installed package keeps ``wmbench/weights/<stem>/`` (it may be absent: callers check)."""
    return Path(str(importlib.resources.files(WEIGHTS_PACKAGE))) / stem


def _to_m11(x: Tensor) -> Tensor:
    """[0,1] -> [-1,1], the range diffusers' VAEs take.  # b 3 h w"""
    return x * 2.0 - 1.0


def _arch(who: str, defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise WmbenchError(f"{who}: unknown params {unknown}; known: {sorted(defaults)}")
    arch = {**defaults, **given}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}


class _DiffusersModel(TrainingHooks):
    """Shared plumbing of the trainable diffusers models: params, seeded init, device, hooks' bookkeeping."""

    name: ClassVar[str]
    eval_description: ClassVar[str]
    _arch_defaults: ClassVar[dict[str, Any]]

    def __init__(
        self, *, init: str | None = None, seed: int = 0, checkpoint: str | None = None, **arch: Any
    ) -> None:
        who = f"diffusers model {self.name!r}"
        check_init(who, init, checkpoint is not None, "a checkpoint folder")
        if init is None and checkpoint is None:
            raise WmbenchError(f"{who}: give init: random (training from scratch) or a checkpoint folder")
        self.who, self.init, self.seed, self.checkpoint = who, init, int(seed), checkpoint
        self.arch = _arch(who, self._arch_defaults, arch)
        self.device = torch.device("cpu")
        self._train: dict[str, Any] | None = None

    def architecture(self) -> dict[str, Any]:
        """The params that rebuild this model (the card records them)."""
        return dict(self.arch)

    def _net(self) -> nn.Module:
        raise NotImplementedError

    def export_weights(self) -> dict[str, Tensor]:
        """The trained network's parameters (the card counts them)."""
        return {k: v.detach().cpu() for k, v in self._net().state_dict().items()}


# ---------------------------------------------------------------------------------------------------- VAE


def build_vae(arch: dict[str, Any]) -> nn.Module:
    """An AutoencoderKL with SD's layout (one DownEncoderBlock2D / UpDecoderBlock2D per width)."""
    from diffusers import AutoencoderKL

    n = len(arch["block_out_channels"])
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(arch["block_out_channels"]),
        layers_per_block=int(arch["layers_per_block"]),
        latent_channels=int(arch["latent_channels"]),
        norm_num_groups=int(arch["norm_num_groups"]),
        mid_block_add_attention=bool(arch["mid_block_add_attention"]),
        sample_size=128,
    )


class VaeModel(_DiffusersModel):
    """Trainable SD-layout AutoencoderKL (``model.kind: diffusers``, name ``autoencoder_kl``).

    Loss per step (SD's VAE objective without its discriminator): ``l1``·|x̂ − x| + ``perceptual``·LPIPS(x̂, x) +
    ``kl``·KL(q(z|x) ‖ N(0, I)) per pixel, on a posterior sample z drawn through ``wmbench.rng``.
    """

    name = "autoencoder_kl"
    _arch_defaults = VAE_ARCH_DEFAULTS
    loss_weights: ClassVar[dict[str, float]] = {"l1": 1.0, "perceptual": 0.25, "kl": 1e-6}
    train_stats: ClassVar[tuple[str, ...]] = ("loss", "l1", "perceptual", "kl", "psnr", "latent_std")
    eval_description = (
        "PSNR (dB) and LPIPS of 8-bit reconstructions (posterior mean, one round trip) vs the input; "
        "scaling_factor = 1 / std of the training latents (running estimate)"
    )
    #: running moments of the latents decay (scaling factor estimate)
    _EMA = 0.99
    LOGVAR_INIT = -6.0

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.vae: nn.Module | None = None
        self.moments = torch.tensor([0.0, 1.0], dtype=torch.float64)  # E[z], E[z²]

    def setup(self, device: torch.device | str) -> None:
        """Build the seeded random-init VAE or load the checkpoint folder."""
        self.device = torch.device(device)
        if self.checkpoint is not None:
            self.vae = load_vae_folder(self.who, Path(self.checkpoint))
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self.vae = build_vae(self.arch)
            self._init_logvar(self.vae)
        self.vae.to(self.device)

    def _init_logvar(self, vae: nn.Module) -> None:
        """Start the posterior's log-variance at ``LOGVAR_INIT`` (std ≈ 0.05) instead of ~0 (std ≈ 1).

        Why: with SD's tiny KL weight the variance only shrinks slowly, and unit-variance samples on a fresh
        encoder's small latents hide the signal from the decoder: in a probe here the reconstruction stayed at
        ~12 dB for the first 100 steps.  The conv emitting (mean, logvar) gets a bias of LOGVAR_INIT on its logvar
        half."""
        conv = vae.encoder.conv_out
        c = int(self.arch["latent_channels"])
        with torch.no_grad():
            conv.bias[c:] = self.LOGVAR_INIT

    def _net(self) -> nn.Module:
        if self.vae is None:
            self.setup(self.device)
        assert self.vae is not None
        return self.vae

    def scaling_factor(self) -> float:
        """1 / std of the training latents (from the running moments)."""
        mean, sq = (float(v) for v in self.moments)
        return 1.0 / math.sqrt(max(sq - mean * mean, 1e-12))

    def begin_training(self, *, lr: float, gen: torch.Generator) -> None:
        vae = self._net()
        vae.requires_grad_(True).train()
        self._train = {
            "opt": torch.optim.Adam(vae.parameters(), lr=lr),
            "gen": gen,
            "w": dict(self.loss_weights),
        }

    def training_state(self) -> dict[str, Any]:
        t = self._tstate()
        return {
            "net": self._net().state_dict(),
            "opt": t["opt"].state_dict(),
            "moments": self.moments.clone(),
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        t = self._tstate()
        self._net().load_state_dict(state["net"])
        t["opt"].load_state_dict(state["opt"])
        self.moments = state["moments"].clone()

    def train_step(self, batch: Tensor, noise: Callable[[Tensor, Tensor], Tensor]) -> dict[str, float]:
        """One step on b 3 h w crops in [0,1] (``noise`` unused: the VAE is the distortion)."""
        from wmbench.lpips_net import lpips_distance

        t, vae = self._tstate(), self._net()
        vae.train()
        x = batch.to(self.device)
        post = vae.encode(_to_m11(x)).latent_dist
        eps = rng.randn(t["gen"], *post.mean.shape).to(post.mean)
        z = post.mean + post.std * eps  # b c h/8 w/8
        y = vae.decode(z).sample  # b 3 h w in ~[-1,1]
        l1 = (y - _to_m11(x)).abs().mean()
        x_hat = ((y + 1.0) / 2.0).clamp(0, 1)
        perc = lpips_distance(x, x_hat).mean() if t["w"]["perceptual"] > 0 else torch.zeros(())
        kl = post.kl().sum() / x.numel()
        w = t["w"]
        loss = w["l1"] * l1 + w["perceptual"] * perc + w["kl"] * kl
        t["opt"].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        t["opt"].step()
        with torch.no_grad():
            zd = z.detach().double()
            self.moments = self._EMA * self.moments + (1 - self._EMA) * torch.stack(
                [zd.mean(), (zd**2).mean()]
            )
            mse = F.mse_loss(x_hat, x).clamp_min(1e-10)
        return {
            "loss": float(loss.detach()),
            "l1": float(l1.detach()),
            "perceptual": float(perc.detach()),
            "kl": float(kl.detach()),
            "psnr": float(-10 * torch.log10(mse)),
            "latent_std": float(zd.std()),
        }

    def evaluate_model(self, images: Tensor, batch_size: int) -> dict[str, Any]:
        """Reconstruction PSNR / LPIPS of 8-bit outputs (posterior mean).  images: n 3 h w uint8"""
        from wmbench.metrics import lpips, psnr

        vae = self._net()
        was = vae.training
        vae.eval()
        ps, lp = [], []
        with torch.no_grad():
            for i in range(0, images.shape[0], batch_size):
                x = images[i : i + batch_size].float().div(255.0).to(self.device)
                y = quantize_8bit(vae_round_trip(vae, x))
                ps.append(psnr(x, y).cpu())
                lp.append(lpips(x, y).cpu())
        vae.train(was)
        return {
            "psnr": float(torch.cat(ps).mean()),
            "psnr_min": float(torch.cat(ps).min()),
            "lpips": float(torch.cat(lp).mean()),
            "scaling_factor": round(self.scaling_factor(), 5),
            "count": int(images.shape[0]),
        }

    def save_pretrained(self, folder: Path) -> None:
        """diffusers' ``save_pretrained`` in fp16 safetensors, with the estimated ``scaling_factor`` in the config."""
        import copy

        vae = copy.deepcopy(self._net()).cpu().eval()
        vae.register_to_config(scaling_factor=round(self.scaling_factor(), 5))
        vae.to(torch.float16).save_pretrained(str(folder), safe_serialization=True)


def vae_round_trip(vae: nn.Module, x: Tensor) -> Tensor:
    """Decode the posterior mean of x.  # b 3 h w in [0,1] -> b 3 h w in [0,1]"""
    z = vae.encode(_to_m11(x)).latent_dist.mean
    return ((vae.decode(z).sample + 1.0) / 2.0).clamp(0, 1)


def load_vae_folder(who: str, folder: Path) -> nn.Module:
    """An AutoencoderKL from a local diffusers folder, in float32 (WmbenchError naming the folder if broken)."""
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False)
    except Exception as e:  # noqa: BLE001 - diffusers/safetensors raise many types for a broken folder
        raise WmbenchError(f"{who}: cannot load an AutoencoderKL from the folder {folder}: {e}") from None
    return vae.float()


# --------------------------------------------------------------------------------------------------- UNet


def build_unet(arch: dict[str, Any], latent_channels: int) -> nn.Module:
    """An unconditional UNet2DModel on latents: one down/up block per width, attention where ``attention``."""
    from diffusers import UNet2DModel

    widths, attn = list(arch["block_out_channels"]), list(arch["attention"])
    if len(attn) != len(widths):
        raise WmbenchError(f"latent_unet: attention {attn} needs one flag per width {widths}")
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn))
    return UNet2DModel(
        sample_size=16,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=tuple(widths),
        layers_per_block=int(arch["layers_per_block"]),
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=int(arch["norm_num_groups"]),
        attention_head_dim=int(arch["attention_head_dim"]),
    )


def ddim_scheduler() -> Any:
    """The DDIM scheduler config shipped with the UNet (SD's noise schedule, ε prediction, 1000 steps)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULE)


def resolve_vae_folder(who: str, vae: str) -> Path:
    """``builtin`` -> the shipped sd_vae_builtin folder, else a local folder; WmbenchError naming it if absent."""
    folder = shipped_folder(BUILTIN_VAE) if vae == BUILTIN else Path(vae).expanduser()
    if not (folder / "config.json").is_file():
        raise WmbenchError(
            f"{who}: VAE folder {folder} has no config.json (train it: wmbench train {BUILTIN_VAE})"
        )
    return folder


class LatentUnetModel(_DiffusersModel):
    """Trainable latent denoiser (``model.kind: diffusers``, name ``latent_unet``) on a frozen VAE's latents.

    params: ``vae`` (``builtin`` or a diffusers AutoencoderKL folder; its ``scaling_factor`` scales the latents),
    ``t_max`` (training noise steps are uniform in [0, t_max): the regeneration attacks query t ≤ 240, so a short
    CPU budget is spent where it is used; the card records it), and the UNet's architecture.  The loss is SD's:
    MSE between the drawn noise ε and the UNet's prediction at z_t = √ᾱ_t z + √(1−ᾱ_t) ε.  An EMA of the weights
    (decay ``ema``) is what gets saved.

    The frozen VAE's posterior of each distinct training crop is memoised (keyed by its bytes): with full tiles and
    flips that is ~1,000 encodes in all instead of one per sample and step; z is still drawn per step.
    """

    name = "latent_unet"
    _arch_defaults = {**UNET_ARCH_DEFAULTS, "vae": BUILTIN, "t_max": 1000, "ema": 0.999}
    loss_weights: ClassVar[dict[str, float]] = {"eps": 1.0}
    train_stats: ClassVar[tuple[str, ...]] = ("loss",)
    eval_description = (
        "PSNR (dB) of 8-bit regenerations vs the input: VAE round trip (psnr_t0) and noise step t then 50-step "
        "DDIM (psnr_t60, psnr_t120, psnr_t240), EMA weights, seed 0"
    )
    EVAL_T = (0, 60, 120, 240)

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        t_max = self.arch["t_max"]
        if isinstance(t_max, bool) or not isinstance(t_max, int) or not 1 <= t_max <= 1000:
            raise WmbenchError(f"{self.who}: t_max must be an integer in [1, 1000], got {t_max!r}")
        self.unet: nn.Module | None = None
        self.ema: nn.Module | None = None
        self.vae: nn.Module | None = None
        self.sched = ddim_scheduler()
        self._cache: dict[bytes, tuple[Tensor, Tensor]] = {}

    def setup(self, device: torch.device | str) -> None:
        """Load the frozen VAE; build the seeded UNet (or load the checkpoint folder's unet/) and its EMA copy."""
        import copy

        from diffusers import UNet2DModel

        self.device = torch.device(device)
        self.vae = load_vae_folder(self.who, resolve_vae_folder(self.who, str(self.arch["vae"])))
        self.vae.to(self.device).eval().requires_grad_(False)
        c = int(self.vae.config.latent_channels)
        if self.checkpoint is not None:
            try:
                unet = UNet2DModel.from_pretrained(self.checkpoint, subfolder="unet", low_cpu_mem_usage=False)
            except Exception as e:  # noqa: BLE001
                raise WmbenchError(f"{self.who}: cannot load {self.checkpoint}/unet: {e}") from None
            self.unet = unet.float()
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self.unet = build_unet(self.arch, c)
        self.unet.to(self.device)
        self.ema = copy.deepcopy(self.unet).eval().requires_grad_(False)

    def _net(self) -> nn.Module:
        if self.unet is None:
            self.setup(self.device)
        assert self.ema is not None
        return self.ema

    def begin_training(self, *, lr: float, gen: torch.Generator) -> None:
        self._net()
        assert self.unet is not None
        self.unet.requires_grad_(True).train()
        self._train = {"opt": torch.optim.Adam(self.unet.parameters(), lr=lr), "gen": gen, "w": {"eps": 1.0}}

    def training_state(self) -> dict[str, Any]:
        t = self._tstate()
        assert self.unet is not None and self.ema is not None
        return {"net": self.unet.state_dict(), "ema": self.ema.state_dict(), "opt": t["opt"].state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        t = self._tstate()
        assert self.unet is not None and self.ema is not None
        self.unet.load_state_dict(state["net"])
        self.ema.load_state_dict(state["ema"])
        t["opt"].load_state_dict(state["opt"])

    def _posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Memoised posterior mean and std of each crop.  # b 3 h w in [0,1] -> b c h/8 w/8, b c h/8 w/8"""
        assert self.vae is not None
        keys = [bytes(v) for v in (x * 255).round().to(torch.uint8).cpu().flatten(1).numpy()]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        if todo:
            with torch.no_grad():
                post = self.vae.encode(_to_m11(x[todo])).latent_dist
            for j, i in enumerate(todo):
                self._cache[keys[i]] = (post.mean[j].cpu(), post.std[j].cpu())
        mean = torch.stack([self._cache[k][0] for k in keys]).to(x.device)
        std = torch.stack([self._cache[k][1] for k in keys]).to(x.device)
        return mean, std

    def train_step(self, batch: Tensor, noise: Callable[[Tensor, Tensor], Tensor]) -> dict[str, float]:
        """One ε-prediction step on b 3 h w crops (``noise`` unused): z ~ q(z|x)·sf, t ~ U[0, t_max)."""
        t, unet, ema = self._tstate(), self.unet, self.ema
        assert unet is not None and ema is not None and self.vae is not None
        unet.train()
        g = t["gen"]
        x = batch.to(self.device)
        mean, std = self._posterior(x)
        b = x.shape[0]
        sf = float(self.vae.config.scaling_factor)
        z = (mean + std * rng.randn(g, b, *mean.shape[1:]).to(mean)) * sf  # b c h/8 w/8
        ts = rng.randint(g, 0, int(self.arch["t_max"]), b).to(self.device)
        eps = rng.randn(g, b, *z.shape[1:]).to(z)
        ac = self.sched.alphas_cumprod.to(z)[ts].view(b, 1, 1, 1)
        zt = ac.sqrt() * z + (1 - ac).sqrt() * eps
        loss = F.mse_loss(unet(zt, ts).sample, eps)
        t["opt"].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        t["opt"].step()
        with torch.no_grad():
            d = float(self.arch["ema"])
            for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(p.detach(), 1.0 - d)
        return {"loss": float(loss.detach())}

    def evaluate_model(self, images: Tensor, batch_size: int) -> dict[str, Any]:
        """Regeneration PSNR of 8-bit outputs at EVAL_T (EMA weights, 50 DDIM steps).  images: n 3 h w uint8"""
        from wmbench.attacks.regeneration import ddim_regenerate

        from wmbench.metrics import psnr

        ema, vae = self._net(), self.vae
        assert vae is not None
        out: dict[str, Any] = {}
        for tt in self.EVAL_T:
            gen = torch.Generator().manual_seed(0)
            ps = []
            with torch.no_grad():
                for i in range(0, images.shape[0], batch_size):
                    x = images[i : i + batch_size].float().div(255.0).to(self.device)
                    y = ddim_regenerate(
                        vae,
                        lambda z, t: ema(z, t).sample,
                        self.sched.alphas_cumprod,
                        "epsilon",
                        x,
                        tt,
                        50,
                        gen,
                    )
                    ps.append(psnr(x, quantize_8bit(y)).cpu())
            out[f"psnr_t{tt}"] = float(torch.cat(ps).mean())
        out["count"] = int(images.shape[0])
        return out

    def save_pretrained(self, folder: Path) -> None:
        """``unet/`` (the EMA weights, fp16 safetensors) and ``scheduler/`` (DDIM config) in diffusers' layout."""
        import copy

        unet = copy.deepcopy(self._net()).cpu()
        unet.to(torch.float16).save_pretrained(str(Path(folder) / "unet"), safe_serialization=True)
        self.sched.save_pretrained(str(Path(folder) / "scheduler"))
