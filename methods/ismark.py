"""ISMark (image-specified watermarking, seed 002): embedding by optimisation over a fixed decoder.

There is no encoder.  Given a differentiable decoder ``D`` (logits b×k), a cover ``I_co`` and a message ``M``,
OPT embedding (the paper's Algorithm 1) treats the image itself as the parameters and runs ``steps`` (k) Adam
iterations from ``I = I_co`` on

    L(I) = λ_E · MSE(I_co, I) + λ_D · mean_j ℓ(M, D(N_j(I)))

over the noise layers ``N_j`` (registered attacks, each through ``Attack.forward_st``: the differentiable ones as
they are, the others, e.g. real PIL JPEG, straight-through).  Details and why:

* Units.  The paper does not state its pixel scale; its backbones (HiDDeN, TSDL) work on images in [-1, 1], and
  that is the reading taken here: ``L_E`` is the MSE of ``2I-1`` vs ``2I_co-1`` (4× the [0,1] MSE) so λ_E = 1 and
  λ_D = 2 keep the paper's balance, and ``lr`` is in [0,1] pixel units, default 5e-4 (= the paper's 1e-3 on
  [-1,1]).  With Adam each pixel moves by about ``lr`` per step whatever the loss scale, so ``lr × steps`` bounds
  the distortion; ``psnr_floor`` (optional) bounds it explicitly.
* Message loss ℓ.  The paper uses MSE between the message and the decoder's output.  Our decoders return logits,
  which are unbounded: an MSE on raw logits would need a target logit scale.  ``message_loss: mse`` (default) is
  the MSE between the ±1 message and ``tanh(logit/2)`` (= 4·MSE of the bit probabilities vs M in {0,1}): bounded
  like the paper's term, and a bit that is already read with confidence stops pulling, so the image term takes
  over and PSNR rises.  ``bce`` (binary cross-entropy with logits) keeps pushing every bit, i.e. more robustness
  margin for more distortion.
* 8 bits.  The runner saves the watermarked image at 8 bits; the loop optimises a continuous image but evaluates
  everything on its straight-through 8-bit rounding (forward: rounded, gradient: identity), so what is optimised
  is what is saved; the method returns the rounded image.
* Independence and determinism.  The loss is the SUM of per-image losses, so each image's pixels get only their
  own gradient, and Adam's state is per pixel: images are optimised independently.  Each image's noise draws
  (which layers, their strengths, the attacks' own randomness) come from its own generator, seeded from a hash
  of the ``seed`` param, the image's bytes and its message: embedding an image alone or in a batch gives the same
  result (up to float reduction order in batched convolutions), and a repeated call gives the same bits.
* ``noise_per_step`` (default: all layers, as in the paper): with n < m layers each image draws n of them per
  step (its own generator), cutting the time per step roughly by m/n at the cost of a noisier objective.
* ``psnr_floor`` (optional, dB): after each step an image whose 8-bit PSNR fell below the floor has its residual
  ``I - I_co`` scaled back onto the floor (a projection, as in PGD); the returned 8-bit image is checked again
  and shrunk until it meets the floor.

Decoders (param ``decoder``): ``ismark`` (its own decoder: the ``hidden`` decoder architecture, with weights from
``params.checkpoint``, the shipped ``wmbench/weights/ismark.safetensors`` written by decoder enhancing, or
``init: random`` for tests), or any registered method whose ``extract`` is differentiable (``hidden``,
``end2``), built from ``decoder_params``.  Default: ``ismark`` when its shipped file exists, else ``hidden``
(the paper's "w/o decoder enhancing" row); a missing weight file raises SkipCell naming what is missing.

Decoder enhancing (Algorithm 2) is ``wmbench train ismark_enhance`` (``decoder: ismark`` only): each trainer
step draws messages, embeds the batch by OPT with the current decoder (``train_opt_steps`` steps), rounds it to
8 bits, then makes ``sub_iters`` (l) decoder updates, each on a copy distorted by the trainer's noise pool (real
distortions, e.g. PIL JPEG, applied without gradient: only the decoder learns).  The decoder starts from
``model.init_from`` (a ``hidden`` checkpoint pretrained without noise, as in the paper, or an ``ismark`` one).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from wmbench import rng
from wmbench.api import Attack, Method, SkipCell, TrainableMethod, TrainingHooks, WmbenchError
from wmbench.checkpoints import check_init, read_metadata
from wmbench.params import Int, Num, PluginParams, WeightsStem

from .classic import check_batch
from .hidden import ARCH_DEFAULTS, WEIGHTS_PACKAGE, Decoder, Hidden, _resize

#: architecture keys the decoder uses (a subset of ``hidden``'s; encoder keys in a checkpoint are ignored)
DEC_ARCH = ("nbits", "width", "dec_depth", "message", "period", "dec_downsample", "dec_channels", "work_size")
#: checkpoints whose ``decoder.*`` tensors ismark's own decoder can load (end2: the teacher)
LOADABLE = ("ismark", "hidden", "end2")
#: decoders named by ``decoder`` that wrap another registered method
WRAPPED = ("hidden", "end2")

#: the paper's noise set (crop, resize, Gaussian noise, Gaussian blur, median blur, salt & pepper, JPEG, plus
#: identity) in this harness's canonical units; strengths follow the paper's Table 1 where our attacks match
DEFAULT_NOISE: tuple[dict[str, Any], ...] = (
    {"name": "identity"},
    {"name": "crop", "range": [0.7, 1.0]},  # kept area ratio, resized back
    {"name": "resize", "range": [0.6, 1.0]},  # scale factor
    {"name": "gaussian_noise", "range": [0.0, 0.02]},  # sigma on [0,1]
    {"name": "gaussian_blur", "range": [0.2, 1.0]},  # sigma px
    {"name": "median_blur", "choices": [3, 5, 7]},  # kernel px
    {"name": "salt_pepper", "range": [0.0, 0.05]},  # pixel fraction
    # real libjpeg values with kornia's differentiable-JPEG gradient: per-image optimisation needs the codec's
    # gradient (probe on train-split tiles, hidden decoder, k=100: JPEG-50 BER 0.37 with straight-through real
    # JPEG, whose gradient is the identity, vs 0.013 with jpeg_diff), and judging the bits on what libjpeg really
    # returns keeps the mse loss from stopping on a perturbation only the approximation lets through (JPEG 50 on
    # 16 eval tiles at 39.9 dB: 0.981 vs 0.965 with jpeg_diff; docs/ismark.md)
    {"name": "jpeg_st", "choices": [50, 70, 90]},
)
#: the set before jpeg_st (kornia's approximation forward and backward): what trained the shipped decoder
DEFAULT_NOISE_V1: tuple[dict[str, Any], ...] = (
    *DEFAULT_NOISE[:-1],
    {"name": "jpeg_diff", "choices": [50, 70, 90]},
)


def _err(msg: str) -> WmbenchError:
    return WmbenchError(f"method 'ismark': {msg}")


class _NoiseLayer:
    """A registered attack with a strength rule: fixed, uniform in a range, or one of a few choices."""

    def __init__(self, i: int, spec: Any) -> None:
        from wmbench.registry import attacks

        where = f"noise[{i}]"
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict) or "name" not in spec:
            raise _err(
                f"{where}: expected an attack name or a mapping {{name, strength | range | choices, params}}, "
                f"got {spec!r}"
            )
        unknown = set(spec) - {"name", "strength", "range", "choices", "params"}
        if unknown:
            raise _err(
                f"{where}: unknown keys {sorted(unknown)}; accepted: name, strength, range, choices, params"
            )
        name = spec["name"]
        reg = attacks()
        if name not in reg:
            raise _err(f"{where}.name: {reg.unknown_message(name)}")
        cls = reg.get(name)
        if cls.needs_method:
            raise _err(f"{where}.name: attack {name!r} needs a method; it cannot be a noise layer")
        given = [k for k in ("strength", "range", "choices") if k in spec]
        if len(given) > 1:
            raise _err(f"{where}: give one of strength, range, choices (got {', '.join(given)})")
        try:
            self.attack: Attack = cls(**dict(spec.get("params") or {}))
        except (WmbenchError, TypeError) as e:
            raise _err(f"{where}.params: {e}") from None
        self.name, self.cls = name, cls
        self.fixed: float | None = None
        self.range: tuple[float, float] | None = None
        self.choices: list[float] = []
        try:
            if "strength" in spec:
                self.fixed = float(spec["strength"])
            elif "range" in spec:
                lo, hi = (float(v) for v in spec["range"])
                self.range = (lo, hi)
            else:
                self.choices = [float(v) for v in spec.get("choices", cls.default_strengths)]
        except (TypeError, ValueError):
            bad = {k: spec[k] for k in given}
            raise _err(
                f"{where}: strength must be a number, range a pair [lo, hi], choices a list of numbers; "
                f"got {bad!r}"
            ) from None
        if self.fixed is None and self.range is None and not self.choices:
            raise _err(f"{where}: attack {name!r} has no default strengths; give strength, range or choices")
        x = torch.full((1, 3, 16, 16), 0.5)
        for s in self._all_strengths():  # fail now, not in the middle of an embedding
            try:
                self.attack.apply(x, s, gen=torch.Generator().manual_seed(0), cover=x)
            except WmbenchError as e:
                raise _err(f"{where}: strength {s:g}: {e}") from None
        self.spec = {k: spec[k] for k in ("name", *given, "params") if k in spec}

    def _all_strengths(self) -> list[float]:
        if self.fixed is not None:
            return [self.fixed]
        return list(self.range) if self.range is not None else list(self.choices)

    def draw(self, gen: torch.Generator) -> float:
        if self.fixed is not None:
            return self.fixed
        if self.range is not None:
            lo, hi = self.range
            s = lo + (hi - lo) * float(torch.rand((), generator=gen))
            return float(round(s)) if self.cls.integer_strength else s
        return self.choices[int(torch.randint(0, len(self.choices), (1,), generator=gen))]

    def __call__(self, y: Tensor, cover: Tensor, gen: torch.Generator) -> Tensor:
        """1 3 h w -> 1 3 h w (straight-through where the attack is not differentiable)"""
        return self.attack.forward_st(y, self.draw(gen), gen=gen, cover=cover)


def _quantize_st(y: Tensor) -> Tensor:
    """Clamp + 8-bit rounding forward, identity gradient.  b 3 h w -> b 3 h w"""
    q = torch.round(y.clamp(0, 1) * 255.0) / 255.0
    return y + (q - y).detach()


def _psnr(a: Tensor, b: Tensor) -> Tensor:
    """b 3 h w, b 3 h w -> b (dB; 100 for identical images)"""
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return torch.where(mse > 0, -10 * torch.log10(mse.clamp_min(1e-12)), torch.full_like(mse, 100.0))


class ISMark(TrainingHooks, TrainableMethod):
    """ISMark: OPT embedding over a differentiable decoder, and decoder enhancing (module docstring).

    Params: ``decoder`` (ismark | hidden | end2; default ismark when wmbench/weights/ismark.safetensors is
    installed, else hidden), ``decoder_params`` (passed to a wrapped decoder, e.g. ``{checkpoint: PATH}``),
    ``steps`` (k, 200), ``lr`` (5e-4, [0,1] pixel units), ``lambda_e`` (1), ``lambda_d`` (2), ``noise`` (list of
    attack names or ``{name, strength | range | choices, params}``; default the paper's set, DEFAULT_NOISE),
    ``noise_per_step`` (null = all), ``psnr_floor`` (null or dB), ``message_loss`` (mse | bce), ``seed`` (0).
    Own decoder (``decoder: ismark``): ``checkpoint``, ``weights`` (shipped stem, default "ismark"),
    ``init: random``, architecture keys of ``hidden``'s decoder (DEC_ARCH).  Decoder enhancing:
    ``train_opt_steps`` (OPT steps per trainer step, 30), ``sub_iters`` (l, decoder updates per batch, 80).
    """

    name = "ismark"
    description = (
        "ISMark: per-image optimisation (OPT) embedding against a differentiable decoder + noise layers"
    )
    differentiable_extract: ClassVar[bool] = True
    nbits = 30
    #: decoder enhancing weighs one loss: BCE of the decoder's logits on distorted OPT-embedded images
    loss_weights: ClassVar[dict[str, float]] = {"message": 1.0}
    train_stats: ClassVar[tuple[str, ...]] = ("psnr",)

    class Params(PluginParams):
        decoder: str | None = Field(None, description="ismark, hidden or end2 (default: ismark if shipped)")
        decoder_params: dict[str, Any] | None = Field(None, description="params of a wrapped decoder")
        steps: int = Int(200, ge=1, le=100_000, description="OPT steps per image (k)")
        lr: float = Num(5e-4, gt=0, le=1, description="OPT learning rate ([0,1] pixel units)")
        lambda_e: float = Num(1.0, ge=0, le=1e6, description="weight of the image loss")
        lambda_d: float = Num(2.0, gt=0, le=1e6, description="weight of the message loss")
        noise: list[Any] | None = Field(
            None,
            min_length=1,
            max_length=64,
            description="noise layers: names or {name, strength|range|choices}",
        )
        noise_per_step: int | None = Int(
            None, ge=1, le=64, description="noise layers drawn per step (null: all)"
        )
        psnr_floor: float | None = Num(None, gt=0, lt=100, description="dB floor of the embedding")
        message_loss: Literal["mse", "bce"] = Field("mse", description="loss on the decoded logits")
        seed: int = Int(0, ge=-(2**63), le=2**63 - 1, description="seed of the random init")
        checkpoint: str | None = Field(None, min_length=1, description="own decoder: a checkpoint (path)")
        weights: WeightsStem | None = Field(None, description="own decoder: a shipped file's stem")
        init: Literal["random"] | None = Field(None, description="own decoder: random-init (tests)")
        train_opt_steps: int = Int(30, ge=1, le=100_000, description="training: OPT steps per trainer step")
        sub_iters: int = Int(80, ge=1, le=100_000, description="training: decoder updates per batch (l)")
        nbits: int = Hidden.Params.model_fields["nbits"]
        width: int = Hidden.Params.model_fields["width"]
        dec_depth: int = Hidden.Params.model_fields["dec_depth"]
        message: Literal["tiled", "broadcast"] = Hidden.Params.model_fields["message"]
        period: int = Hidden.Params.model_fields["period"]
        dec_downsample: int = Hidden.Params.model_fields["dec_downsample"]
        dec_channels: int = Hidden.Params.model_fields["dec_channels"]
        work_size: int | None = Hidden.Params.model_fields["work_size"]

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.p
        decoder, decoder_params, noise_per_step = p.decoder, p.decoder_params, p.noise_per_step
        checkpoint, weights, init = p.checkpoint, p.weights, p.init
        arch_given = {k: getattr(p, k) for k in DEC_ARCH if k in p.model_fields_set}
        self.steps, self.lr, self.lambda_e, self.lambda_d = p.steps, p.lr, p.lambda_e, p.lambda_d
        self.message_loss, self.seed = p.message_loss, p.seed
        self.train_opt_steps, self.sub_iters = p.train_opt_steps, p.sub_iters
        self.layers = [
            _NoiseLayer(i, s) for i, s in enumerate(p.noise if p.noise is not None else DEFAULT_NOISE)
        ]
        if noise_per_step is not None and noise_per_step > len(self.layers):
            raise _err(
                f"params.noise_per_step: {noise_per_step} exceeds the number of noise layers ({len(self.layers)})"
            )
        self.noise_per_step = noise_per_step
        self.psnr_floor = p.psnr_floor

        # ---- the decoder
        own_keys = {"checkpoint": checkpoint, "weights": weights, "init": init, **arch_given}
        own_given = sorted(k for k, v in own_keys.items() if v is not None)
        shipped = importlib.resources.files(WEIGHTS_PACKAGE) / f"{weights or self.name}.safetensors"
        if decoder is None:
            decoder = self.name if (own_given or shipped.is_file()) else "hidden"
            self._fallback = decoder == "hidden"
        else:
            self._fallback = False
        if decoder != self.name and decoder not in WRAPPED:
            from wmbench.registry import methods

            reg = methods()
            if decoder not in reg:
                raise _err(f"decoder: {reg.unknown_message(decoder)}")
            if not reg.get(decoder).differentiable_extract:
                raise _err(
                    f"decoder: method {decoder!r} has no differentiable extract; OPT embedding needs one "
                    f"(use ismark, {', '.join(WRAPPED)})"
                )
        self.decoder_name = decoder
        self.decoder_params = dict(decoder_params or {})
        self.inner: Method | None = None
        self.dec: Decoder | None = None
        self.ckpt_path: Path | None = None
        self.init = init
        self.weights_name = weights or self.name
        if decoder == self.name:
            if self.decoder_params:
                raise _err(
                    "decoder_params is for a wrapped decoder (hidden, end2); ismark's own decoder takes "
                    "checkpoint / weights / init and architecture params directly"
                )
            self.arch = self._own_arch(checkpoint, init, arch_given, shipped)
            self.nbits = int(self.arch["nbits"])
        else:
            if own_given:
                raise _err(
                    f"params {own_given} configure ismark's own decoder (decoder: ismark), but decoder is "
                    f"{decoder!r}; pass them in decoder_params instead"
                )
            from wmbench.registry import methods

            try:
                self.inner = methods().get(decoder)(**self.decoder_params)
            except WmbenchError as e:
                raise _err(f"decoder_params (decoder {decoder!r}): {e}") from None
            except TypeError as e:
                raise _err(f"decoder_params (decoder {decoder!r}): {e}") from None
            self.arch = {}
            self.nbits = int(self.inner.nbits)
        self.params: dict[str, Any] = {
            "decoder": decoder,
            **({"decoder_params": self.decoder_params} if self.decoder_params else {}),
            "steps": self.steps,
            "lr": self.lr,
            "lambda_e": self.lambda_e,
            "lambda_d": self.lambda_d,
            "noise": [lay.spec for lay in self.layers],
            **({"noise_per_step": noise_per_step} if noise_per_step is not None else {}),
            **({"psnr_floor": self.psnr_floor} if self.psnr_floor is not None else {}),
            "message_loss": self.message_loss,
            "seed": self.seed,
            **({"checkpoint": checkpoint} if checkpoint is not None else {}),
            **({"weights": weights} if weights is not None else {}),
            **({"init": init} if init is not None else {}),
            **arch_given,
        }
        self._hash = ""
        self._train: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------------ decoder
    def _own_arch(
        self, checkpoint: str | None, init: str | None, arch_given: dict[str, Any], shipped: Any
    ) -> dict[str, Any]:
        check_init("method 'ismark'", init, checkpoint is not None)
        stored: dict[str, Any] = {}
        if init is None:
            if checkpoint is not None:
                self.ckpt_path = Path(checkpoint).expanduser()
                if not self.ckpt_path.is_file():
                    raise _err(f"params.checkpoint not found: {self.ckpt_path}")
            elif shipped.is_file():
                self.ckpt_path = Path(str(shipped))
            if self.ckpt_path is not None:
                meta = read_metadata("method 'ismark'", self.ckpt_path)
                if meta.get("wmbench_method") not in LOADABLE or "params" not in meta:
                    raise _err(
                        f"params.checkpoint {self.ckpt_path} is not a checkpoint of {', '.join(LOADABLE)} written "
                        f"by `wmbench train` (metadata method={meta.get('wmbench_method')!r})"
                    )
                stored = {k: v for k, v in json.loads(meta["params"]).items() if k in DEC_ARCH}
        for k, v in arch_given.items():
            if k in stored and stored[k] != v:
                raise _err(
                    f"param {k}={v!r} disagrees with the checkpoint {self.ckpt_path} ({k}={stored[k]!r}); drop "
                    "the param or use a matching checkpoint"
                )
        a = {k: ARCH_DEFAULTS[k] for k in DEC_ARCH} | stored | arch_given
        ds = a["dec_downsample"]
        if not 0 <= ds <= a["dec_depth"]:
            raise _err(f"dec_downsample must be an integer in [0, dec_depth], got {ds!r}")
        if a["message"] == "tiled" and a["period"] % 2**ds:
            raise _err(f"period {a['period']} must be divisible by 2**dec_downsample = {2**ds}")
        return a

    @classmethod
    def tiny_params(cls) -> dict[str, Any]:
        """A tiny random-init decoder (hidden's tiny net) and a few OPT steps, for the contract tests."""
        from .hidden import Hidden

        return {"decoder": "hidden", "decoder_params": Hidden.tiny_params(), "steps": 3}

    def setup(self, device: torch.device) -> None:
        """Load the decoder (own weights, or the wrapped method's) onto ``device``."""
        self.device = torch.device(device)
        if self.inner is not None:
            try:
                self.inner.setup(self.device)
            except SkipCell as e:
                if self._fallback:
                    raise SkipCell(
                        f"method 'ismark': no decoder: the enhanced decoder {WEIGHTS_PACKAGE}/"
                        f"{self.weights_name}.safetensors is not installed (train it with `wmbench train "
                        f"ismark_enhance`, or pass params.checkpoint), and the fallback decoder 'hidden' has no "
                        f"weights either: {e}"
                    ) from None
                raise SkipCell(f"method 'ismark': decoder {self.decoder_name!r}: {e}") from None
            self._hash = self.inner.weights_hash()
            return
        if self.init is None and self.ckpt_path is None:
            raise SkipCell(
                f"method 'ismark': no weights for its own decoder: no params.checkpoint given and the shipped "
                f"file {WEIGHTS_PACKAGE}/{self.weights_name}.safetensors is not installed. Train one with "
                "`wmbench train ismark_enhance` (starts from a hidden decoder pretrained without noise), then "
                "pass params: {checkpoint: <out dir>/ismark_enhance.safetensors}; or use decoder: hidden"
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.dec = Decoder(self.arch)
        if self.ckpt_path is not None:
            from safetensors.torch import load_file

            sd = load_file(str(self.ckpt_path))
            part = {k[len("decoder.") :]: v for k, v in sd.items() if k.startswith("decoder.")}
            try:
                self.dec.load_state_dict(part)
            except RuntimeError as e:
                raise _err(f"{self.ckpt_path} does not fit the decoder architecture: {e}") from None
        self.dec.to(self.device).eval().requires_grad_(False)
        self._hash = hashlib.sha256(
            b"".join(
                k.encode() + v.detach().cpu().contiguous().numpy().tobytes()
                for k, v in sorted(self.export_weights().items())
            )
        ).hexdigest()[:16]

    def weights_hash(self) -> str:
        return self._hash

    def _decode(self, y: Tensor) -> Tensor:
        """Decoder logits, differentiable w.r.t. y.  b 3 h w -> b k"""
        if self.inner is not None:
            return self.inner.extract(y)
        if self.dec is None:
            raise _err("call setup(device) before embed/extract")
        ws = self.arch["work_size"]
        return self.dec(y if ws is None else _resize(y, (ws, ws)))

    # ------------------------------------------------------------------------------------------ OPT
    def _generators(self, x: Tensor, msg: Tensor) -> list[torch.Generator]:
        """One CPU generator per image, seeded from (seed, image bytes, message bits): batch-independent."""
        return rng.content_gens(self.seed, x, msg).gens

    def _message_loss(self, logits: Tensor, msg: Tensor) -> Tensor:
        """Per-sample message loss.  logits n k, msg n k in {0,1} -> n"""
        if self.message_loss == "bce":
            return F.binary_cross_entropy_with_logits(logits, msg, reduction="none").mean(1)
        return ((torch.tanh(logits / 2) - (2 * msg - 1)) ** 2).mean(1)

    def _floor_project(self, img: Tensor, cover: Tensor) -> None:
        """In place: scale each residual whose PSNR (of the 8-bit image) is below ``psnr_floor`` onto it."""
        assert self.psnr_floor is not None
        target = 10 ** (-self.psnr_floor / 10)  # MSE at the floor
        mse = ((torch.round(img.clamp(0, 1) * 255) / 255 - cover) ** 2).flatten(1).mean(1)
        over = mse > target
        if over.any():
            scale = torch.where(over, (target / mse.clamp_min(1e-12)).sqrt(), torch.ones_like(mse))
            img.copy_(cover + (img - cover) * scale[:, None, None, None])

    def opt_embed(self, x: Tensor, msg: Tensor, steps: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Algorithm 1 on a batch (each image independently).  x: b 3 h w in [0,1], msg: b k in {0,1}
        -> (8-bit image b 3 h w, {"loss": b final objectives, "psnr": b})"""
        k = self.steps if steps is None else steps
        gens = self._generators(x, msg)
        cover = x.detach()
        img = cover.clone().requires_grad_(True)
        opt = torch.optim.Adam([img], lr=self.lr)
        b, m = x.shape[0], len(self.layers)
        n = self.noise_per_step or m
        last = torch.zeros(b, device=x.device)
        with torch.enable_grad():
            for _ in range(k):
                q = _quantize_st(img)
                noised, owner = [], []
                for i in range(b):
                    idx = range(m) if n == m else torch.randperm(m, generator=gens[i])[:n].tolist()
                    for j in idx:
                        noised.append(self.layers[j](q[i : i + 1], cover[i : i + 1], gens[i]))
                        owner.append(i)
                logits = self._decode(torch.cat(noised))  # b*n k
                l_d = self._message_loss(logits, msg[owner]).view(b, n).mean(1)  # b
                l_e = ((2 * q - 2 * cover) ** 2).flatten(1).mean(1)  # b, MSE on [-1,1] values
                per = self.lambda_e * l_e + self.lambda_d * l_d
                (grad,) = torch.autograd.grad(per.sum(), [img])
                img.grad = grad
                opt.step()
                with torch.no_grad():
                    img.clamp_(0, 1)
                    if self.psnr_floor is not None:
                        self._floor_project(img, cover)
                last = per.detach()
        with torch.no_grad():
            y = torch.round(img.detach().clamp(0, 1) * 255) / 255
            if self.psnr_floor is not None:
                delta = img.detach().clamp(0, 1) - cover
                for _ in range(200):  # rounding can push an image just below the floor: shrink until it holds
                    bad = _psnr(y, cover) < self.psnr_floor
                    if not bad.any():
                        break
                    delta = torch.where(bad[:, None, None, None], delta * 0.97, delta)
                    y = torch.round((cover + delta).clamp(0, 1) * 255) / 255
            return y, {"loss": last, "psnr": _psnr(y, cover)}

    def objective(self, y: Tensor, x: Tensor, msg: Tensor) -> Tensor:
        """The OPT objective of images y (noise drawn as at the first step of embedding x).  -> b"""
        gens = self._generators(x, msg)
        with torch.no_grad():
            b, m = x.shape[0], len(self.layers)
            n = self.noise_per_step or m
            noised, owner = [], []
            for i in range(b):
                idx = range(m) if n == m else torch.randperm(m, generator=gens[i])[:n].tolist()
                for j in idx:
                    noised.append(self.layers[j](y[i : i + 1], x[i : i + 1], gens[i]))
                    owner.append(i)
            l_d = self._message_loss(self._decode(torch.cat(noised)), msg[owner]).view(b, n).mean(1)
            l_e = ((2 * y - 2 * x) ** 2).flatten(1).mean(1)
            return self.lambda_e * l_e + self.lambda_d * l_d

    def embed(self, x: Tensor, msg: Tensor) -> Tensor:
        """x: b 3 h w in [0,1]; msg: b k in {0,1} -> b 3 h w on the 8-bit grid"""
        check_batch(self.name, x, msg, self.nbits)
        if self.dec is None and self.inner is None:
            raise _err("call setup(device) before embed/extract")
        if self.dec is not None:
            self.dec.eval()
        x = x.to(self.device).float()
        y, _ = self.opt_embed(x, msg.to(x))
        return y

    def extract(self, y: Tensor) -> Tensor:
        """y: b 3 h w in [0,1] -> b k logits (differentiable w.r.t. y)"""
        check_batch(self.name, y, None, self.nbits)
        if self.dec is not None:
            self.dec.eval()
        return self._decode(y.to(self.device))

    # ------------------------------------------------------------------------------------------ training
    def _own(self) -> Decoder:
        if self.decoder_name != self.name:
            raise _err(
                f"decoder enhancing trains ismark's own decoder (decoder: ismark), not {self.decoder_name!r}; "
                "start it from a hidden checkpoint with model.init_from"
            )
        if self.dec is None:
            raise _err("call setup(device) before training")
        return self.dec

    def begin_training(self, *, lr: float, gen: torch.Generator) -> None:
        """Make the decoder trainable; ``gen`` (CPU) draws the training messages."""
        dec = self._own()
        dec.requires_grad_(True)
        opt = torch.optim.Adam(dec.parameters(), lr=lr)
        self._train = {"opt": opt, "gen": gen, "w": dict(self.loss_weights)}

    def training_state(self) -> dict[str, Any]:
        t = self._tstate()
        return {"nets": {"dec": self._own().state_dict()}, "opt": t["opt"].state_dict()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        t = self._tstate()
        self._own().load_state_dict(state["nets"]["dec"])
        t["opt"].load_state_dict(state["opt"])

    def export_weights(self) -> dict[str, Tensor]:
        """The own decoder's weights under ``decoder.`` (what hidden/end2 checkpoints use too)."""
        dec = self._own()
        return {f"decoder.{k}": v.detach().cpu().contiguous() for k, v in dec.state_dict().items()}

    def architecture(self) -> dict[str, Any]:
        return dict(self.arch)

    def train_step(self, batch: Tensor, noise: Callable[[Tensor, Tensor], Tensor]) -> dict[str, float]:
        """Algorithm 2, one outer iteration: OPT-embed the batch with the current decoder, round to 8 bits, then
        ``sub_iters`` decoder updates, each on ``noise(wm, cover)`` (computed without gradient)."""
        t = self._tstate()
        dec = self._own()
        x = batch.to(self.device).float()
        b = x.shape[0]
        msg = torch.randint(0, 2, (b, self.nbits), generator=t["gen"]).to(x)
        dec.eval()
        wm, info = self.opt_embed(x, msg, steps=self.train_opt_steps)
        with torch.no_grad():
            opt_acc = float(((self._decode(wm) > 0).float() == msg).float().mean())
        dec.train()
        losses, accs = [], []
        for _ in range(self.sub_iters):
            with torch.no_grad():
                distorted = noise(wm, x).detach()
            logits = self._decode(distorted)
            loss = t["w"]["message"] * F.binary_cross_entropy_with_logits(logits, msg)
            t["opt"].zero_grad(set_to_none=True)
            loss.backward()
            t["opt"].step()
            losses.append(float(loss.detach()))
            accs.append(float(((logits.detach() > 0).float() == msg).float().mean()))
        dec.eval()
        return {
            "loss": sum(losses) / len(losses),
            "message_loss": sum(losses) / len(losses),
            "bit_acc": sum(accs) / len(accs),
            "opt_bit_acc": opt_acc,
            "psnr": float(info["psnr"].clamp_max(100).mean()),
        }
