"""The ``torchscript`` adapter: tiny exported pairs (scripted, traced, torch.export) written into tmp_path by the
tests themselves, run through every param and through the runner."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from wmbench.methods.torchscript import TorchScript

from wmbench.api import WmbenchError, quantize_8bit
from wmbench.registry import methods

K = 8  # bits
P = 16  # pattern period
AMP = 6.0 / 255.0  # per-pixel std of the residual in [0,1] units
OUTPUTS = {"logits": 0, "probs": 1, "signed": 2}


def _patterns() -> Tensor:  # k 3*P*P of ±1
    g = torch.Generator().manual_seed(7)
    return torch.randint(0, 2, (K, 3 * P * P), generator=g).float() * 2 - 1


class Embedder(nn.Module):
    """Adds per-bit ±1 patterns (period P) signed by the message; checks the input conventions it expects."""

    def __init__(
        self,
        *,
        pm1_range: bool = False,
        pm1_msg: bool = False,
        residual: bool = False,
        check: bool = True,
        fixed: int = 0,
    ) -> None:
        super().__init__()
        self.register_buffer("patterns", _patterns())
        self.p, self.scale = P, AMP / K**0.5  # TorchScript reads no globals
        self.pm1_range, self.pm1_msg, self.residual, self.check, self.fixed = (
            pm1_range,
            pm1_msg,
            residual,
            check,
            fixed,
        )

    def forward(self, x: Tensor, msg: Tensor) -> Tensor:  # b 3 h w, b k -> b 3 h w
        if self.check:
            if self.pm1_msg:
                assert bool((msg.abs() == 1).all()), "expects ±1 messages"
            else:
                assert bool(((msg == 0) | (msg == 1)).all()), "expects {0,1} messages"
            if self.pm1_range:
                assert bool(x.min() < 0) and bool(x.min() >= -1), "expects pixels in [-1,1]"
            else:
                assert bool(x.min() >= 0), "expects pixels in [0,1]"
            if self.fixed > 0:
                assert x.shape[2] == self.fixed and x.shape[3] == self.fixed, "expects its fixed size"
        s = msg if self.pm1_msg else msg * 2 - 1
        b, h, w = x.shape[0], x.shape[2], x.shape[3]
        p = self.p
        r = (s @ self.patterns).view(b, 3, p, p) * self.scale
        r = r.repeat(1, 1, h // p + 1, w // p + 1)[:, :, :h, :w]
        if self.pm1_range:
            r = r * 2
        return r if self.residual else x + r


class Extractor(nn.Module):
    """High-pass, fold onto one period, correlate with the patterns; returns logits, probs or tanh values."""

    def __init__(
        self, *, pm1_range: bool = False, output: str = "logits", check: bool = True, fixed: int = 0
    ):
        super().__init__()
        self.register_buffer("patterns", _patterns())
        self.p = P
        self.pm1_range, self.output, self.check, self.fixed = pm1_range, OUTPUTS[output], check, fixed

    def forward(self, y: Tensor) -> Tensor:  # b 3 h w -> b k
        if self.check:
            if self.pm1_range:
                assert bool(y.min() < 0) and bool(y.min() >= -1), "expects pixels in [-1,1]"
            else:
                assert bool(y.min() >= 0), "expects pixels in [0,1]"
            if self.fixed > 0:
                assert y.shape[2] == self.fixed and y.shape[3] == self.fixed, "expects its fixed size"
        if self.pm1_range:
            y = (y + 1) / 2
        z = y - F.avg_pool2d(y, 3, 1, 1, count_include_pad=False)
        b, h, w = z.shape[0], z.shape[2], z.shape[3]
        p = self.p
        hp, wp = h // p * p, w // p * p
        f = z[:, :, :hp, :wp].reshape(b, 3, hp // p, p, wp // p, p).mean((2, 4)).reshape(b, -1)
        c = f @ self.patterns.t() * (300.0 / (3 * p * p))
        if self.output == 1:
            return torch.sigmoid(c)
        if self.output == 2:
            return torch.tanh(c)
        return c


def _save(path: Path, net: nn.Module, how: str = "script", example: tuple[Tensor, ...] = ()) -> str:
    """Export a net the way the baselines circulate: torch.jit.script/trace + jit.save, or torch.export.save."""
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if how == "script":
            torch.jit.save(torch.jit.script(net), str(path))
        elif how == "trace":
            torch.jit.save(torch.jit.trace(net, example), str(path))
        else:
            batch = torch.export.Dim("batch")
            dyn = tuple({0: batch} for _ in example)
            torch.export.save(torch.export.export(net, example, dynamic_shapes=dyn), str(path))
    return str(path)


def _pair(tmp_path: Path, tag: str = "p", emb: dict | None = None, ext: dict | None = None) -> dict[str, Any]:
    """Scripted pair in tmp_path -> params for TorchScript."""
    return {
        "embedder": _save(tmp_path / f"{tag}-emb.pt", Embedder(**(emb or {}))),
        "extractor": _save(tmp_path / f"{tag}-ext.pt", Extractor(**(ext or {}))),
        "nbits": K,
    }


def _make(**params: Any) -> TorchScript:
    m = TorchScript(**params)
    m.setup(torch.device("cpu"))
    return m


def _covers(b: int = 3, size: int = 64, seed: int = 0) -> Tensor:
    """Smooth random images in [0.2, 0.8] (dark pixels included; no clamping at strength 2).  -> b 3 size size"""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, 3, 6, 6, generator=g)
    return F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1) * 0.6 + 0.2


def _msg(b: int = 3, seed: int = 0) -> Tensor:  # b K
    return torch.randint(0, 2, (b, K), generator=torch.Generator().manual_seed(seed)).float()


def _acc(logits: Tensor, msg: Tensor) -> float:
    return float(((logits > 0).float() == msg).float().mean())


def _round_trip(m: TorchScript, size: int = 64, b: int = 3) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x, msg = _covers(b, size), _msg(b)
    y = m.embed(x, msg)
    return x, msg, y, m.extract(quantize_8bit(y))


# ---------------------------------------------------------------------------------------------------------------


def test_registered() -> None:
    assert methods().get("torchscript") is TorchScript
    assert TorchScript.differentiable_extract


def test_round_trip_scripted(tmp_path: Path) -> None:
    m = _make(**_pair(tmp_path))
    x, msg, y, logits = _round_trip(m)
    assert y.shape == x.shape and y.dtype == x.dtype and y.min() >= 0 and y.max() <= 1
    assert logits.shape == (3, K) and logits.dtype.is_floating_point
    assert _acc(logits, msg) == 1.0
    assert _acc(m.extract(x), msg) < 1.0  # the clean covers do not carry the message
    assert (-10 * torch.log10(((y - x) ** 2).mean())) > 30


def test_round_trip_traced_extractor_and_clamp(tmp_path: Path) -> None:
    ex = (_covers(2, 64),)
    params = {
        "embedder": _save(tmp_path / "emb.pt", Embedder()),
        "extractor": _save(tmp_path / "ext.pt", Extractor(check=False), "trace", ex),
        "nbits": K,
    }
    m = _make(**params)
    _, msg, _, logits = _round_trip(m, size=96)
    assert _acc(logits, msg) == 1.0
    white = torch.ones(2, 3, 64, 64)
    y = m.embed(white, _msg(2))
    assert y.max() <= 1 and y.min() >= 0, "output is clamped to [0, 1]"


def test_round_trip_torch_export(tmp_path: Path) -> None:
    """A .pt2 pair exported with a dynamic batch and a static 64² size; ``size`` lets it run on 96² images."""
    ex_x, ex_m = _covers(2, 64), _msg(2)
    params = {
        "embedder": _save(tmp_path / "emb.pt2", Embedder(check=False), "export", (ex_x, ex_m)),
        "extractor": _save(tmp_path / "ext.pt2", Extractor(check=False), "export", (ex_x,)),
        "nbits": K,
    }
    m = _make(**params)
    _, msg, y, logits = _round_trip(m, size=64, b=3)  # another batch size than exported
    assert y.shape == (3, 3, 64, 64) and _acc(logits, msg) == 1.0
    with pytest.raises(WmbenchError, match=r"params\.size"):  # static spatial shape: the hint names the fix
        m.embed(_covers(2, 96), _msg(2))
    m = _make(**params, size=64, embed_output="image")
    _, msg, y, logits = _round_trip(m, size=96)
    assert y.shape == (3, 3, 96, 96) and _acc(logits, msg) == 1.0


def test_input_range_pm1_matches_01(tmp_path: Path) -> None:
    """Nets that take [-1,1] pixels (and assert it) give the same images and bits as the [0,1] nets."""
    ref = _make(**_pair(tmp_path, "a"))
    for embed_output in ("image", "residual"):
        res = embed_output == "residual"
        pm = _make(
            **_pair(tmp_path, f"b{res}", {"pm1_range": True, "residual": res}, {"pm1_range": True}),
            input_range="-1,1",
            embed_output=embed_output,
        )
        x, msg = _covers(), _msg()
        torch.testing.assert_close(pm.embed(x, msg), ref.embed(x, msg), atol=1e-5, rtol=0)
        y = quantize_8bit(ref.embed(x, msg))
        torch.testing.assert_close(pm.extract(y), ref.extract(y), atol=1e-4, rtol=1e-4)
        assert _acc(pm.extract(y), msg) == 1.0
    # the same nets without the conversion fail their own range check, and the error says which net
    wrong = _make(**_pair(tmp_path, "c", {"pm1_range": True}, {"pm1_range": True}))
    with pytest.raises(WmbenchError, match=r"(?s)the embedder .*expects pixels in"):
        wrong.embed(_covers(), _msg())
    with pytest.raises(WmbenchError, match=r"(?s)the extractor .*expects pixels in"):
        wrong.extract(_covers())
    assert _make(**_pair(tmp_path, "d", {"pm1_range": True}), input_range=[-1, 1]).input_range == "-1,1"


def test_message_format(tmp_path: Path) -> None:
    m = _make(**_pair(tmp_path, "a", {"pm1_msg": True}), message_format="pm1")
    _, msg, _, logits = _round_trip(m)
    assert _acc(logits, msg) == 1.0
    with pytest.raises(WmbenchError, match=r"(?s)the embedder .*expects ±1 messages"):
        _make(**_pair(tmp_path, "b", {"pm1_msg": True})).embed(_covers(), _msg())


@pytest.mark.parametrize("output", ["probs", "signed"])
def test_extractor_outputs(tmp_path: Path, output: str) -> None:
    ref = _make(**_pair(tmp_path, "a"))
    m = _make(**_pair(tmp_path, "b", ext={"output": output}), output=output)
    x, msg = _covers(), _msg()
    y = quantize_8bit(ref.embed(x, msg))
    logits, ref_logits = m.extract(y), ref.extract(y)
    assert _acc(logits, msg) == 1.0
    if output == "probs":  # logit(sigmoid(c)) == c
        torch.testing.assert_close(logits, ref_logits, atol=1e-3, rtol=1e-3)
    else:  # ±1-style values are used as logits
        torch.testing.assert_close(logits, torch.tanh(ref_logits))


def test_probs_clamped_and_checked(tmp_path: Path) -> None:
    m = _make(**_pair(tmp_path, "a", ext={"output": "probs"}), output="probs")
    x = _covers()
    saturated = quantize_8bit(m.embed(x, _msg()))
    m.extractor.patterns.mul_(1e4)  # type: ignore[union-attr]  # sigmoid saturates to exactly 0 and 1
    logits = m.extract(saturated)
    assert torch.isfinite(logits).all() and logits.abs().max() <= 14.0  # logit(1 - 1e-6) ≈ 13.8
    # an extractor that returns logits while the suite says probs: a clear error, not silent garbage
    wrong = _make(**_pair(tmp_path, "b"), output="probs")
    with pytest.raises(WmbenchError, match="output is 'probs'.*set output: logits"):
        wrong.extract(saturated)


def test_residual_mode_and_strength(tmp_path: Path) -> None:
    img = _make(**_pair(tmp_path, "a"))
    res = _make(**_pair(tmp_path, "b", {"residual": True}), embed_output="residual")
    x, msg = _covers(), _msg()
    torch.testing.assert_close(res.embed(x, msg), img.embed(x, msg), atol=1e-6, rtol=0)
    _, msg2, _, logits = _round_trip(res)
    assert _acc(logits, msg2) == 1.0
    double = _make(**_pair(tmp_path, "c", {"residual": True}), embed_output="residual", strength=2.0)
    torch.testing.assert_close(double.embed(x, msg) - x, 2 * (img.embed(x, msg) - x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("embed_output", ["residual", "image"])
def test_size_resizes_for_the_nets(tmp_path: Path, embed_output: str) -> None:
    """Nets that only take 32² run on 96² images: the residual is made at 32² and resized back."""
    res = embed_output == "residual"
    m = _make(
        **_pair(tmp_path, "a", {"fixed": 32, "residual": res}, {"fixed": 32}),
        embed_output=embed_output,
        size=32,
    )
    x, msg, y, logits = _round_trip(m, size=96)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert _acc(logits, msg) == 1.0
    # the cover keeps its full resolution: only the (upsampled, smooth) residual is added
    d = y - x
    assert d.abs().max() < 0.1
    with pytest.raises(
        WmbenchError,
        match=r"(?s)a net exported for a fixed image size needs params\.size.*expects its fixed size",
    ):
        _make(**_pair(tmp_path, "b", {"fixed": 32}, {"fixed": 32})).embed(x, msg)


def test_extract_is_differentiable(tmp_path: Path) -> None:
    m = _make(**_pair(tmp_path), size=32)
    y = _covers(2, 64).requires_grad_(True)
    m.extract(y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_weights_hash_and_fingerprint(tmp_path: Path) -> None:
    params = _pair(tmp_path, "a")
    a, b = _make(**params), TorchScript(**params)  # b: before setup
    assert len(a.weights_hash()) == 16 and a.weights_hash() == b.weights_hash()
    assert a.fingerprint() == b.fingerprint()
    # the same files elsewhere share the cache key; changed files do not
    moved = tmp_path / "moved"
    moved.mkdir()
    copy = {**params, "embedder": shutil.copy(params["embedder"], moved), "extractor": params["extractor"]}
    assert _make(**copy).fingerprint() == a.fingerprint()
    _save(Path(copy["embedder"]), Embedder(residual=True))
    assert _make(**copy).fingerprint() != a.fingerprint()
    assert _make(**params, strength=2.0).fingerprint() != a.fingerprint()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"embedder": "nope/emb.pt"}, r"params\.embedder: file not found: nope/emb\.pt"),
        ({"extractor": "/nonexistent/ext.pt2"}, r"params\.extractor: file not found: /nonexistent/ext\.pt2"),
        ({"embedder": None}, r"params\.embedder is required"),
        ({"nbits": None}, r"params\.nbits is required"),
        ({"nbits": 0}, r"params\.nbits: Input should be greater than or equal to 1"),
        ({"nbits": True}, r"params\.nbits: Input should be a valid integer"),
        ({"input_range": "0,255"}, r"params\.input_range must be one of '0,1' \| '-1,1', got '0,255'"),
        ({"output": "bits"}, r"params\.output: Input should be 'logits', 'probs' or 'signed'"),
        ({"embed_output": "delta"}, r"params\.embed_output: Input should be 'image' or 'residual'"),
        ({"message_format": "bits"}, r"params\.message_format must be one of '01' \| 'pm1'"),
        ({"message_format": 1}, r"quote it"),
        ({"size": 0}, r"params\.size: Input should be greater than or equal to 1"),
        ({"size": 32.5}, r"params\.size: Input should be a valid integer"),
        ({"strength": 0}, r"params\.strength: Input should be greater than 0"),
        ({"strength": "big"}, r"params\.strength: Input should be a valid number"),
        ({"no_such_param": 1}, r"params\.no_such_param: unknown key"),
    ],
)
def test_bad_params(tmp_path: Path, change: dict[str, Any], match: str) -> None:
    with pytest.raises(WmbenchError, match=match):
        TorchScript(**{**_pair(tmp_path), **change})


def test_bad_files(tmp_path: Path) -> None:
    params = _pair(tmp_path)
    pickled = tmp_path / "pickled.pt"
    torch.save(Embedder(), pickled)
    with pytest.raises(WmbenchError, match=r"params\.embedder: .*pickled\.pt is a torch\.save checkpoint"):
        _make(**{**params, "embedder": str(pickled)})
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not an archive")
    with pytest.raises(WmbenchError, match=r"params\.extractor: cannot load .*junk\.pt2 as a torch\.export"):
        _make(**{**params, "extractor": str(junk)})
    with pytest.raises(WmbenchError, match=r"expected 3×16 \(check params\.nbits\)"):
        _make(**{**params, "nbits": 16}).extract(_covers())
    with pytest.raises(WmbenchError, match="setup"):
        TorchScript(**params).extract(_covers())


def test_runner_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wmbench.runner import Runner, RunOptions
    from wmbench.suite import load_suite

    monkeypatch.setenv("WMBENCH_HOME", str(tmp_path / "home"))
    params = _pair(tmp_path, "r", {"residual": True})
    suite = {
        "name": "ts",
        "seed": 1,
        "images": {"source": "builtin", "count": 4, "size": 64},
        "methods": [{"name": "torchscript", "params": {**params, "embed_output": "residual"}}],
        "attacks": [{"name": "brightness", "strengths": [1.1]}],
        "metrics": ["bit_acc", "psnr"],
        "batch_size": 3,
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    res = Runner(load_suite(path), RunOptions(out=tmp_path / "run", progress=False)).run()
    assert not res.errors and not res.manifest["skipped_cells"]
    df = res.rows
    assert len(df) == 4 * 3  # clean + identity + brightness
    ident = df[(df.source == "watermarked") & (df.attack == "identity")]
    assert len(ident) == 4 and (ident.bit_acc == 1.0).all() and (ident.psnr > 30).all()
    assert (df.nbits == K).all()
    # a missing file is caught when the suite is loaded, naming the method entry, the param and the path
    suite["methods"][0]["params"]["extractor"] = str(tmp_path / "gone.pt")
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(
        WmbenchError, match=r"methods\[0\]\.params: .*params\.extractor: file not found: .*gone\.pt"
    ):
        load_suite(path)
