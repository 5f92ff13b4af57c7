"""SpecGuard (Alam, Islam, Muhammad, Woo, ICCV'25): a message hidden in the spectrum of a wavelet detail band.

Pipeline (``x`` b 3 h w in [0, 1]; transforms per colour channel, all orthonormal, hence exactly invertible and
energy-preserving, so a change of the coefficients costs the same MSE in pixels):

1. one-level Haar (db1) DWT -> LL, LH, HL, HH (each b 3 h/2 w/2); ``band`` picks the detail band (default HH,
   as in the paper and its public code);
2. spectral projection of that band: the FFT of its symmetric extension (n -> 2n along each axis), whose real part
   after a half-sample phase shift is the orthonormal DCT-II (``dct2``; inverse ``idct2`` via a zero-padded inverse
   FFT);
3. encoder: conv features of the coefficients (+ 2 frequency-coordinate channels); the ±1 message goes through a
   linear layer to a ``map_channels × map_size × map_size`` spectral map on *normalised* frequency cells, which is
   spread over the coefficients of each cell and added to the features; a head (conv, then a 1×1 conv with a
   linear path from the message map) gives a change bounded by ``tanh`` and scaled by the strength ``s``; it is
   added only to coefficients inside the radial mask;
4. inverse DCT, inverse DWT: the watermark is the residual of the modified band alone (LL, LH, HL untouched).

Decoder: the same forward transforms on the received image, conv features of the coefficients, masked mean over
each spectral cell, a linear read-out to one score per bit and a learnable per-bit threshold θ:
``logit = logit_scale · (score − θ)`` (bit 1 iff score > θ).

Units, so that one net runs at any size (fully convolutional; size-agnostic mask):

* ``radius``: the radial mask, as a fraction of the band side: coefficient (u, v) of an n × m band is inside when
  ``sqrt((u/n − 1/2)² + (v/m − 1/2)²) ≤ radius`` — centred at (n/2, m/2) like the paper.  The public run's radius
  of 50 coefficients on the 128² band of a 256² image is ``50/128 = 0.390625`` (the default); the mask is then
  exactly the paper's at 256², and the same region of normalised frequency at every other size.
* ``strength``: the largest change of one orthonormal spectral coefficient, in 8-bit levels (1/255).  It bounds
  the distortion: MSE ≤ (strength/255)² × (masked fraction of the band) / 4, i.e. PSNR ≥ ~41.0 dB at strength
  6.5 and radius 0.39 (before clamping to [0, 1], which can only lower the error).  ``strength`` is stored with
  the weights (the value trained with); giving another one at embedding scales the watermark (the decoder is
  unchanged).
* ``map_size``: message cells per side of the band's spectrum; cell of coefficient u is ``floor(u · map_size /
  n)``, so a 256² image has 8×8 coefficients per cell at map_size 16 and a 64² image 2×2 (images below
  ``2 · map_size`` pixels a side leave cells empty and lose capacity).  Odd sizes are padded by one replicated
  row/column for the transforms; the residual is cropped back.

Differences from the paper / public code (tanvirnwu/SpecGuard_ICCV_2025): the public encoder *replaces* the band
by its network output and adds the message at the first ``nbits`` coefficients of the mask (raster order) on one
feature channel, decoding them against their mean; here the net predicts a bounded *change* of the masked
coefficients only (the rest of the image is untouched by construction) and every bit is spread over the whole
mask by the learned linear map, read back by a learned matched filter.  No BatchNorm (LeakyReLU as in the paper),
so train and eval modes agree.  Losses: image MSE (weight 0.7) and message BCE on logits (weight 1; the paper uses
MSE on bits).  Optimisers: Adam, encoder at ``encoder_lr_scale`` × the trainer's lr (the public run: encoder 1e-2,
decoder 1e-3, i.e. scale 10).

Weights: ``params.checkpoint`` (a ``.safetensors`` written by ``wmbench train``; its metadata holds the
architecture), else the shipped ``wmbench/weights/<weights>.safetensors``; with neither, ``setup`` raises SkipCell.
``init: random`` (+ ``seed``) builds a seeded random-init net: only for tests and for the trainer.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from wmbench.api import SkipCell, TrainableMethod, TrainingHooks, WmbenchError
from wmbench.checkpoints import WEIGHTS_PACKAGE, check_agrees, check_init, locate, read_arch
from wmbench.params import Int, Num, PluginParams, WeightsStem

from .classic import check_batch

BANDS = ("LH", "HL", "HH")
#: architecture params (stored in the checkpoint's metadata) and their defaults
ARCH_DEFAULTS: dict[str, Any] = {
    "nbits": 64,
    "band": "HH",
    "radius": 50 / 128,
    "strength": 6.5,
    "width": 32,
    "enc_depth": 2,
    "dec_depth": 2,
    "map_size": 16,
    "map_channels": 8,
    "dec_channels": 8,
    "logit_scale": 1.0,
}
#: spectral coefficients are multiplied by this before the convs (HH coefficients of photos are ~0.01-0.1)
IN_GAIN = 32.0


# ------------------------------------------------------------------------------------------------ transforms
def haar_dwt(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One-level orthonormal Haar DWT per channel.  b c h w (h, w even) -> LL, LH, HL, HH, each b c h/2 w/2.

    HH equals pywt's diagonal detail ``cD`` of ``dwt2(x, 'haar')``; LH/HL are its cH/cV up to sign.
    """
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return (a + b + c + d) / 2, (a + b - c - d) / 2, (a - b + c - d) / 2, (a - b - c + d) / 2


