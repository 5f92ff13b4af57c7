"""Exported embedder/extractor pairs: TorchScript (``torch.jit.save``) or torch.export (``torch.export.save``, .pt2).

Many learned baselines (HiDDeN, MBRS, CIN, TrustMark, VideoSeal) circulate as two exported networks; this adapter
runs any such pair without their source code.  The nets are called as ``embedder(x, msg) -> b 3 h w`` and
``extractor(y) -> b k``; the suite params say how they expect their inputs and what they return:

* ``embedder``, ``extractor`` (paths, required), ``nbits`` (required);
* ``input_range`` "0,1" (default) | "-1,1": pixel range both nets take (and the embedder returns);
* ``message_format`` "01" (default) | "pm1": message as {0,1} or ±1 floats;
* ``embed_output`` "image" (default) | "residual": the embedder returns the watermarked image, or a residual
  (in the input range's units) that is added to the cover;
* ``output`` "logits" (default) | "probs" | "signed": what the extractor returns; probabilities are turned into
  logits (clamped to [1e-6, 1 - 1e-6] first), ±1-style signed values are used as logits as they are;
* ``size`` (null or int): run both nets at ``size × size``: the cover is resized down (bilinear, antialiased),
  the residual the net adds there is resized back and added to the full-resolution cover, and the extractor gets
  the image resized to ``size²``.  In image mode that residual is "net output − resized cover", so it also carries
  the net's own reconstruction error of the cover: nets that return a residual (``embed_output: residual``) are
  the better choice when resizing;
* ``strength`` (> 0, default 1): scale of the residual (``y = x + strength · r``; in image mode r = out − x).

Output is clamped to [0, 1].  Files are recognised by their content (a .pt2 archive or a TorchScript archive;
the .pt2 suffix also selects torch.export); relative paths are read from the working directory.  A torch.export
program runs only on the input shapes it was exported for: export the batch dimension as dynamic and, unless
``size`` is set, the spatial ones too.  ``differentiable_extract`` is True: an exported module is an ordinary
differentiable graph, so white-box attacks backpropagate through the resizing, range conversion and extractor.

The watermark cache is keyed by a hash of both files' bytes (``weights_hash``) and the other params, not by the
paths: the same files at another path reuse the cache, changed files do not.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from wmbench.api import Method, WmbenchError, params_fingerprint
from wmbench.params import Int, Num, PluginParams

from .classic import check_batch

NAME = "torchscript"
INPUT_RANGES = ("0,1", "-1,1")
MESSAGE_FORMATS = ("01", "pm1")
#: probabilities are clamped to [EPS, 1 - EPS] before the logit
EPS = 1e-6
#: "probs" outputs further than this outside [0, 1] mean the extractor returns something else
PROBS_SLACK = 1e-3


def _choice(param: str, value: Any, allowed: tuple[str, ...], hint: str = "") -> str:
    if isinstance(value, str) and value.replace(" ", "") in allowed:
        return value.replace(" ", "")
    ok = " | ".join(repr(a) for a in allowed)
    raise WmbenchError(f"method {NAME!r}: params.{param} must be one of {ok}, got {value!r}{hint}")


def _range_param(value: Any) -> str:
    """'0,1' | '-1,1', also written as a two-number list ([0, 1] / [-1, 1])."""
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        value = ",".join(f"{v:g}" for v in value)
    return _choice("input_range", value, INPUT_RANGES)


def _path_param(param: str, value: Any) -> Path:
    if value is None:
        raise WmbenchError(
            f"method {NAME!r}: params.{param} is required: the path of the exported {param} "
            "(torch.jit.save or torch.export.save)"
        )
    if not isinstance(value, str | os.PathLike):
        raise WmbenchError(f"method {NAME!r}: params.{param} must be a file path, got {value!r}")
    p = Path(value).expanduser()
    if not p.is_file():
        raise WmbenchError(
            f"method {NAME!r}: params.{param}: file not found: {p}"
            + (
                ""
                if p.is_absolute()
                else f" (relative paths are read from the working directory {Path.cwd()})"
            )
        )
    return p


def _resize(x: Tensor, h: int, w: int) -> Tensor:
    """Bilinear, antialiased when shrinking; differentiable.  b c H W -> b c h w"""
    if tuple(x.shape[-2:]) == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def _archive_kind(data: bytes) -> str:
    """'export', 'jit', 'pickle' (a torch.save checkpoint) or 'unknown', from a file's zip entries."""
    try:
        names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    except zipfile.BadZipFile:
        return "unknown"
    base = {n.rsplit("/", 1)[-1] for n in names}
    if "archive_format" in base or "serialized_exported_program.json" in base:
        return "export"
    if "constants.pkl" in base:
        return "jit"
    if "data.pkl" in base:
        return "pickle"
    return "unknown"


