"""HiDDeN-style encoder–noise–decoder (Zhu et al., ECCV'18), trainable with ``wmbench train``.

Two message paths (param ``message``):

* ``tiled`` (default): the ±1 message goes through a linear layer to a small ``map_channels × period × period``
  map that is tiled periodically over the image and concatenated with the encoder's features; the decoder folds
  its feature map onto one period (the mean over all tiles at each phase) and reads the bits with a linear layer.
  Why: on this CPU the faithful design learns its message far too slowly (REFERENCE §1), while a spatial message
  map learns fast; tiling it (instead of upsampling one map to the training size) keeps the net fully
  convolutional, so a net trained on 64² crops runs at 128²/256², where the fold averages over more tiles.
  Period and phase are fixed at the image's top-left pixel, so a resized crop (zoom + shift) breaks plain
  decoding; ``sync: true`` re-aligns first (methods/periodic_sync.py).
* ``broadcast``: the paper's design: the message is repeated at every pixel as ``nbits`` constant channels, the
  decoder ends in global average pooling and a linear layer.

``work_size`` (optional) embeds at a fixed working size: the cover is resized to ``work_size²``, the residual
computed there is resized back and added; extraction resizes to ``work_size²`` first.

Weights: ``params.checkpoint`` (a ``.safetensors`` written by ``wmbench train``; its metadata holds the
architecture), else the shipped ``wmbench/weights/<weights>.safetensors``; with neither, ``setup`` raises
SkipCell.  ``init: random`` (+ ``seed``) builds a seeded random-init net: only for tests and for the trainer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, StrictBool, field_validator
from torch import Tensor, nn

from wmbench.api import SkipCell, TrainableMethod, TrainingHooks, WmbenchError
from wmbench.checkpoints import WEIGHTS_PACKAGE, check_agrees, check_init, locate, read_arch
from wmbench.params import Int, Num, PluginParams, WeightsStem
from wmbench.quality import scale_to_psnr

from .classic import check_batch
from .periodic_sync import synced_logits

#: architecture params (stored in the checkpoint's metadata) and their defaults
ARCH_DEFAULTS: dict[str, Any] = {
    "nbits": 30,
    "width": 32,
    "enc_depth": 3,
    "dec_depth": 4,
    "message": "tiled",
    "period": 16,
    "map_channels": 16,
    "dec_downsample": 2,
    "dec_channels": 32,
    "work_size": None,
}
#: architecture params that only change how the nets are applied (a suite may set them over a checkpoint's)
INFERENCE_ARCH = ("work_size",)
#: ``psnr_target`` may strengthen a residual at most this much (+12 dB of range) before giving up on the target
PSNR_MATCH_MAX_SCALE = 4.0


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def tile(m: Tensor, h: int, w: int) -> Tensor:
    """Repeat a per-image map periodically from the top-left pixel.  b c p p -> b c h w"""
    p = m.shape[-1]
    reps = (-(-h // p), -(-w // p))
    return m.repeat(1, 1, *reps)[..., :h, :w]


def fold(f: Tensor, q: int) -> Tensor:
    """Mean of a feature map over its q×q tiles at each phase (partial tiles count where present).

    b c h w -> b c q q; phase (i mod q, j mod q) of the top-left-anchored grid.
    """
    b, c, h, w = f.shape
    ph, pw = (-h) % q, (-w) % q
    ones = f.new_ones(1, 1, h, w)
    if ph or pw:
        f, ones = F.pad(f, (0, pw, 0, ph)), F.pad(ones, (0, pw, 0, ph))
    hh, ww = (h + ph) // q, (w + pw) // q
    s = f.reshape(b, c, hh, q, ww, q).sum(dim=(2, 4))  # b c q q
    n = ones.reshape(1, 1, hh, q, ww, q).sum(dim=(2, 4))  # 1 1 q q
    return s / n


class Encoder(nn.Module):
    """Image features + message map -> residual.  x: b 3 h w, bits ±1: b k -> b 3 h w"""

    def __init__(self, a: dict[str, Any]) -> None:
        super().__init__()
        w, k = a["width"], a["nbits"]
        self.mode, self.period = a["message"], a["period"]
        self.features = nn.Sequential(
            _conv_bn_relu(3, w), *[_conv_bn_relu(w, w) for _ in range(a["enc_depth"] - 1)]
        )
        if self.mode == "tiled":
            self.mc = a["map_channels"]
            self.msg_map = nn.Linear(k, self.mc * self.period * self.period)
        else:
            self.mc = k
        self.after = _conv_bn_relu(w + self.mc + 3, w)
        self.to_rgb = nn.Conv2d(w, 3, 1)

    def forward(self, x: Tensor, bits: Tensor) -> Tensor:
        b, _, h, w = x.shape
        if self.mode == "tiled":
            m = self.msg_map(bits).view(b, self.mc, self.period, self.period)
            mmap = tile(m, h, w)  # b mc h w
        else:
            mmap = bits[:, :, None, None].expand(b, self.mc, h, w)  # b k h w
        f = torch.cat([self.features(x), mmap, x], dim=1)
        return self.to_rgb(self.after(f))  # b 3 h w


class Decoder(nn.Module):
    """Image -> bit logits.  b 3 h w -> b k"""

    def __init__(self, a: dict[str, Any]) -> None:
        super().__init__()
        w, k, ds = a["width"], a["nbits"], a["dec_downsample"]
        self.mode = a["message"]
        layers = [_conv_bn_relu(3, w, 2 if ds > 0 else 1)]
        layers += [_conv_bn_relu(w, w, 2 if i + 1 < ds else 1) for i in range(a["dec_depth"] - 1)]
        self.features = nn.Sequential(*layers)
        c = a["dec_channels"]
        self.to_c = nn.Conv2d(w, c, 1)
        if self.mode == "tiled":
            self.q = a["period"] // 2**ds
            self.head = nn.Linear(c * self.q * self.q, k)
        else:
            self.head = nn.Linear(c, k)

    def vector(self, y: Tensor) -> Tensor:
        """The intermediate vector the linear head reads (END² aligns it).  b 3 h w -> b d"""
        f = self.to_c(self.features(y))  # b c h' w'
        if self.mode == "tiled":
            return fold(f, self.q).flatten(1)  # b c*q*q
        return f.mean(dim=(2, 3))  # b c

    def forward(self, y: Tensor) -> Tensor:
        return self.head(self.vector(y))  # b k


class Discriminator(nn.Module):
    """Cover vs watermarked (HiDDeN's 3×conv adversary).  b 3 h w -> b logits"""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _conv_bn_relu(3, width, 2), _conv_bn_relu(width, width, 2), _conv_bn_relu(width, width, 2)
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.net(x).mean(dim=(2, 3)))[:, 0]


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