def haar_idwt(ll: Tensor, lh: Tensor, hl: Tensor, hh: Tensor) -> Tensor:
    """Inverse of ``haar_dwt``.  4 × b c n m -> b c 2n 2m"""
    a = (ll + lh + hl + hh) / 2
    b = (ll + lh - hl - hh) / 2
    c = (ll - lh + hl - hh) / 2
    d = (ll - lh - hl + hh) / 2
    top = torch.stack([a, b], dim=-1).flatten(-2)  # b c n 2m (a b a b ...)
    bot = torch.stack([c, d], dim=-1).flatten(-2)
    return torch.stack([top, bot], dim=-2).flatten(-3, -2)  # b c 2n 2m


def _dct_scale(n: int, like: Tensor) -> Tensor:
    s = torch.full((n,), math.sqrt(2.0 / n), dtype=like.dtype, device=like.device)
    s[0] = math.sqrt(1.0 / n)
    return s


def _phase(n: int, like: Tensor, sign: float) -> Tensor:
    k = torch.arange(n, dtype=like.dtype, device=like.device)
    return torch.polar(torch.ones_like(k), sign * math.pi * k / (2 * n))


def dct1(x: Tensor) -> Tensor:
    """Orthonormal DCT-II along the last axis, as the FFT of the symmetric extension.  ... n -> ... n

    FFT of [x, reversed x] (length 2n), bin k times exp(−iπk/2n), is 2·Σ x_j cos(πk(2j+1)/2n): real.
    """
    n = x.shape[-1]
    v = torch.fft.rfft(torch.cat([x, x.flip(-1)], dim=-1), dim=-1)[..., :n]
    return (v * _phase(n, x, -1.0)).real * (_dct_scale(n, x) / 2)


def idct1(z: Tensor) -> Tensor:
    """Inverse of ``dct1`` (orthonormal DCT-III) via a zero-padded inverse FFT of length 2n.  ... n -> ... n"""
    n = z.shape[-1]
    y = (z * _dct_scale(n, z)) * _phase(n, z, 1.0)  # complex
    return (torch.fft.ifft(y, n=2 * n, dim=-1)[..., :n].real) * (2 * n)


def dct2(x: Tensor) -> Tensor:
    """2-D orthonormal DCT-II over the last two axes.  ... n m -> ... n m"""
    return dct1(dct1(x).transpose(-1, -2)).transpose(-1, -2)


def idct2(z: Tensor) -> Tensor:
    """Inverse of ``dct2``.  ... n m -> ... n m"""
    return idct1(idct1(z).transpose(-1, -2)).transpose(-1, -2)


