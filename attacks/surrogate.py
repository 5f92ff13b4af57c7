"""``surrogate_transfer``: a transfer attack through a watermarked-vs-clean classifier the attacker trains itself.

Threat model (WAVES' surrogate attack, REFERENCE §3): the attacker can watermark images with the target method
(black-box embed access: random messages, its own images) but cannot query or differentiate the decoder.  It
trains a small classifier to tell its watermarked images from their clean versions, then runs PGD on that
classifier (driving the "watermarked" logit down, towards "clean") and hands the perturbed image to the real
decoder.  Only the surrogate is differentiated, so non-differentiable methods (numpy/ONNX decoders) are attacked
too; the target's decoder is never called by the attack.

Classifier (``Surrogate``): optionally a fixed high-pass residual (x − 3×3 box blur, ×8) stacked on the centred
image, two 3×3 convs at full resolution, ``depth − 2`` stride-2 3×3 convs doubling the channels (capped at 4×
``width``), LeakyReLU, global average pooling and one linear logit (> 0 = watermarked).  No normalisation layers,
so a batch's output never depends on its other images.  Fully convolutional: trained on 64² crops, run at any size.

Training (``wmbench train surrogate_<method>``, configs ``wmbench/configs/surrogate_*.yaml``): the first train
steps watermark the trainer's crops with the target method (seeded random messages, 8-bit rounded as the runner
does) until a pool of ``pool_size`` (clean, watermarked) pairs is full; that is the expensive part and is done
once (the pool is part of the resumable state).  Every step then trains on ``batch_size`` pairs drawn from the
pool: both versions of each crop, BCE on the logit (balanced by construction), the config's noise pool applied to
the whole batch alike.  The card's eval: accuracy and ROC AUC on eval-split tiles watermarked by the target.

Attack: strength = ε in 1/255 (L∞ by default, or L2 as RMS per pixel; ``wmbench.attacks.adversarial.pgd``),
``steps`` 50, ``step_size`` 0.05 of the ball's radius, start at the watermarked image.  The surrogate is, in
order: ``params.checkpoint`` (a ``.safetensors`` written by ``wmbench train``; metadata holds the architecture and
the target method + params), ``params.weights`` (a shipped stem), else the shipped ``surrogate_<target>`` where
target is ``params.target`` or the name of the method under attack.  With none the cell is skipped (SkipCell)
with a message naming the config to train.  Rows: ``family`` adversarial, ``attack_name`` surrogate_transfer, and
the ``unit`` says transfer.  ``last_stats`` holds the surrogate's logits before/after of the last batch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, StrictBool
from torch import Tensor, nn

from wmbench.api import Attack, Method, SkipCell, TrainingHooks, WmbenchError, quantize_8bit
from wmbench.checkpoints import WEIGHTS_PACKAGE, check_init, read_metadata, shipped
from wmbench.params import Int, WeightsStem, param_defaults
from wmbench.rng import Gen

from .adversarial import PgdParams, _eps, pgd
from .regeneration import params_label

NAME = "surrogate_transfer"
#: architecture params (stored in the checkpoint's metadata) and their defaults
ARCH_DEFAULTS: dict[str, Any] = {"width": 16, "depth": 4, "highpass": True}
HIGHPASS_GAIN = 8.0


def shipped_name(target: str) -> str:
    """The stem of the shipped surrogate for a target method (also its training config's name)."""
    return f"surrogate_{target}"


class Surrogate(nn.Module):
    """Watermarked-vs-clean classifier.  b 3 h w in [0,1] -> b logits (> 0 = watermarked)."""

    def __init__(self, width: int, depth: int, highpass: bool) -> None:
        super().__init__()
        self.highpass = highpass
        cin = 6 if highpass else 3
        layers: list[nn.Module] = [nn.Conv2d(cin, width, 3, padding=1), nn.LeakyReLU(0.2)]
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.LeakyReLU(0.2)]
        c = width
        for _ in range(depth - 2):
            nc = min(2 * c, 4 * width)
            layers += [nn.Conv2d(c, nc, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c = nc
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1)

    def forward(self, x: Tensor) -> Tensor:
        z = x * 2.0 - 1.0
        if self.highpass:
            blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
            z = torch.cat([z, (x - blur) * HIGHPASS_GAIN], dim=1)
        f = self.features(z).mean(dim=(2, 3))  # b c
        return self.head(f).squeeze(1)  # b


def _read_meta(path: Path) -> dict[str, Any]:
    meta = read_metadata(f"attack {NAME!r}", path)
    if meta.get("wmbench_method") != NAME or "params" not in meta:
        raise WmbenchError(
            f"attack {NAME!r}: {path} is not a surrogate checkpoint written by `wmbench train` "
            f"(metadata wmbench_method={meta.get('wmbench_method')!r})"
        )
    return json.loads(meta["params"])


def _auc(neg: Tensor, pos: Tensor) -> float:
    """ROC AUC of scores (pos should score higher), ties counted half.  n, m -> float"""
    d = pos.double()[:, None] - neg.double()[None, :]
    return float(((d > 0).double() + 0.5 * (d == 0).double()).mean())


class SurrogateTransfer(TrainingHooks, Attack):
    """PGD on a trained watermarked-vs-clean surrogate classifier, transferred to the target; see the module doc.

    Params: ``checkpoint`` (path), ``weights`` (shipped stem), ``target`` (method whose shipped surrogate to use;
    default the method under attack; when training: the method to watermark with), ``target_params`` (its params,
    training only), ``norm`` linf|l2, ``steps`` 50, ``step_size`` 0.05, ``random_start``; training: ``init``
    ("random"), ``seed``, ``pool_size`` 512; architecture ``width`` 16, ``depth`` 4, ``highpass`` true (from the
    checkpoint when one is given; explicit values must agree).
    """

    training_form = False  # forward_st refuses: it attacks a method's watermark
    name = NAME
    description = (
        "transfer PGD: pushes a trained watermarked-vs-clean surrogate classifier towards 'clean' (WAVES "
        "surrogate attack; the target's decoder is never queried)"
    )
    unit = "epsilon (1/255; L-inf, or RMS per pixel with norm l2), transfer from a surrogate classifier"
    family = "adversarial"
    differentiable = False
    needs_method = True
    default_strengths = (2.0, 4.0, 8.0)
    strength_range = (0.0, 8.0)
    loss_weights: ClassVar[dict[str, float]] = {"bce": 1.0}
    train_stats: ClassVar[tuple[str, ...]] = ("loss", "acc", "pool")
    eval_description = (
        "surrogate classifier on eval tiles and their copies watermarked by the target (seeded random messages, "
        "8-bit): accuracy at logit 0 (acc, acc_clean, acc_wm), ROC AUC, mean logits"
    )
    _attack_defaults: ClassVar[dict[str, Any]] = param_defaults(PgdParams)

    class Params(PgdParams):
        checkpoint: str | None = Field(None, min_length=1, description="a surrogate checkpoint (path)")
        weights: WeightsStem | None = Field(None, description="a shipped surrogate's stem")
        target: str | None = Field(
            None, description="the method whose surrogate to use (default: the attacked one)"
        )
        target_params: dict[str, Any] | None = Field(None, description="the target's params (training only)")
        init: Literal["random"] | None = Field(
            None, description="random: a seeded random-init net (training)"
        )
        seed: int = Int(0, ge=0, le=2**63 - 1, description="seed of the random init")
        pool_size: int = Int(512, ge=1, le=1_000_000, description="training: images in the replay pool")
        width: int = Int(ARCH_DEFAULTS["width"], ge=1, le=1024, description="architecture: channels")
        depth: int = Int(ARCH_DEFAULTS["depth"], ge=2, le=64, description="architecture: conv layers")
        highpass: StrictBool = Field(ARCH_DEFAULTS["highpass"], description="architecture: high-pass input")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p, who = self.p, self.name
        checkpoint, weights, target, target_params = p.checkpoint, p.weights, p.target, p.target_params
        init = p.init
        arch_given = {k: getattr(p, k) for k in ARCH_DEFAULTS if k in p.model_fields_set}
        check_init(
            f"attack {who!r}", init, checkpoint is not None or weights is not None, "a checkpoint/weights"
        )
        if checkpoint is not None and weights is not None:
            raise WmbenchError(f"attack {who!r}: give either checkpoint or weights, not both")
        if target is not None:
            from wmbench.registry import methods

            if not isinstance(target, str) or target not in methods():
                raise WmbenchError(f"attack {who!r}: target: {methods().unknown_message(str(target))}")
        if init == "random" and target is None:
            raise WmbenchError(
                f"attack {who!r}: training (init: random) needs params.target, the method to mimic"
            )
        self.init, self.seed, self.pool_size = init, p.seed, p.pool_size
        self.norm, self.steps, self.step_size = p.norm, p.steps, p.step_size
        self.random_start = p.random_start
        self.target, self.target_params = target, dict(target_params or {})
        self.ckpt_path: Path | None = None
        stored: dict[str, Any] = {}
        if checkpoint is not None:
            self.ckpt_path = Path(checkpoint).expanduser()
            if not self.ckpt_path.is_file():
                raise WmbenchError(f"attack {who!r}: params.checkpoint not found: {self.ckpt_path}")
        elif weights is not None:
            self.ckpt_path = shipped(weights)
            if self.ckpt_path is None:
                raise WmbenchError(
                    f"attack {who!r}: params.weights: {WEIGHTS_PACKAGE}/{weights}.safetensors is not installed"
                )
        if self.ckpt_path is not None:
            stored = _read_meta(self.ckpt_path)
            for k, v in (("target", target), ("target_params", target_params)):
                if v is not None and stored.get(k) != v:
                    raise WmbenchError(
                        f"attack {who!r}: param {k}={v!r} disagrees with the checkpoint {self.ckpt_path} "
                        f"({k}={stored.get(k)!r}); drop the param or use a matching checkpoint"
                    )
        for k, v in arch_given.items():
            if k in stored and stored[k] != v:
                raise WmbenchError(
                    f"attack {who!r}: param {k}={v!r} disagrees with the checkpoint {self.ckpt_path} "
                    f"({k}={stored[k]!r}); drop the param or use a matching checkpoint"
                )
        self.arch: dict[str, Any] = {**ARCH_DEFAULTS, **{k: stored[k] for k in ARCH_DEFAULTS if k in stored}}
        self.arch.update(arch_given)
        if stored:
            self.target, self.target_params = stored.get("target"), dict(stored.get("target_params") or {})
        self.params: dict[str, Any] = {
            **({"checkpoint": checkpoint} if checkpoint is not None else {}),
            **({"weights": weights} if weights is not None else {}),
            **({"target": target} if target is not None else {}),
            **({"target_params": dict(target_params)} if target_params else {}),
            "norm": self.norm,
            "steps": self.steps,
            "step_size": self.step_size,
            "random_start": self.random_start,
            **arch_given,
            **({"init": init, "seed": self.seed, "pool_size": self.pool_size} if init else {}),
        }
        self.device = torch.device("cpu")
        self.net: Surrogate | None = None  # the explicit / trained surrogate
        self._by_target: dict[str, tuple[Surrogate, Path]] = {}  # shipped surrogates by method name
        self._method: Method | None = None  # the target method (training and evaluation only)
        self._train: dict[str, Any] | None = None
        self._eval_cache: dict[str, Tensor] = {}
        self.last_stats: dict[str, Any] = {}

    @classmethod
    def tiny_params(cls) -> dict[str, Any]:
        """A tiny seeded random-init surrogate (tests)."""
        return {"init": "random", "target": "dwtdct", "width": 4, "depth": 3}

    def label(self) -> str:
        return params_label(self.name, self.params, self._attack_defaults)

    def check_strength(self, strength: float) -> None:
        _eps(self.name, strength)

    # ------------------------------------------------------------------------------------------ weights
    def _build(self, path: Path | None) -> Surrogate:
        arch = dict(self.arch)
        if path is not None and path != self.ckpt_path:
            stored = _read_meta(path)
            arch = {**ARCH_DEFAULTS, **{k: stored[k] for k in ARCH_DEFAULTS if k in stored}}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = Surrogate(arch["width"], arch["depth"], arch["highpass"])
        if path is not None:
            from safetensors.torch import load_file

            try:
                net.load_state_dict(load_file(str(path)))
            except RuntimeError as e:
                raise WmbenchError(
                    f"attack {self.name!r}: {path} does not fit the architecture {arch}: {e}"
                ) from None
        return net.eval().requires_grad_(False)

    def setup(self, device: torch.device | str) -> None:
        """Build the explicit surrogate (checkpoint, weights or seeded random init) on ``device``; the default
        per-method surrogates load lazily in ``apply``."""
        self.device = torch.device(device)
        if self.init is not None or self.ckpt_path is not None:
            self.net = self._build(self.ckpt_path).to(self.device)

    def _ready(self) -> Surrogate:
        if self.net is None:
            if self.init is None and self.ckpt_path is None:
                raise WmbenchError(
                    f"attack {self.name!r}: no surrogate to train or evaluate (give a checkpoint)"
                )
            self.setup(self.device)
        assert self.net is not None
        return self.net

    def surrogate_for(self, method: Method | None) -> tuple[Surrogate, str]:
        """The classifier to attack for ``method`` and a description of where it came from."""
        if self.init is not None or self.ckpt_path is not None:
            return self._ready(), str(self.ckpt_path or "random init")
        target = self.target or (method.name if method is not None else None)
        if target is None:
            raise WmbenchError(
                f"attack {self.name!r}: call apply(..., method=<Method>) or give params.target / checkpoint"
            )
        if target not in self._by_target:
            stem = shipped_name(target)
            path = shipped(stem)
            if path is None:
                raise SkipCell(
                    f"attack {self.name!r}: no surrogate classifier for method {target!r}: "
                    f"{WEIGHTS_PACKAGE}/{stem}.safetensors is not installed and no params.checkpoint was given. "
                    f"Train one with `wmbench train {stem} --out DIR` (config wmbench/configs/{stem}.yaml; for "
                    f"another method copy wmbench/configs/surrogate_dwtdct.yaml and set model.params.target), "
                    f"then pass params: {{checkpoint: DIR/{stem}.safetensors}}"
                )
            self._by_target[target] = (self._build(path), path)
        net, path = self._by_target[target]
        return net, str(path)

    def export_weights(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self._ready().state_dict().items()}

    def architecture(self) -> dict[str, Any]:
        """What rebuilds the classifier and what it was trained on (checkpoint metadata and card)."""
        return {**self.arch, "target": self.target, "target_params": dict(self.target_params)}

    def weights_hash(self) -> str:
        h = hashlib.sha256()
        for k, v in sorted(self.export_weights().items()):
            h.update(k.encode() + v.numpy().tobytes())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------------------------------ attack
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
        net, _ = self.surrogate_for(method)
        net = net.to(x.device)
        x0 = x.detach().float()
        y = pgd(
            x0,
            net,
            eps=eps,
            norm=self.norm,
            steps=self.steps,
            step_size=self.step_size,
            gen=gen,
            random_start=self.random_start,
        )
        with torch.no_grad():
            self.last_stats = {"logit_before": net(x0).cpu(), "logit_after": net(y).cpu()}
        return y.to(x.dtype)

    def forward_st(self, x: Tensor, strength: float, *, gen: Gen, cover: Tensor | None = None) -> Tensor:
        raise WmbenchError(f"attack {self.name!r} attacks a method's watermark; it is no training distortion")

    # ------------------------------------------------------------------------------------------ target method
    def target_method(self) -> Method:
        """The method the surrogate mimics, set up on this attack's device (training and evaluation)."""
        if self._method is None:
            if self.target is None:
                raise WmbenchError(f"attack {self.name!r}: no target method recorded")
            from wmbench.registry import methods

            m = methods().get(self.target)(**self.target_params)
            m.setup(self.device)
            self._method = m
        return self._method

    def watermark(self, x: Tensor, gen: Gen) -> Tensor:
        """Embed seeded random messages with the target, 8-bit rounded.  b 3 h w -> b 3 h w"""
        m = self.target_method()
        msg = torch.randint(0, 2, (x.shape[0], m.nbits), generator=gen).float().to(self.device)
        with torch.no_grad():
            return quantize_8bit(m.embed(x.to(self.device), msg))

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate_model(self, images: Tensor, batch_size: int) -> dict[str, Any]:
        """Accuracy / AUC of the classifier on clean and target-watermarked images.  images: n 3 h w uint8"""
        net = self._ready()
        key = hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()
        if key not in self._eval_cache:
            gen = torch.Generator().manual_seed(0)
            wm = [
                self.watermark(images[i : i + batch_size].float().div(255.0), gen).cpu()
                for i in range(0, images.shape[0], batch_size)
            ]
            self._eval_cache[key] = torch.cat(wm)
        wm = self._eval_cache[key]
        lc, lw = [], []
        with torch.no_grad():
            for i in range(0, images.shape[0], batch_size):
                lc.append(net(images[i : i + batch_size].float().div(255.0).to(self.device)).cpu())
                lw.append(net(wm[i : i + batch_size].to(self.device)).cpu())
        c, w = torch.cat(lc), torch.cat(lw)
        acc_c, acc_w = float((c <= 0).double().mean()), float((w > 0).double().mean())
        return {
            "acc": (acc_c + acc_w) / 2,
            "acc_clean": acc_c,
            "acc_wm": acc_w,
            "auc": _auc(c, w),
            "logit_clean": float(c.mean()),
            "logit_wm": float(w.mean()),
            "count": int(images.shape[0]),
        }

    # ------------------------------------------------------------------------------------------ training
    def begin_training(self, *, lr: float, gen: torch.Generator) -> None:
        """Adam on the classifier; the (clean, watermarked) pool starts empty and fills in the first steps."""
        net = self._ready()
        net.requires_grad_(True)
        self._train = {
            "opt": torch.optim.Adam(net.parameters(), lr=lr),
            "gen": gen,
            "w": dict(self.loss_weights),
            "clean": None,  # pool: n 3 c c uint8
            "wm": None,
        }

    def training_state(self) -> dict[str, Any]:
        t = self._tstate()
        st: dict[str, Any] = {"net": self._ready().state_dict(), "opt": t["opt"].state_dict()}
        if t["clean"] is not None:
            st["pool_clean"], st["pool_wm"] = t["clean"], t["wm"]
        return st

    def load_training_state(self, state: dict[str, Any]) -> None:
        t = self._tstate()
        self._ready().load_state_dict(state["net"])
        t["opt"].load_state_dict(state["opt"])
        t["clean"], t["wm"] = state.get("pool_clean"), state.get("pool_wm")

    def _fill_pool(self, batch: Tensor) -> None:
        """Watermark (part of) the batch and add the pairs to the pool until it holds ``pool_size``."""
        t = self._tstate()
        have = 0 if t["clean"] is None else t["clean"].shape[0]
        need = self.pool_size - have
        if need <= 0:
            return
        x = quantize_8bit(batch[:need].to(self.device))
        wm = self.watermark(x, t["gen"])
        c8 = (x * 255).round().to(torch.uint8).cpu()
        w8 = (wm * 255).round().to(torch.uint8).cpu()
        if t["clean"] is None:
            t["clean"], t["wm"] = c8, w8
        else:
            t["clean"], t["wm"] = torch.cat([t["clean"], c8]), torch.cat([t["wm"], w8])

    def train_step(self, batch: Tensor, noise: Callable[[Tensor, Tensor], Tensor]) -> dict[str, float]:
        """One BCE step on ``b`` pool pairs (both versions of each crop); see the module docstring."""
        t = self._tstate()
        net = self._ready()
        self._fill_pool(batch)
        g = t["gen"]
        n, b = t["clean"].shape[0], batch.shape[0]
        idx = torch.randint(0, n, (b,), generator=g)
        clean = t["clean"][idx].float().div(255.0).to(self.device)
        wm = t["wm"][idx].float().div(255.0).to(self.device)
        z = noise(torch.cat([clean, wm]), torch.cat([clean, clean]))
        labels = torch.cat([torch.zeros(b), torch.ones(b)]).to(self.device)
        logits = net(z)
        loss = t["w"]["bce"] * F.binary_cross_entropy_with_logits(logits, labels)
        t["opt"].zero_grad(set_to_none=True)
        loss.backward()
        t["opt"].step()
        acc = ((logits.detach() > 0).float() == labels).float().mean()
        return {"loss": float(loss.detach()), "acc": float(acc), "pool": float(n)}