def load_exported(param: str, path: Path, data: bytes, device: torch.device) -> nn.Module:
    """A TorchScript module or a torch.export program's module from a file's bytes, on ``device``."""
    kind = _archive_kind(data)
    how = (
        "export it with torch.jit.save(torch.jit.script(net), PATH) or "
        "torch.export.save(torch.export.export(net, example_args), 'PATH.pt2')"
    )
    if kind == "pickle":
        raise WmbenchError(
            f"method {NAME!r}: params.{param}: {path} is a torch.save checkpoint (a pickled module or state "
            f"dict), not an exported net; {how}"
        )
    use_export = kind == "export" or (kind == "unknown" and path.suffix == ".pt2")
    try:
        with warnings.catch_warnings():  # torch >= 2.10 marks TorchScript as deprecated on every load
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            if use_export:
                module = torch.export.load(io.BytesIO(data)).module()
            else:
                module = torch.jit.load(io.BytesIO(data), map_location=device)
    except Exception as e:
        what = "a torch.export program" if use_export else "a TorchScript module"
        raise WmbenchError(
            f"method {NAME!r}: params.{param}: cannot load {path} as {what} ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); {how}"
        ) from e
    if use_export:
        # an exported module refuses .eval(): it runs in the mode it was exported in
        module = module.to(device)
    else:
        module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class TorchScript(Method):
    """An exported embedder/extractor pair; see the module docstring for the params.

    Shapes: embedder(x: b 3 h w, msg: b nbits) -> b 3 h w; extractor(y: b 3 h w) -> b nbits, where h w is the
    image's size or ``size``.
    """

    name = NAME
    description = "exported embedder/extractor pair (torch.jit.save or torch.export .pt2); nbits from params"
    differentiable_extract: ClassVar[bool] = True

    class Params(PluginParams):
        embedder: str | os.PathLike[str] | None = Field(
            None, description="required: the exported embedder file"
        )
        extractor: str | os.PathLike[str] | None = Field(
            None, description="required: the exported extractor file"
        )
        nbits: int | None = Int(None, ge=1, le=4096, description="required: bits the pair carries")
        input_range: str | list[float] = Field(
            "0,1", description="pixel range the nets expect: '0,1' or '-1,1'"
        )
        output: Literal["logits", "probs", "signed"] = Field(
            "logits", description="what the extractor returns"
        )
        embed_output: Literal["image", "residual"] = Field("image", description="what the embedder returns")
        message_format: str | int = Field("01", description="messages as '01' ({0,1}) or 'pm1' (±1)")
        size: int | None = Int(None, ge=1, le=4096, description="fixed working size (null: the image's)")
        strength: float = Num(1.0, gt=0, le=1000, description="residual scale at embedding")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.p
        embedder, extractor, nbits, message_format = p.embedder, p.extractor, p.nbits, p.message_format
        self.embedder_path = _path_param("embedder", embedder)
        self.extractor_path = _path_param("extractor", extractor)
        if nbits is None:
            raise WmbenchError(
                f"method {NAME!r}: params.nbits is required: how many bits the pair carries (the extractor's "
                "output width)"
            )
        self.nbits = nbits
        self.input_range = _range_param(p.input_range)
        self.output, self.embed_output, self.size, self.strength = (
            p.output,
            p.embed_output,
            p.size,
            p.strength,
        )
        yaml_hint = (
            ' (YAML reads 01 as the number 1: quote it, message_format: "01")' if message_format == 1 else ""
        )
        self.message_format = _choice("message_format", message_format, MESSAGE_FORMATS, yaml_hint)
        self.params: dict[str, Any] = {
            "embedder": str(embedder),
            "extractor": str(extractor),
            "nbits": nbits,
            "input_range": self.input_range,
            "output": self.output,
            "embed_output": self.embed_output,
            "message_format": self.message_format,
            "size": self.size,
            "strength": self.strength,
        }
        self.device = torch.device("cpu")
        self.embedder: nn.Module | None = None
        self.extractor: nn.Module | None = None
        self._dtypes = {"embedder": torch.float32, "extractor": torch.float32}
        self._hash = ""

    @classmethod
    def tiny_params(cls) -> dict[str, Any]:
        """A tiny scripted pair (written once under ``$WMBENCH_HOME/torchscript/``) for the contract tests."""
        emb, ext = export_tiny_pair()
        return {
            "embedder": str(emb),
            "extractor": str(ext),
            "nbits": TINY_NBITS,
            "embed_output": "residual",
            "size": 64,
        }

    # ------------------------------------------------------------------------------------------ weights
    def setup(self, device: torch.device) -> None:
        """Load both nets onto ``device`` from the bytes that ``weights_hash`` hashes."""
        self.device = torch.device(device)
        h = hashlib.sha256()
        nets = []
        for param, path in (("embedder", self.embedder_path), ("extractor", self.extractor_path)):
            try:
                data = path.read_bytes()
            except OSError as e:
                raise WmbenchError(f"method {NAME!r}: params.{param}: cannot read {path}: {e}") from e
            h.update(hashlib.sha256(data).digest())
            nets.append(load_exported(param, path, data, self.device))
        self.embedder, self.extractor = nets
        self._hash = h.hexdigest()[:16]
        for param, net in (("embedder", self.embedder), ("extractor", self.extractor)):
            first = next((t for t in (*net.parameters(), *net.buffers()) if t.is_floating_point()), None)
            self._dtypes[param] = first.dtype if first is not None else torch.float32

    def weights_hash(self) -> str:
        """Hash of both files' bytes (read now if ``setup`` has not run)."""
        if not self._hash:
            h = hashlib.sha256()
            for param, path in (("embedder", self.embedder_path), ("extractor", self.extractor_path)):
                try:
                    h.update(hashlib.sha256(path.read_bytes()).digest())
                except OSError as e:
                    raise WmbenchError(f"method {NAME!r}: params.{param}: cannot read {path}: {e}") from e
            self._hash = h.hexdigest()[:16]
        return self._hash

    def fingerprint(self) -> str:
        """Name + params without the paths + the files' hash (content-addressed watermark cache)."""
        p = {k: v for k, v in self.params.items() if k not in ("embedder", "extractor")}
        return params_fingerprint(self.name, p, self.weights_hash())

    def _ready(self) -> tuple[nn.Module, nn.Module]:
        if self.embedder is None or self.extractor is None:
            raise WmbenchError(f"method {NAME!r}: call setup(device) before embed/extract")
        return self.embedder, self.extractor

    # ------------------------------------------------------------------------------------------ inference
    def _net_input(self, x: Tensor, param: str) -> Tensor:
        """[0,1] images to what a net takes (device, dtype, size, range).  b 3 h w -> b 3 s s"""
        x = x.to(self.device, self._dtypes[param])
        if self.size is not None:
            x = _resize(x, self.size, self.size)
        return x * 2 - 1 if self.input_range == "-1,1" else x

    def _call(self, param: str, net: nn.Module, *args: Tensor) -> Tensor:
        try:
            out = net(*args)
        except torch.cuda.OutOfMemoryError:  # not a problem of the files
            raise
        except Exception as e:
            shapes = ", ".join(str(tuple(a.shape)) for a in args)
            hint = (
                "" if self.size is not None else " (a net exported for a fixed image size needs params.size)"
            )
            raise WmbenchError(
                f"method {NAME!r}: the {param} ({self.params[param]}) failed on inputs of shape {shapes}{hint}:\n"
                f"{type(e).__name__}: {e}"
            ) from e
        if not isinstance(out, Tensor):
            raise WmbenchError(
                f"method {NAME!r}: the {param} ({self.params[param]}) returned {type(out).__name__}, not a tensor"
            )
        return out

    def embed(self, x: Tensor, msg: Tensor) -> Tensor:
        """x: b 3 h w in [0,1]; msg: b k in {0,1} -> b 3 h w in [0,1]"""
        check_batch(self.name, x, msg, self.nbits)
        emb, _ = self._ready()
        h, w = x.shape[-2:]
        with torch.no_grad():
            x0 = x.to(self.device)
            xn = self._net_input(x0, "embedder")  # b 3 s s
            m = msg.to(self.device, self._dtypes["embedder"])
            out = self._call("embedder", emb, xn, m * 2 - 1 if self.message_format == "pm1" else m)
            if out.shape != xn.shape:
                raise WmbenchError(
                    f"method {NAME!r}: the embedder ({self.params['embedder']}) returned shape {tuple(out.shape)} "
                    f"for images {tuple(xn.shape)}; it must return b 3 h w (the watermarked image, or with "
                    "embed_output: residual the residual)"
                )
            if self.input_range == "-1,1":  # back to [0,1] units (a residual only scales)
                out = out / 2 if self.embed_output == "residual" else (out + 1) / 2
                xn = (xn + 1) / 2
            out = out.to(x0.dtype)
            if self.embed_output == "image" and self.size is None and self.strength == 1.0:
                return out.clamp(0, 1)
            r = out if self.embed_output == "residual" else out - xn.to(x0.dtype)  # b 3 s s
            return (x0 + self.strength * _resize(r, h, w)).clamp(0, 1)

    def extract(self, y: Tensor) -> Tensor:
        """y: b 3 h w in [0,1] -> b k logits (differentiable w.r.t. y)"""
        check_batch(self.name, y, None, self.nbits)
        _, ext = self._ready()
        z = self._call("extractor", ext, self._net_input(y, "extractor"))
        if z.shape != (y.shape[0], self.nbits):
            raise WmbenchError(
                f"method {NAME!r}: the extractor ({self.params['extractor']}) returned shape {tuple(z.shape)} for "
                f"{y.shape[0]} image(s); expected {y.shape[0]}×{self.nbits} (check params.nbits)"
            )
        z = z.float()
        if self.output == "probs":
            lo, hi = float(z.detach().min()), float(z.detach().max())
            if lo < -PROBS_SLACK or hi > 1 + PROBS_SLACK:
                raise WmbenchError(
                    f"method {NAME!r}: params.output is 'probs' but the extractor returned values in "
                    f"[{lo:.3g}, {hi:.3g}], not [0, 1]; set output: logits or signed"
                )
            z = torch.logit(z.clamp(EPS, 1 - EPS))
        return z