@lru_cache(maxsize=64)
def _grid(n: int, m: int, radius: float, p: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(mask 1 1 n m, coords 1 2 n m, cell one-hots n p and m p) for an n × m band (CPU, float32)."""
    fu = torch.arange(n, dtype=torch.float32) / n - 0.5
    fv = torch.arange(m, dtype=torch.float32) / m - 0.5
    dist = torch.sqrt(fu[:, None] ** 2 + fv[None, :] ** 2)
    mask = (dist <= radius).float()[None, None]
    coords = torch.stack([fu[:, None].expand(n, m), fv[None, :].expand(n, m)])[None]
    ah = F.one_hot(torch.arange(n) * p // n, p).float()  # n p
    aw = F.one_hot(torch.arange(m) * p // m, p).float()  # m p
    return mask, coords, ah, aw


def band_mask(n: int, m: int, radius: float) -> Tensor:
    """The radial mask of an n × m band's spectrum (1 = may be changed).  -> n m"""
    return _grid(n, m, float(radius), 1)[0][0, 0].clone()


class Spectral:
    """The shared forward/inverse transforms for one image size (pads odd sizes by one replicated row/column)."""

    def __init__(self, h: int, w: int, band: str, radius: float, p: int, device: torch.device) -> None:
        self.h, self.w = h, w
        self.ph, self.pw = h % 2, w % 2
        self.idx = BANDS.index(band) + 1
        n, m = (h + self.ph) // 2, (w + self.pw) // 2
        mask, coords, ah, aw = _grid(n, m, float(radius), p)
        self.mask, self.coords = mask.to(device), coords.to(device)
        self.ah, self.aw = ah.to(device), aw.to(device)
        self.count = torch.einsum("hp,hw,wq->pq", self.ah, self.mask[0, 0], self.aw)  # p p

    def forward(self, x: Tensor) -> Tensor:
        """Spectral coefficients of the band.  b 3 h w -> b 3 n m"""
        if self.ph or self.pw:
            x = F.pad(x, (0, self.pw, 0, self.ph), mode="replicate")
        return dct2(haar_dwt(x)[self.idx])

    def residual(self, dz: Tensor) -> Tensor:
        """The image change that a change of the band's coefficients makes.  b 3 n m -> b 3 h w"""
        band = idct2(dz)
        zero = torch.zeros_like(band)
        parts = [zero, zero, zero, zero]
        parts[self.idx] = band
        return haar_idwt(*parts)[..., : self.h, : self.w]

    def spread(self, m: Tensor) -> Tensor:
        """A per-cell map onto the coefficients.  b c p p -> b c n m"""
        return torch.einsum("bcpq,hp,wq->bchw", m, self.ah, self.aw)

    def pool(self, f: Tensor) -> Tensor:
        """Mean of the masked coefficients of each cell (0 for cells without any).  b c n m -> b c p p"""
        s = torch.einsum("bchw,hp,wq->bcpq", f * self.mask, self.ah, self.aw)
        return s / self.count.clamp_min(1.0)


# ------------------------------------------------------------------------------------------------ nets
def _conv_act(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2, inplace=True))


class Encoder(nn.Module):
    """Coefficients + message -> bounded change in [−1, 1] of each coefficient.  b 3 n m, b k -> b 3 n m"""

    def __init__(self, a: dict[str, Any]) -> None:
        super().__init__()
        w, p, mc = a["width"], a["map_size"], a["map_channels"]
        self.p, self.mc = p, mc
        self.msg = nn.Linear(a["nbits"], mc * p * p)
        self.features = nn.Sequential(
            _conv_act(3 + 2, w), *[_conv_act(w, w) for _ in range(a["enc_depth"] - 1)]
        )
        self.msg_in = nn.Conv2d(mc, w, 1)
        self.after = _conv_act(w, w)
        self.out = nn.Conv2d(w + mc, 3, 1)

    def forward(self, z: Tensor, bits: Tensor, sp: Spectral) -> Tensor:
        b = z.shape[0]
        m = sp.spread(self.msg(bits).view(b, self.mc, self.p, self.p))  # b mc n m
        f = self.features(torch.cat([z * IN_GAIN, sp.coords.expand(b, -1, -1, -1)], dim=1))
        f = self.after(f + self.msg_in(m))  # the message added on the features
        return torch.tanh(self.out(torch.cat([f, m], dim=1)))


class Decoder(nn.Module):
    """Coefficients -> per-bit scores minus the learnable thresholds, scaled.  b 3 n m -> b k"""

    def __init__(self, a: dict[str, Any]) -> None:
        super().__init__()
        w, p, c, k = a["width"], a["map_size"], a["dec_channels"], a["nbits"]
        self.features = nn.Sequential(
            _conv_act(3 + 2, w), *[_conv_act(w, w) for _ in range(a["dec_depth"] - 1)]
        )
        self.to_c = nn.Conv2d(w + 3, c, 1)  # with a linear path from the coefficients
        self.head = nn.Linear(c * p * p, k, bias=False)
        self.theta = nn.Parameter(torch.zeros(k))
        self.scale = float(a["logit_scale"])

    def forward(self, z: Tensor, sp: Spectral) -> Tensor:
        b = z.shape[0]
        zi = z * IN_GAIN
        f = self.features(torch.cat([zi, sp.coords.expand(b, -1, -1, -1)], dim=1))
        f = self.to_c(torch.cat([f, zi], dim=1))  # b c n m
        score = self.head(sp.pool(f).flatten(1))  # b k
        return self.scale * (score - self.theta)