class Hidden(TrainingHooks, TrainableMethod):
    """HiDDeN-style learned watermark; see the module docstring for the message paths and weights.

    Params: architecture (``nbits`` 30, ``width`` 32, ``enc_depth`` 3, ``dec_depth`` 4, ``message``
    tiled|broadcast, ``period`` 16, ``map_channels`` 16, ``dec_downsample`` 2, ``dec_channels`` 32,
    ``work_size`` null) — taken from the checkpoint when one is given (explicit values must agree);
    ``checkpoint`` (path), ``weights`` (shipped file stem, default "hidden"), ``init`` ("random" for a seeded
    random-init net), ``seed``, ``strength`` (residual scale at embedding, 1 = as trained), ``psnr_target`` (dB:
    scale each image's residual, by at most ×4, so its 8-bit PSNR is the largest value ≥ the target — the way to
    compare methods at equal quality on any images; off by default), ``sync`` (re-align zoom and phase before
    decoding, for resized crops; ~100 decoder passes per image; off by default), ``discriminator`` (train with
    HiDDeN's adversary; off by default).
    Shipped weights (``wmbench train hidden``, 4,000 steps on 64² crops, ~30 min on this 2-core CPU): clean bit
    accuracy 1.0 at 35.97 dB on 64 eval tiles at 128² (card: ``wmbench/weights/hidden.json``; docs/learned.md).
    """

    name = "hidden"
    description = (
        "HiDDeN-style encoder/decoder CNN trained by wmbench (tiled message map, fully convolutional)"
    )
    differentiable_extract: ClassVar[bool] = True
    nbits = 30
    #: loss terms train_step weighs; a training config may set any of them (``loss_weights:``)
    loss_weights: ClassVar[dict[str, float]] = {"message": 1.0, "image": 0.7, "adversarial": 1e-3}
    #: models whose checkpoints this method loads (their ``encoder.`` / ``decoder.`` tensors)
    accepts_checkpoints: ClassVar[tuple[str, ...]] = ("hidden",)

    class Params(PluginParams):
        nbits: int = Int(ARCH_DEFAULTS["nbits"], ge=1, le=4096, description="architecture: payload bits")
        width: int = Int(ARCH_DEFAULTS["width"], ge=1, le=1024, description="architecture: channels")
        enc_depth: int = Int(
            ARCH_DEFAULTS["enc_depth"], ge=1, le=64, description="architecture: encoder blocks"
        )
        dec_depth: int = Int(
            ARCH_DEFAULTS["dec_depth"], ge=1, le=64, description="architecture: decoder blocks"
        )
        message: Literal["tiled", "broadcast"] = Field(
            ARCH_DEFAULTS["message"], description="architecture: the message path"
        )
        period: int = Int(ARCH_DEFAULTS["period"], ge=1, le=1024, description="architecture: tile period")
        map_channels: int = Int(ARCH_DEFAULTS["map_channels"], ge=1, le=1024, description="architecture")
        dec_downsample: int = Int(ARCH_DEFAULTS["dec_downsample"], ge=0, le=16, description="architecture")
        dec_channels: int = Int(ARCH_DEFAULTS["dec_channels"], ge=1, le=1024, description="architecture")
        work_size: int | None = Int(None, ge=8, le=4096, description="embed at a fixed working size")
        checkpoint: str | None = Field(
            None, min_length=1, description="a checkpoint written by wmbench train"
        )
        weights: WeightsStem | None = Field(
            None, description="a shipped file's stem (default: the method's name)"
        )
        init: Literal["random"] | None = Field(None, description="random: a seeded random-init net (tests)")
        seed: int = Int(0, ge=0, le=2**63 - 1, description="seed of the random init")
        strength: float = Num(1.0, gt=0, le=100, description="residual scale at embedding (1 = as trained)")
        psnr_target: float | None = Num(
            None, ge=10, le=80, description="dB: scale each residual to this PSNR"
        )
        sync: StrictBool = Field(False, description="re-align zoom and phase before decoding")
        discriminator: StrictBool = Field(False, description="train with an adversary")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.p
        checkpoint, weights, init = p.checkpoint, p.weights, p.init
        arch_given = {k: getattr(p, k) for k in ARCH_DEFAULTS if k in p.model_fields_set}
        check_init(f"method {self.name!r}", init, checkpoint is not None)
        self.init, self.seed, self.strength = init, p.seed, p.strength
        self.psnr_target, self.sync, self.use_disc = p.psnr_target, p.sync, p.discriminator
        weights = weights or self.name
        self.weights_name = weights
        who = f"method {self.name!r}"
        self.ckpt_path = locate(who, checkpoint, weights) if init is None else None
        stored = read_arch(who, self.ckpt_path, self.accepts_checkpoints)[1] if self.ckpt_path else {}
        check_agrees(who, arch_given, stored, self.ckpt_path, ignore=INFERENCE_ARCH)
        self.arch: dict[str, Any] = {**ARCH_DEFAULTS, **stored, **arch_given}
        self._check_arch()
        self.nbits = int(self.arch["nbits"])
        self.params = {
            **arch_given,
            **({"checkpoint": checkpoint} if checkpoint is not None else {}),
            **({"weights": weights} if weights != self.name else {}),
            **({"init": init, "seed": self.seed} if init else {}),
            **({"strength": self.strength} if self.strength != 1.0 else {}),
            **({"psnr_target": self.psnr_target} if self.psnr_target is not None else {}),
            **({"sync": True} if self.sync else {}),
            **({"discriminator": True} if self.use_disc else {}),
        }
        self.enc: Encoder | None = None
        self.dec: Decoder | None = None
        self.disc: Discriminator | None = None
        self._hash = ""
        self._train: dict[str, Any] | None = None

    def _check_arch(self) -> None:
        """What no single param can say: how the architecture's values fit together."""
        a = self.arch
        ds = a["dec_downsample"]
        if not 0 <= ds <= a["dec_depth"]:
            raise WmbenchError(
                f"method {self.name!r}: dec_downsample must be an integer in [0, dec_depth], got {ds!r}"
            )
        if a["message"] == "tiled" and a["period"] % 2**ds:
            raise WmbenchError(
                f"method {self.name!r}: period {a['period']} must be divisible by 2**dec_downsample = {2**ds}"
            )
        if self.sync and (a["message"] != "tiled" or a["work_size"] is not None):
            raise WmbenchError(
                f"method {self.name!r}: sync re-aligns a tiled message map at the image's own scale; it needs "
                f"message: tiled and work_size: null (got message {a['message']!r}, work_size {a['work_size']!r})"
            )

    @classmethod
    def tiny_params(cls) -> dict[str, Any]:
        """A tiny seeded random-init instance for the contract tests."""
        return {
            "init": "random",
            "nbits": 8,
            "width": 8,
            "enc_depth": 1,
            "dec_depth": 2,
            "period": 8,
            "map_channels": 4,
            "dec_channels": 4,
        }

    # ------------------------------------------------------------------------------------------ weights
    def _build(self) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.enc, self.dec = Encoder(self.arch), Decoder(self.arch)
            self.disc = Discriminator(self.arch["width"]) if self.use_disc else None

    def setup(self, device: torch.device) -> None:
        """Build the nets and load weights (checkpoint, shipped file, or seeded random init)."""
        self.device = torch.device(device)
        if self.init is None and self.ckpt_path is None:
            raise SkipCell(
                f"method {self.name!r}: no weights: no params.checkpoint given and the shipped file "
                f"{WEIGHTS_PACKAGE}/{self.weights_name}.safetensors is not installed. Train one with "
                f"`wmbench train {self.name}` (config wmbench/configs/{self.name}.yaml), then pass "
                f"params: {{checkpoint: <out dir>/{self.name}.safetensors}}"
            )
        self._build()
        if self.ckpt_path is not None:
            from safetensors.torch import load_file

            sd = load_file(str(self.ckpt_path))
            for name, net in self._weight_nets().items():
                prefix = f"{name}."
                part = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
                try:
                    net.load_state_dict(part)
                except RuntimeError as e:
                    raise WmbenchError(
                        f"method {self.name!r}: {self.ckpt_path} does not fit the architecture: {e}"
                    ) from e
        for net in self._nets():
            net.to(self.device).eval().requires_grad_(False)
        self._hash = hashlib.sha256(
            b"".join(
                k.encode() + v.detach().cpu().contiguous().numpy().tobytes()
                for k, v in sorted(self.export_weights().items())
            )
        ).hexdigest()[:16]

    #: attributes holding nets whose state a training checkpoint keeps
    _state_attrs: ClassVar[tuple[str, ...]] = ("enc", "dec", "disc")

    def _weight_nets(self) -> dict[str, nn.Module]:
        """The nets a checkpoint holds, by key prefix (the discriminator is training-only)."""
        enc, dec = self._ready()
        return {"encoder": enc, "decoder": dec}

    def _nets(self) -> list[nn.Module]:
        return [n for a in self._state_attrs if (n := getattr(self, a, None)) is not None]

    def _ready(self) -> tuple[Encoder, Decoder]:
        if self.enc is None or self.dec is None:
            raise WmbenchError(f"method {self.name!r}: call setup(device) before embed/extract")
        return self.enc, self.dec

    def weights_hash(self) -> str:
        return self._hash

    def export_weights(self) -> dict[str, Tensor]:
        """Encoder + decoder weights (the discriminator is training-only), for safetensors."""
        out = {f"{n}.{k}": v for n, net in self._weight_nets().items() for k, v in net.state_dict().items()}
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}

    def architecture(self) -> dict[str, Any]:
        """The params that rebuild these nets (stored in the checkpoint metadata and the card)."""
        return dict(self.arch)

    # ------------------------------------------------------------------------------------------ inference
    def _residual(self, x: Tensor, bits: Tensor) -> Tensor:
        """Residual at the image's size (via the working size when set).  b 3 h w, b k -> b 3 h w"""
        enc, _ = self._ready()
        ws = self.arch["work_size"]
        if ws is None:
            return enc(x, bits)
        h, w = x.shape[-2:]
        return _resize(enc(_resize(x, (ws, ws)), bits), (h, w))

    def _decoders(self) -> list[tuple[nn.Module, float]]:
        """The decoders whose weighted logits make the extraction (END² has two)."""
        return [(self._ready()[1], 1.0)]

    def _synced(self, y: Tensor) -> Tensor:
        """Logits after zoom + phase re-synchronisation (methods/periodic_sync.py).  b 3 h w -> b k"""
        a = self.arch
        return synced_logits(y, self._decoders(), period=a["period"], stride=2 ** a["dec_downsample"])

    def _decode(self, y: Tensor) -> Tensor:
        if self.sync:
            return self._synced(y)
        _, dec = self._ready()
        ws = self.arch["work_size"]
        return dec(y if ws is None else _resize(y, (ws, ws)))

    def embed(self, x: Tensor, msg: Tensor) -> Tensor:
        """x: b 3 h w in [0,1]; msg: b k in {0,1} -> b 3 h w in [0,1]"""
        check_batch(self.name, x, msg, self.nbits)
        with torch.no_grad():
            for n in self._nets():
                n.eval()
            x = x.to(self.device)
            r = self._residual(x, msg.to(x) * 2 - 1)
            if self.psnr_target is not None:  # per image, on the 8-bit grid the runner quantises to anyway
                return scale_to_psnr(
                    x, x + self.strength * r, self.psnr_target, max_scale=PSNR_MATCH_MAX_SCALE
                )
            return (x + self.strength * r).clamp(0, 1)

    def extract(self, y: Tensor) -> Tensor:
        """y: b 3 h w in [0,1] -> b k logits (differentiable w.r.t. y)"""
        check_batch(self.name, y, None, self.nbits)
        for n in self._nets():
            n.eval()
        return self._decode(y.to(self.device))

    # ------------------------------------------------------------------------------------------ training
    def begin_training(self, *, lr: float, gen: torch.Generator) -> None:
        """Make the nets trainable and build the optimisers; ``gen`` (CPU) draws the training messages."""
        for n in self._nets():
            n.requires_grad_(True)
        opt = torch.optim.Adam([p for n in self._weight_nets().values() for p in n.parameters()], lr=lr)
        opt_d = torch.optim.Adam(self.disc.parameters(), lr=lr) if self.disc is not None else None
        self._train = {"opt": opt, "opt_d": opt_d, "gen": gen, "w": dict(self.loss_weights)}

    def training_state(self) -> dict[str, Any]:
        """Nets (with BN statistics) and optimiser states: what a resumed run needs (torch.save-able)."""
        t = self._tstate()
        return {
            "nets": {
                n: getattr(self, n).state_dict() for n in self._state_attrs if getattr(self, n) is not None
            },
            "opt": t["opt"].state_dict(),
            "opt_d": t["opt_d"].state_dict() if t["opt_d"] is not None else None,
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        t = self._tstate()
        for n, sd in state["nets"].items():
            getattr(self, n).load_state_dict(sd)
        t["opt"].load_state_dict(state["opt"])
        if t["opt_d"] is not None and state["opt_d"] is not None:
            t["opt_d"].load_state_dict(state["opt_d"])

    def train_step(self, batch: Tensor, noise: Callable[[Tensor, Tensor], Tensor]) -> dict[str, float]:
        """One step on covers b 3 h w: random messages, embed, ``noise(wm, cover)``, decode; image + message
        (+ adversarial) losses."""
        t = self._tstate()
        enc, dec = self._ready()
        w = t["w"]
        for n in self._nets():
            n.train()
        x = batch.to(self.device)
        b = x.shape[0]
        msg = torch.randint(0, 2, (b, self.nbits), generator=t["gen"]).to(x)
        y = x + self._residual(x, msg * 2 - 1)  # b 3 h w (unclamped: the noise layer quantises, clamping)
        logits = self._decode(noise(y, x))
        l_msg = F.binary_cross_entropy_with_logits(logits, msg)
        l_img = F.mse_loss(y, x)
        loss = w["message"] * l_msg + w["image"] * l_img
        out: dict[str, float] = {}
        if self.disc is not None:
            l_adv = F.binary_cross_entropy_with_logits(self.disc(y), torch.ones(b, device=x.device))
            loss = loss + w["adversarial"] * l_adv
            out["adversarial_loss"] = float(l_adv.detach())
        t["opt"].zero_grad(set_to_none=True)
        loss.backward()
        t["opt"].step()
        if self.disc is not None and t["opt_d"] is not None:
            d_real, d_fake = self.disc(x), self.disc(y.detach())
            l_d = F.binary_cross_entropy_with_logits(
                d_real, torch.ones_like(d_real)
            ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
            t["opt_d"].zero_grad(set_to_none=True)
            l_d.backward()
            t["opt_d"].step()
            out["disc_loss"] = float(l_d.detach())
        with torch.no_grad():
            mse = F.mse_loss(y.clamp(0, 1), x).clamp_min(1e-10)
            out.update(
                loss=float(loss),
                message_loss=float(l_msg),
                image_loss=float(l_img),
                bit_acc=float(((logits > 0).float() == msg).float().mean()),
                psnr=float(-10 * torch.log10(mse)),
            )
        return out


class NoDiscriminatorParams(Hidden.Params):
    """``hidden``'s params for a method that trains without HiDDeN's adversary (end2, advmark)."""

    @field_validator("discriminator")
    @classmethod
    def _unsupported(cls, v: bool) -> bool:
        if v:
            raise ValueError("not supported by this method (it trains without a discriminator)")
        return v
