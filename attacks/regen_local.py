"""``regen_local``: a small learned image codec trained here and shipped, used as a regeneration attack.

Architecture: Ballé et al.'s factorized-prior autoencoder (bmshj2018-factorized, as in CompressAI) with fewer
channels: analysis ``g_a`` = ``levels`` stride-2 5×5 convs with GDN (3 → N → … → M; 4 levels = the paper's 16×
downsampling, the shipped codec uses 3 = 8×), synthesis ``g_s`` the mirror with inverse GDN, and CompressAI's
``EntropyBottleneck`` (a learned per-channel density) as the prior.

Strength ``r`` in [0, 1] is a rate knob: the latent is quantised with step ``Δ = max_step ** r`` around the prior's
medians (r = 0: the trained rate, Δ = 1; r = 1: Δ = max_step, 8 by default), so a higher r means fewer bits and a
coarser reconstruction.  Training draws r uniformly per image (rate from additive uniform noise of width Δ, the
decoder sees the rounded latent straight-through, distortion weight λ(r) falling with r), so one network serves
every r.

``apply`` is the real operation: the rounded latent is entropy-coded with CompressAI's rANS coder under the prior's
probability of each step-Δ bin, decoded from the bit strings and synthesised; ``last_stats["bpp"]`` holds the coded
bits per pixel of each image (b), measured on the strings.  Any image size works: it is replicate-padded to a
multiple of 2^levels and cropped back.  ``forward_st`` is the differentiable stand-in for training (latent rounded
straight-through, gradients through the codec).

Weights: ``params.checkpoint`` (a ``.safetensors`` written by ``wmbench train``; its metadata holds the
architecture), else the shipped ``wmbench/weights/regen_local.safetensors``; with neither the attack raises
SkipCell (never random weights).  ``init: random`` (+ ``seed``) builds a seeded random-init net: only for tests and
for the trainer (``wmbench train regen_local``, config ``wmbench/configs/regen_local.yaml``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from wmbench.api import Attack, Method, SkipCell, TrainingHooks, WmbenchError, quantize_8bit
from wmbench.checkpoints import WEIGHTS_PACKAGE, check_agrees, check_init, locate, read_arch
from wmbench.params import Int, Num, PluginParams, WeightsStem
from wmbench.rng import Gen

from .regeneration import _pad_to, params_label

#: architecture params (stored in the checkpoint's metadata) and their defaults
ARCH_DEFAULTS: dict[str, Any] = {"N": 64, "M": 96, "max_step": 8.0, "levels": 4}
_LIK_MIN = 1e-9
#: relative strengths the card's evaluation reports
EVAL_STRENGTHS = (0.0, 0.5, 1.0)


class Codec(nn.Module):
    """bmshj2018-factorized with N/M channels and ``levels`` stride-2 stages (4 as in the paper: 16×; 3: 8×, for
    high-fidelity rates a small net cannot reach through a 16× bottleneck).
    g_a: b 3 h w -> b M h/2^levels w/2^levels; g_s: the inverse."""

    def __init__(self, n: int, m: int, levels: int = 4) -> None:
        from compressai.entropy_models import EntropyBottleneck
        from compressai.layers import GDN

        super().__init__()

        def down(cin: int, cout: int) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 5, stride=2, padding=2)

        def up(cin: int, cout: int) -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1)

        mid_a = [layer for _ in range(levels - 2) for layer in (down(n, n), GDN(n))]
        mid_s = [layer for _ in range(levels - 2) for layer in (up(n, n), GDN(n, inverse=True))]
        self.g_a = nn.Sequential(down(3, n), GDN(n), *mid_a, down(n, m))
        self.g_s = nn.Sequential(up(m, n), GDN(n, inverse=True), *mid_s, up(n, 3))
        self.factor = 2**levels
        self.entropy_bottleneck = EntropyBottleneck(m)

    def medians(self) -> Tensor:
        """Per-channel medians of the prior.  -> 1 M 1 1"""
        return self.entropy_bottleneck.quantiles[:, 0, 1].detach().view(1, -1, 1, 1)

    def likelihood(self, y: Tensor, delta: Tensor | float) -> Tensor:
        """Prior probability of the width-Δ bin centred at each latent value.  b M h w (, Δ: b 1 1 1) -> b M h w"""
        eb = self.entropy_bottleneck
        b, c, h, w = y.shape
        d = torch.as_tensor(delta, dtype=y.dtype, device=y.device).expand(b, 1, h, w)
        v = y.permute(1, 0, 2, 3).reshape(c, 1, -1)  # M 1 n, the layout the bottleneck's density takes
        half = (d / 2).permute(1, 0, 2, 3).reshape(1, 1, -1)
        lower = eb._logits_cumulative(v - half, stop_gradient=False)
        upper = eb._logits_cumulative(v + half, stop_gradient=False)
        sign = -torch.sign(lower + upper).detach()  # the side of the median where sigmoid is precise
        lik = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        lik = lik.reshape(c, b, h, w).permute(1, 0, 2, 3)
        return lik.clamp_min(_LIK_MIN)


def _distortion_term(x_hat: Tensor, x: Tensor, r: Tensor, wt: dict[str, float]) -> Tensor:
    """λ(r)·MSE, λ geometric in r from ``distortion`` (r = 0) to ``distortion_strong`` (r = 1).  x: b 3 h w, r: b 1 1 1

    A rate-dependent λ lets one network span the zoo's quality levels: the fine steps are trained for fidelity
    (high λ), the coarse ones for rate."""
    lam0 = wt["distortion"]
    lam1 = wt.get("distortion_strong", 0.0) or lam0
    if lam1 == lam0:
        return lam0 * F.mse_loss(x_hat, x)
    lam = lam0 * (lam1 / lam0) ** r.flatten()  # b
    per_image = (x_hat - x).pow(2).flatten(1).mean(1)  # b
    return (lam * per_image).mean()


def quantize(y: Tensor, medians: Tensor, delta: Tensor | float) -> Tensor:
    """Round to the step-Δ grid anchored at the medians.  b M h w -> b M h w"""
    return torch.round((y - medians) / delta) * delta + medians


class RegenLocal(TrainingHooks, Attack):
    """Learned factorized-prior codec trained by wmbench; see the module docstring.

    Params: ``checkpoint`` (path), ``weights`` (shipped file stem, default "regen_local"), ``init`` ("random" for a
    seeded random-init net), ``seed``; architecture (``N`` 64, ``M`` 96, ``max_step`` 8.0) taken from the
    checkpoint when one is given (explicit values must agree).
    """

    name = "regen_local"
    stand_in_gradient = True  # forward_st: the codec with its latent rounded straight-through
    description = "learned factorized-prior codec trained by wmbench (real entropy coding, shipped weights)"
    unit = "rate knob r (latent step 8^r; 0 = trained rate)"
    family = "regeneration"
    differentiable = False
    default_strengths = (0.0, 0.5, 1.0)
    strength_range = (0.0, 1.0)
    #: training loss: λ(r)·MSE + rate·bpp with λ(r) = distortion·(distortion_strong/distortion)**r, geometric in r
    #: between the weights at r = 0 and r = 1 (CompressAI's λ × 255²: 845 = quality 4, 11700 = quality 8); a
    #: distortion_strong of 0 means "the same as distortion" (one λ for every step)
    loss_weights: ClassVar[dict[str, float]] = {"distortion": 845.0, "distortion_strong": 0.0, "rate": 1.0}
    train_stats: ClassVar[tuple[str, ...]] = ("loss", "mse", "psnr", "bpp", "aux_loss")
    eval_description = (
        "PSNR (dB) of 8-bit reconstructions vs the input and coded bits per pixel (real rANS strings), at "
        "relative strengths 0 / 0.5 / 1 (keys psnr, bpp; psnr_r0.5, bpp_r0.5; psnr_r1, bpp_r1)"
    )

    class Params(PluginParams):
        checkpoint: str | None = Field(None, min_length=1, description="a codec checkpoint (path)")
        weights: WeightsStem | None = Field(None, description="a shipped codec's stem (default regen_local)")
        init: Literal["random"] | None = Field(
            None, description="random: a seeded random-init net (training)"
        )
        seed: int = Int(0, ge=0, le=2**63 - 1, description="seed of the random init")
        N: int = Int(
            ARCH_DEFAULTS["N"], ge=1, le=1024, description="architecture: channels of the transforms"
        )
        M: int = Int(ARCH_DEFAULTS["M"], ge=1, le=1024, description="architecture: latent channels")
        max_step: float = Num(
            ARCH_DEFAULTS["max_step"], ge=1, le=1e6, description="architecture: latent step at strength 1"
        )
        levels: int = Int(
            ARCH_DEFAULTS["levels"], ge=2, le=6, description="architecture: stride-2 stages (4: 16x, 3: 8x)"
        )

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.p
        checkpoint, weights, init = p.checkpoint, p.weights, p.init
        arch_given = {k: getattr(p, k) for k in ARCH_DEFAULTS if k in p.model_fields_set}
        check_init(f"attack {self.name!r}", init, checkpoint is not None)
        self.init, self.seed = init, p.seed
        self.weights_name = weights or self.name
        who = f"attack {self.name!r}"
        self.ckpt_path = locate(who, checkpoint, self.weights_name) if init is None else None
        stored = read_arch(who, self.ckpt_path, ("regen_local",))[1] if self.ckpt_path else {}
        check_agrees(who, arch_given, stored, self.ckpt_path)
        self.arch: dict[str, Any] = {**ARCH_DEFAULTS, **stored, **arch_given}
        self.arch["max_step"] = float(self.arch["max_step"])
        self.params: dict[str, Any] = {
            **arch_given,
            **({"checkpoint": checkpoint} if checkpoint is not None else {}),
            **({"weights": weights} if weights not in (None, self.name) else {}),
            **({"init": init, "seed": self.seed} if init else {}),
        }
        self.net: Codec | None = None
        self.device = torch.device("cpu")
        self._hash = ""
        self._tables: dict[float, tuple[list[list[int]], list[int], list[int]]] = {}
        self._train: dict[str, Any] | None = None
        self.last_stats: dict[str, Tensor] = {}

    @classmethod
    def tiny_params(cls) -> dict[str, Any]:
        """A tiny seeded random-init instance for the contract tests."""
        return {"init": "random", "N": 8, "M": 8}

    def label(self) -> str:
        return params_label(self.name, self.params, {})

    # ------------------------------------------------------------------------------------------ weights
    def setup(self, device: torch.device | str) -> None:
        """Build the codec and load its weights (checkpoint, shipped file, or seeded random init)."""
        self.device = torch.device(device)
        if self.init is None and self.ckpt_path is None:
            raise SkipCell(
                f"attack {self.name!r}: no weights: no params.checkpoint given and the shipped file "
                f"{WEIGHTS_PACKAGE}/{self.weights_name}.safetensors is not installed. Train one with "
                f"`wmbench train {self.name}` (config wmbench/configs/{self.name}.yaml), then pass "
                f"params: {{checkpoint: <out dir>/{self.name}.safetensors}}"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = Codec(self.arch["N"], self.arch["M"], int(self.arch["levels"]))
        if self.ckpt_path is not None:
            from safetensors.torch import load_file

            sd = load_file(str(self.ckpt_path))
            missing, unexpected = net.load_state_dict(sd, strict=False)
            missing = [k for k in missing if k not in _CODER_BUFFERS]
            if missing or unexpected:
                raise WmbenchError(
                    f"attack {self.name!r}: {self.ckpt_path} does not fit the architecture {self.arch} "
                    f"(missing {missing[:4]}, unexpected {unexpected[:4]})"
                )
        self.net = net.to(self.device).eval().requires_grad_(False)
        self._tables = {}
        self._hash = hashlib.sha256(
            b"".join(
                k.encode() + v.detach().cpu().contiguous().numpy().tobytes()
                for k, v in sorted(self.export_weights().items())
            )
        ).hexdigest()[:16]

    def _ready(self, device: torch.device | None = None) -> Codec:
        if self.net is None:
            self.setup(device if device is not None else self.device)
        assert self.net is not None
        if device is not None and device != self.device:
            self.net.to(device)
            self.device = device
        return self.net

    def weights_hash(self) -> str:
        return self._hash

    def export_weights(self) -> dict[str, Tensor]:
        """The codec's parameters and the prior's quantiles (the rANS tables are rebuilt from them)."""
        net = self._ready()
        sd = {k: v for k, v in net.state_dict().items() if k not in _CODER_BUFFERS}
        return {k: v.detach().cpu().contiguous() for k, v in sd.items()}

    def architecture(self) -> dict[str, Any]:
        """The params that rebuild this codec (stored in the checkpoint metadata and the card)."""
        return dict(self.arch)

    # ------------------------------------------------------------------------------------------ inference
    def check_strength(self, strength: float) -> None:
        self.step(strength)

    def step(self, strength: float) -> float:
        """The latent quantisation step Δ of a relative strength r: max_step ** r."""
        if not (isinstance(strength, int | float) and math.isfinite(strength) and 0.0 <= strength <= 1.0):
            raise WmbenchError(
                f"attack {self.name!r}: strength {strength} must be in [0, 1] (the rate knob r)"
            )
        return float(self.arch["max_step"] ** float(strength))

    def _coder_tables(self, delta: float) -> tuple[list[list[int]], list[int], list[int]]:
        """Quantised CDFs of the prior on the step-Δ grid, per channel: (cdfs, cdf lengths, offsets)."""
        if delta in self._tables:
            return self._tables[delta]
        net = self._ready()
        eb = net.entropy_bottleneck
        with torch.no_grad():
            q = eb.quantiles[:, 0, :].detach().float()  # M 3: lower tail, median, upper tail
            med = q[:, 1]
            minima = torch.ceil((med - q[:, 0]) / delta).int().clamp_min(0)
            maxima = torch.ceil((q[:, 2] - med) / delta).int().clamp_min(0)
            pmf_length = minima + maxima + 1
            max_length = int(pmf_length.max())
            k = torch.arange(max_length, device=q.device)[None, :] - minima[:, None]  # M L
            v = (med[:, None] + k * delta)[:, None, :]  # M 1 L
            lower = eb._logits_cumulative(v - delta / 2, stop_gradient=True)
            upper = eb._logits_cumulative(v + delta / 2, stop_gradient=True)
            sign = -torch.sign(lower + upper)
            pmf = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()[:, 0, :]  # M L
            first = lower[:, 0, :1]
            last = upper[:, 0, :].gather(1, (pmf_length - 1).long()[:, None])
            tail = torch.sigmoid(first) + torch.sigmoid(-last)  # M 1
            cdf = eb._pmf_to_cdf(pmf.cpu(), tail.cpu(), pmf_length.cpu(), max_length)
        tables = (cdf.tolist(), (pmf_length + 2).tolist(), (-minima).tolist())
        self._tables[delta] = tables
        return tables

    def _code(self, y: Tensor, delta: float) -> tuple[Tensor, list[bytes]]:
        """Entropy-code the step-Δ symbols of each image and decode them back.  b M h w -> b M h w, strings"""
        from compressai.ans import RansDecoder, RansEncoder

        net = self._ready()
        cdfs, lengths, offsets = self._coder_tables(delta)
        med = net.medians().to(y)
        sym = torch.round((y - med) / delta).to(torch.int32).cpu()  # b M h w
        b, c, h, w = sym.shape
        idx = torch.arange(c, dtype=torch.int32).view(c, 1, 1).expand(c, h, w).reshape(-1).tolist()
        enc, dec = RansEncoder(), RansDecoder()
        strings, out = [], []
        for i in range(b):
            s = enc.encode_with_indexes(sym[i].reshape(-1).tolist(), idx, cdfs, lengths, offsets)
            strings.append(s)
            out.append(torch.tensor(dec.decode_with_indexes(s, idx, cdfs, lengths, offsets)).view(c, h, w))
        vals = torch.stack(out).to(y)  # b M h w, decoded from the strings
        return vals * delta + med, strings

    def apply(
        self,
        x: Tensor,
        strength: float,
        *,
        gen: Gen,
        method: Method | None = None,
        cover: Tensor | None = None,
    ) -> Tensor:
        delta = self.step(strength)
        net = self._ready(x.device)
        h, w = x.shape[-2:]
        with torch.no_grad():
            xp = _pad_to(x.detach().float().clamp(0, 1), net.factor)  # b 3 h' w'
            y_hat, strings = self._code(net.g_a(xp), delta)
            out = net.g_s(y_hat)[..., :h, :w]  # b 3 h w
        self.last_stats = {
            "bpp": torch.tensor([len(s) for s in strings], dtype=torch.float64) * 8.0 / (h * w)
        }
        return out.clamp(0, 1).to(x.dtype)

    def forward_st(self, x: Tensor, strength: float, *, gen: Gen, cover: Tensor | None = None) -> Tensor:
        """Differentiable stand-in: the same codec with the latent rounded straight-through (no entropy coding;
        the value equals ``apply``'s up to float error).  b 3 h w -> b 3 h w"""
        delta = self.step(strength)
        net = self._ready(x.device)
        h, w = x.shape[-2:]
        y = net.g_a(_pad_to(x.float(), net.factor))
        y_hat = y + (quantize(y, net.medians().to(y), delta) - y).detach()
        return net.g_s(y_hat)[..., :h, :w].clamp(0, 1).to(x.dtype)

    def encoder(self) -> _Encoder:
        """The analysis transform behind the AutoencoderKL-like interface ``vae_embedding`` attacks."""
        net = self._ready()
        return _Encoder(net.g_a, net.factor)

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate_model(self, images: Tensor, batch_size: int) -> dict[str, Any]:
        """PSNR of the 8-bit reconstructions and coded bpp at EVAL_STRENGTHS.  images: n 3 h w uint8"""
        from wmbench.metrics import psnr

        net = self._ready()
        was_training = net.training
        net.eval()
        gen = torch.Generator().manual_seed(0)
        out: dict[str, Any] = {}
        for r in EVAL_STRENGTHS:
            ps, bpp = [], []
            for i in range(0, images.shape[0], batch_size):
                x = images[i : i + batch_size].float().div(255.0).to(self.device)
                y = quantize_8bit(self.apply(x, r, gen=gen))
                ps.append(psnr(x, y).cpu())
                bpp.append(self.last_stats["bpp"])
            key = "" if r == 0 else f"_r{r:g}"
            out[f"psnr{key}"] = float(torch.cat(ps).mean())
            out[f"bpp{key}"] = float(torch.cat(bpp).mean())
        out["count"] = int(images.shape[0])
        net.train(was_training)
        return out

    # ------------------------------------------------------------------------------------------ training
    def begin_training(self, *, lr: float, gen: torch.Generator) -> None:
        """Trainable codec, Adam on the transforms + density, a second Adam (lr 1e-3) on the prior's quantiles."""
        net = self._ready()
        net.requires_grad_(True)
        aux = [p for n, p in net.named_parameters() if n.endswith("quantiles")]
        main = [p for n, p in net.named_parameters() if not n.endswith("quantiles")]
        self._train = {
            "opt": torch.optim.Adam(main, lr=lr),
            "opt_aux": torch.optim.Adam(aux, lr=1e-3),
            "gen": gen,
            "w": dict(self.loss_weights),
        }

    def training_state(self) -> dict[str, Any]:
        t = self._tstate()
        return {
            "net": self._ready().state_dict(),
            "opt": t["opt"].state_dict(),
            "opt_aux": t["opt_aux"].state_dict(),
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        t = self._tstate()
        self._ready().load_state_dict(state["net"])
        t["opt"].load_state_dict(state["opt"])
        t["opt_aux"].load_state_dict(state["opt_aux"])

    def train_step(self, batch: Tensor, noise: Callable[[Tensor, Tensor], Tensor]) -> dict[str, float]:
        """One rate–distortion step on b 3 h w crops (``noise`` is unused: the codec is the distortion).

        Per image r ~ U[0, 1], Δ = max_step ** r; the rate is −log2 of the prior's mass of the width-Δ bin around
        y + Δ·U(−½, ½); the decoder sees y rounded on the Δ grid (straight-through).  Loss: distortion·MSE +
        rate·bpp; the prior's quantiles follow CompressAI's auxiliary loss."""
        t = self._tstate()
        net = self._ready()
        net.train()
        x = batch.to(self.device)
        b, _, h, w = x.shape
        g = t["gen"]
        r = torch.rand(b, 1, 1, 1, generator=g).to(x)
        delta = self.arch["max_step"] ** r  # b 1 1 1
        y = net.g_a(x)
        u = (torch.rand(y.shape, generator=g).to(y) - 0.5) * delta
        lik = net.likelihood(y + u, delta)
        bpp = -torch.log2(lik).sum() / (b * h * w)
        y_hat = y + (quantize(y, net.medians().to(y), delta) - y).detach()
        x_hat = net.g_s(y_hat)
        wt = t["w"]
        mse = F.mse_loss(x_hat, x)
        loss = _distortion_term(x_hat, x, r, wt) + wt["rate"] * bpp
        t["opt"].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for gr in t["opt"].param_groups for p in gr["params"]], 1.0)
        t["opt"].step()
        aux = net.entropy_bottleneck.loss()
        t["opt_aux"].zero_grad(set_to_none=True)
        aux.backward()
        t["opt_aux"].step()
        with torch.no_grad():
            mse_c = F.mse_loss(x_hat.clamp(0, 1), x).clamp_min(1e-10)
        return {
            "loss": float(loss.detach()),
            "mse": float(mse.detach()),
            "psnr": float(-10 * torch.log10(mse_c)),
            "bpp": float(bpp.detach()),
            "aux_loss": float(aux.detach()),
        }


#: entropy-coder buffers of CompressAI's bottleneck (built from the density; not part of the weights)
_CODER_BUFFERS = (
    "entropy_bottleneck._offset",
    "entropy_bottleneck._quantized_cdf",
    "entropy_bottleneck._cdf_length",
)


class _Latent:
    def __init__(self, mean: Tensor) -> None:
        self.mean = mean


class _Encoded:
    def __init__(self, mean: Tensor) -> None:
        self.latent_dist = _Latent(mean)


class _Encoder(nn.Module):
    """``encode(2x − 1).latent_dist.mean`` = g_a(x) (unquantised), the interface ``vae_embedding`` uses."""

    def __init__(self, g_a: nn.Module, factor: int) -> None:
        super().__init__()
        self.g_a = g_a
        self.factor = factor

    def encode(self, z: Tensor) -> _Encoded:
        return _Encoded(self.g_a(_pad_to((z + 1.0) / 2.0, self.factor)))