class SpecGuard(TrainingHooks, TrainableMethod):
    """SpecGuard-style spectral watermark (Haar DWT band -> DCT via FFT -> masked learned embedding).

    Params: architecture (``nbits`` 64, ``band`` HH|LH|HL, ``radius`` 50/128 (fraction of the band side),
    ``strength`` 6.5 (8-bit levels per coefficient; may differ from the checkpoint's: scales the watermark),
    ``width`` 32, ``enc_depth`` 2, ``dec_depth`` 2, ``map_size`` 16, ``map_channels`` 8, ``dec_channels`` 8,
    ``logit_scale`` 1) — taken from the checkpoint when one is given (explicit values must agree, except
    strength); ``checkpoint`` (path), ``weights`` (shipped file stem, default "specguard"), ``init`` ("random"
    for a seeded random-init net), ``seed``, ``encoder_lr_scale`` (training only: encoder lr / decoder lr, 10).

    ``extract`` is differentiable w.r.t. the image (``differentiable_extract``): the exact gradient of the logits
    through the replicate padding (odd sizes), the Haar DWT, the FFT-based DCT, the decoder CNN, the masked cell
    means and the linear head; nothing is straight-through or approximated.  Because only the chosen band is
    read, the gradient w.r.t. the image lies in that band's subspace (for HH: ±checkerboard 2×2 patterns; its
    LL/LH/HL components are exactly zero), concentrated on the masked coefficients and their conv neighbourhood.
    Shipped weights (configs/specguard.yaml, 3,000 steps on 128² crops, 34 min on a shared CPU): clean bit
    accuracy 1.000 at 41.3 dB PSNR at 256² (built-in eval split), 0.999 at 41.2 dB at 128²; JPEG 90 leaves ~0.54
    (docs/specguard.md).
    """

    name = "specguard"
    description = (
        "SpecGuard-style learned watermark in the DCT spectrum of the Haar HH band (radial mask, "
        "learnable threshold; trained by wmbench)"
    )
    differentiable_extract: ClassVar[bool] = True
    nbits = 64
    #: loss terms train_step weighs (the paper's λ_enc = 0.7, λ_dec = 1)
    loss_weights: ClassVar[dict[str, float]] = {"message": 1.0, "image": 0.7}

    class Params(PluginParams):
        nbits: int = Int(ARCH_DEFAULTS["nbits"], ge=1, le=4096, description="architecture: payload bits")
        band: Literal["LH", "HL", "HH"] = Field(ARCH_DEFAULTS["band"], description="architecture: Haar band")
        radius: float = Num(
            ARCH_DEFAULTS["radius"],
            gt=0,
            le=0.75,
            description="architecture: mask radius, fraction of the band",
        )
        strength: float = Num(ARCH_DEFAULTS["strength"], gt=0, le=1000, description="embedding strength")
        width: int = Int(ARCH_DEFAULTS["width"], ge=1, le=1024, description="architecture: channels")
        enc_depth: int = Int(ARCH_DEFAULTS["enc_depth"], ge=1, le=64, description="architecture")
        dec_depth: int = Int(ARCH_DEFAULTS["dec_depth"], ge=1, le=64, description="architecture")
        map_size: int = Int(ARCH_DEFAULTS["map_size"], ge=1, le=1024, description="architecture")
        map_channels: int = Int(ARCH_DEFAULTS["map_channels"], ge=1, le=1024, description="architecture")
        dec_channels: int = Int(ARCH_DEFAULTS["dec_channels"], ge=1, le=1024, description="architecture")
        logit_scale: float = Num(ARCH_DEFAULTS["logit_scale"], gt=0, le=1e6, description="architecture")
        checkpoint: str | None = Field(
            None, min_length=1, description="a checkpoint written by wmbench train"
        )
        weights: WeightsStem = Field("specguard", description="a shipped file's stem")
        init: Literal["random"] | None = Field(None, description="random: a seeded random-init net (tests)")
        seed: int = Int(0, ge=0, le=2**63 - 1, description="seed of the random init")
        encoder_lr_scale: float = Num(10.0, gt=0, le=1e6, description="training: the encoder's lr multiplier")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.p
        checkpoint, weights, init = p.checkpoint, p.weights, p.init
        # another payload selects the shipped checkpoint of that payload (configs/specguard128.yaml)
        if "nbits" in p.model_fields_set and "weights" not in p.model_fields_set and p.nbits != 64:
            weights = f"specguard{p.nbits}"
        arch_given = {k: getattr(p, k) for k in ARCH_DEFAULTS if k in p.model_fields_set}
        check_init("method 'specguard'", init, checkpoint is not None)
        self.init, self.seed, self.enc_lr_scale = init, p.seed, p.encoder_lr_scale
        self.weights_name = weights
        who = "method 'specguard'"
        self.ckpt_path = locate(who, checkpoint, weights) if init is None else None
        stored = read_arch(who, self.ckpt_path, ("specguard",))[1] if self.ckpt_path else {}
        check_agrees(who, arch_given, stored, self.ckpt_path, ignore=("strength",))
        # the stored strength is the one trained with; an explicit one only rescales the embedding
        self.arch: dict[str, Any] = {**ARCH_DEFAULTS, **stored, **arch_given}
        if "strength" in stored:
            self.arch["strength"] = stored["strength"]
        self.strength = arch_given.get("strength", self.arch["strength"])
        self.strength = float(self.strength)
        self.nbits = int(self.arch["nbits"])
        self.params = {
            **arch_given,
            **({"checkpoint": checkpoint} if checkpoint is not None else {}),
            **({"weights": weights} if "weights" in p.model_fields_set else {}),
            **({"init": init, "seed": self.seed} if init else {}),
        }
        self.enc: Encoder | None = None
        self.dec: Decoder | None = None
        self._hash = ""
        self._train: dict[str, Any] | None = None
        self._sp: dict[tuple[int, int], Spectral] = {}

    @classmethod
    def tiny_params(cls) -> dict[str, Any]:
        """A tiny seeded random-init instance for the contract tests."""
        return {
            "init": "random",
            "nbits": 8,
            "width": 8,
            "enc_depth": 1,
            "dec_depth": 1,
            "map_size": 8,
            "map_channels": 4,
            "dec_channels": 4,
        }

    # ------------------------------------------------------------------------------------------ weights
    def _build(self) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.enc, self.dec = Encoder(self.arch), Decoder(self.arch)

    def setup(self, device: torch.device) -> None:
        """Build the nets and load weights (checkpoint, shipped file, or seeded random init)."""
        self.device = torch.device(device)
        self._sp = {}
        if self.init is None and self.ckpt_path is None:
            raise SkipCell(
                f"method 'specguard': no weights: no params.checkpoint given and the shipped file "
                f"{WEIGHTS_PACKAGE}/{self.weights_name}.safetensors is not installed. Train one with "
                "`wmbench train specguard` (config wmbench/configs/specguard.yaml), then pass "
                "params: {checkpoint: <out dir>/specguard.safetensors}"
            )
        self._build()
        if self.ckpt_path is not None:
            from safetensors.torch import load_file

            sd = load_file(str(self.ckpt_path))
            for prefix, net in (("encoder.", self.enc), ("decoder.", self.dec)):
                assert net is not None
                part = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
                try:
                    net.load_state_dict(part)
                except RuntimeError as e:
                    raise WmbenchError(
                        f"method 'specguard': {self.ckpt_path} does not fit the architecture: {e}"
                    ) from e
        for net in self._nets():
            net.to(self.device).eval().requires_grad_(False)
        self._hash = hashlib.sha256(
            b"".join(
                k.encode() + v.detach().cpu().contiguous().numpy().tobytes()
                for k, v in sorted(self.export_weights().items())
            )
        ).hexdigest()[:16]

    def _nets(self) -> list[nn.Module]:
        return [n for n in (self.enc, self.dec) if n is not None]

    def _ready(self) -> tuple[Encoder, Decoder]:
        if self.enc is None or self.dec is None:
            raise WmbenchError("method 'specguard': call setup(device) before embed/extract")
        return self.enc, self.dec

    def weights_hash(self) -> str:
        return self._hash

    def export_weights(self) -> dict[str, Tensor]:
        """Encoder + decoder weights (θ included), for safetensors."""
        enc, dec = self._ready()
        out = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
        out.update({f"decoder.{k}": v for k, v in dec.state_dict().items()})
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def architecture(self) -> dict[str, Any]:
        """The params that rebuild these nets (stored in the checkpoint metadata and the card)."""
        return dict(self.arch)

    # ------------------------------------------------------------------------------------------ inference
    def spectral(self, h: int, w: int) -> Spectral:
        """The transforms and mask for h × w images (cached per size)."""
        key = (h, w)
        if key not in self._sp:
            a = self.arch
            self._sp[key] = Spectral(h, w, a["band"], a["radius"], a["map_size"], self.device)
        return self._sp[key]

    def _residual(self, x: Tensor, bits: Tensor, strength: float) -> Tensor:
        """The watermark: a masked, bounded change of the band's coefficients, in pixels.  b 3 h w -> b 3 h w"""
        enc, _ = self._ready()
        sp = self.spectral(*x.shape[-2:])
        dz = enc(sp.forward(x), bits, sp) * sp.mask * (strength / 255.0)
        return sp.residual(dz)

    def _decode(self, y: Tensor) -> Tensor:
        _, dec = self._ready()
        sp = self.spectral(*y.shape[-2:])
        return dec(sp.forward(y), sp)

    def embed(self, x: Tensor, msg: Tensor) -> Tensor:
        """x: b 3 h w in [0,1]; msg: b k in {0,1} -> b 3 h w in [0,1]"""
        check_batch(self.name, x, msg, self.nbits)
        with torch.no_grad():
            x = x.to(self.device)
            return (x + self._residual(x, msg.to(x) * 2 - 1, self.strength)).clamp(0, 1)

    def extract(self, y: Tensor) -> Tensor:
        """y: b 3 h w in [0,1] -> b k logits (differentiable w.r.t. y; see the class docstring)"""
        check_batch(self.name, y, None, self.nbits)
        return self._decode(y.to(self.device))

    # ------------------------------------------------------------------------------------------ training
    def begin_training(self, *, lr: float, gen: torch.Generator) -> None:
        """Make the nets trainable and build the optimiser (encoder at ``encoder_lr_scale`` × lr); ``gen``
        (CPU) draws the training messages."""
        enc, dec = self._ready()
        # a fine-tune trains at the strength it is given (not the start checkpoint's), and its checkpoint says so
        self.arch["strength"] = self.strength
        for n in self._nets():
            n.requires_grad_(True)
        opt = torch.optim.Adam(
            [
                # lr_scale: TrainingHooks.set_schedule keeps the encoder at that multiple of the schedule's lr
                {
                    "params": list(enc.parameters()),
                    "lr": lr * self.enc_lr_scale,
                    "lr_scale": self.enc_lr_scale,
                },
                {"params": list(dec.parameters()), "lr": lr},
            ]
        )
        self._train = {"opt": opt, "gen": gen, "w": dict(self.loss_weights)}

    def training_state(self) -> dict[str, Any]:
        """Nets and optimiser state: what a resumed run needs (torch.save-able)."""
        t = self._tstate()
        enc, dec = self._ready()
        return {"nets": {"enc": enc.state_dict(), "dec": dec.state_dict()}, "opt": t["opt"].state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        t = self._tstate()
        enc, dec = self._ready()
        enc.load_state_dict(state["nets"]["enc"])
        dec.load_state_dict(state["nets"]["dec"])
        t["opt"].load_state_dict(state["opt"])

    def train_step(self, batch: Tensor, noise: Callable[[Tensor, Tensor], Tensor]) -> dict[str, float]:
        """One step on covers b 3 h w: random messages, embed, ``noise(wm, cover)``, decode; image MSE +
        message BCE."""
        t = self._tstate()
        w = t["w"]
        for n in self._nets():
            n.train()
        x = batch.to(self.device)
        b = x.shape[0]
        msg = torch.randint(0, 2, (b, self.nbits), generator=t["gen"]).to(x)
        y = x + self._residual(x, msg * 2 - 1, float(self.arch["strength"]))  # unclamped: noise() quantises
        logits = self._decode(noise(y, x))
        l_msg = F.binary_cross_entropy_with_logits(logits, msg)
        l_img = F.mse_loss(y, x)
        loss = w["message"] * l_msg + w["image"] * l_img
        t["opt"].zero_grad(set_to_none=True)
        loss.backward()
        t["opt"].step()
        for n in self._nets():
            n.eval()
        with torch.no_grad():
            mse = F.mse_loss(y.clamp(0, 1), x).clamp_min(1e-10)
            return {
                "loss": float(loss),
                "message_loss": float(l_msg),
                "image_loss": float(l_img),
                "bit_acc": float(((logits > 0).float() == msg).float().mean()),
                "psnr": float(-10 * torch.log10(mse)),
            }