# ---------------------------------------------------------------------------------------------------------------
# a tiny scripted pair for the contract tests (not a watermark anyone should use)
# ---------------------------------------------------------------------------------------------------------------

TINY_NBITS = 8


class TinyEmbedder(nn.Module):
    """Adds fixed ±1 patterns (one per bit, period ``p``) signed by the {0,1} message; returns the residual."""

    def __init__(self, nbits: int = TINY_NBITS, p: int = 8, amp: float = 4.0 / 255.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("patterns", torch.randint(0, 2, (nbits, 3 * p * p), generator=g).float() * 2 - 1)
        self.p, self.amp = p, amp

    def forward(self, x: Tensor, msg: Tensor) -> Tensor:  # b 3 h w, b k -> b 3 h w
        b, h, w = x.shape[0], x.shape[2], x.shape[3]
        r = ((msg * 2 - 1) @ self.patterns).view(b, 3, self.p, self.p) * (self.amp / msg.shape[1] ** 0.5)
        return r.repeat(1, 1, h // self.p + 1, w // self.p + 1)[:, :, :h, :w]


class TinyExtractor(nn.Module):
    """Correlates the high-passed image, folded onto one period, with the embedder's patterns."""

    def __init__(self, nbits: int = TINY_NBITS, p: int = 8) -> None:
        super().__init__()
        self.register_buffer("patterns", TinyEmbedder(nbits, p).patterns.clone())
        self.p = p

    def forward(self, y: Tensor) -> Tensor:  # b 3 h w -> b k
        z = y - F.avg_pool2d(y, 3, 1, 1, count_include_pad=False)
        b, h, w = z.shape[0], z.shape[2], z.shape[3]
        hp, wp = h // self.p * self.p, w // self.p * self.p
        f = z[:, :, :hp, :wp].reshape(b, 3, hp // self.p, self.p, wp // self.p, self.p).mean((2, 4))
        return f.reshape(b, -1) @ self.patterns.t() * 100.0


def export_tiny_pair(root: Path | None = None) -> tuple[Path, Path]:
    """Script the tiny pair and save it under a folder named by its bytes' hash (atomic writes; reused when
    present, so every call gives the same paths and files).  -> (embedder, extractor) paths"""
    from wmbench.cache import home
    from wmbench.store import atomic_write_bytes

    blobs = []
    for net in (TinyEmbedder(), TinyExtractor()):
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.script(net.eval()), buf)
        blobs.append(buf.getvalue())
    d = (root or home() / "torchscript") / f"tiny-{hashlib.sha256(b''.join(blobs)).hexdigest()[:12]}"
    paths = (d / "embedder.pt", d / "extractor.pt")
    for path, data in zip(paths, blobs, strict=True):
        if not path.is_file() or path.read_bytes() != data:
            atomic_write_bytes(path, data)
    return paths
