"""The ``specguard`` method: its transforms, its mask, random-init runs, training on a tiny config, reloading.

The contract tests (tests/test_methods.py) cover it through ``SpecGuard.tiny_params``.  Everything here runs on
the CPU in seconds; the tiny config trains an 8-channel net for a few steps on 32² crops.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from wmbench.methods.specguard import (
    SpecGuard,
    Spectral,
    band_mask,
    dct2,
    haar_dwt,
    haar_idwt,
    idct2,
)

from wmbench.api import SkipCell, WmbenchError, quantize_8bit
from wmbench.train import evaluate, load_train_config, resolve_config, train

TINY = resolve_config("specguard_tiny")


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(**extra: Any) -> SpecGuard:
    m = SpecGuard(**{**SpecGuard.tiny_params(), **extra})
    m.setup(torch.device("cpu"))
    return m


def _msg(b: int, k: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 2, (b, k), generator=torch.Generator().manual_seed(seed)).float()


def _mid(b: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Images away from 0 and 1 (no clamping of the watermark).  -> b 3 h w"""
    return 0.25 + 0.5 * torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ transforms
@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (2, 6)])
def test_transforms_invert(shape: tuple[int, int]) -> None:
    x = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(0))
    bands = haar_dwt(x)
    assert (haar_idwt(*bands) - x).abs().max() < 1e-5
    z = dct2(bands[3])
    assert (idct2(z) - bands[3]).abs().max() < 1e-5
    # orthonormal: energy is kept (Parseval), so a coefficient change costs the same MSE in pixels
    assert torch.allclose(sum((b**2).sum() for b in bands), (x**2).sum(), rtol=1e-5)
    assert torch.allclose((z**2).sum(), (bands[3] ** 2).sum(), rtol=1e-5)


def test_transforms_match_pywt_and_scipy() -> None:
    import pywt
    import scipy.fft

    x = torch.rand(1, 3, 32, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    _, (_, _, cd) = pywt.dwt2(x.numpy(), "haar")
    hh = haar_dwt(x)[3]
    np.testing.assert_allclose(hh.numpy(), cd, atol=1e-12)
    np.testing.assert_allclose(
        dct2(hh).numpy(), scipy.fft.dctn(hh.numpy(), axes=(-2, -1), norm="ortho"), atol=1e-12
    )


def test_mask_units() -> None:
    m = band_mask(128, 128, 50 / 128)  # the public run: radius 50 on the 128² band of a 256² image
    u, v = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    paper = ((u - 64) ** 2 + (v - 64) ** 2).float().sqrt() <= 50
    assert torch.equal(m.bool(), paper)
    # the same normalised region at another size
    assert abs(float(band_mask(32, 32, 50 / 128).mean()) - float(m.mean())) < 0.02


@pytest.mark.parametrize("band", ["HH", "LH"])
@pytest.mark.parametrize("shape", [(64, 64), (96, 64)])
def test_embedding_changes_only_masked_coefficients(band: str, shape: tuple[int, int]) -> None:
    m = _tiny(band=band, radius=0.3)
    x = _mid(2, *shape)
    y = m.embed(x, _msg(2, 8))
    assert (y - x).abs().max() > 1e-4, "the watermark is there"
    bx, by = haar_dwt(x.double()), haar_dwt(y.double())
    i = ("LH", "HL", "HH").index(band) + 1
    for j in range(4):
        if j != i:
            assert (bx[j] - by[j]).abs().max() < 1e-6, f"band {j} changed"
    dz = dct2(by[i]) - dct2(bx[i])
    mask = band_mask(shape[0] // 2, shape[1] // 2, 0.3).bool()
    assert dz[..., ~mask].abs().max() < 1e-6
    assert dz[..., mask].abs().max() > 1e-3
    # and each change is bounded by the strength (8-bit levels)
    assert dz.abs().max() <= m.strength / 255 + 1e-6


def test_odd_sizes_and_strength_scales_the_watermark() -> None:
    m = _tiny()
    x = _mid(2, 67, 65)
    y = m.embed(x, _msg(2, 8))
    assert y.shape == x.shape and m.extract(y).shape == (2, 8)
    m2 = _tiny(strength=13.0)  # twice the trained (default 6.5) strength
    x0 = _mid(1, 64, 64)
    r1, r2 = m.embed(x0, _msg(1, 8)) - x0, m2.embed(x0, _msg(1, 8)) - x0
    torch.testing.assert_close(r2, 2 * r1, atol=1e-5, rtol=1e-4)
    assert m2.fingerprint() != m.fingerprint()


def test_random_init_shapes_range_and_gradient() -> None:
    m = _tiny()
    for h, w in [(64, 64), (128, 96), (256, 256)]:
        x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h))
        y = m.embed(x, _msg(2, 8))
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
        logits = m.extract(quantize_8bit(y))
        assert logits.shape == (2, 8) and torch.isfinite(logits).all()
    # differentiable extract: the gradient lies in the HH band (LL, LH, HL parts are zero)
    y = _mid(1, 64, 64).requires_grad_(True)
    m.extract(y).sum().backward()
    assert y.grad is not None and y.grad.abs().max() > 0
    g = haar_dwt(y.grad)
    assert all(g[j].abs().max() < 1e-6 for j in range(3)) and g[3].abs().max() > 0


def test_spectral_pool_inverts_spread() -> None:
    sp = Spectral(64, 64, "HH", 0.75, 8, torch.device("cpu"))
    cells = torch.randn(2, 3, 8, 8)
    pooled = sp.pool(sp.spread(cells))
    inside = sp.count > 0
    torch.testing.assert_close(pooled[..., inside], cells[..., inside])


def test_params_validation() -> None:
    for bad in ({"radius": 50}, {"band": "LL"}, {"strength": 0}, {"nbits": 0}, {"no_such": 1}):
        with pytest.raises(WmbenchError, match="specguard"):
            SpecGuard(**{**SpecGuard.tiny_params(), **bad})
    with pytest.raises(SkipCell, match="wmbench train specguard"):
        SpecGuard(weights="no_such_weights").setup(torch.device("cpu"))
    with pytest.raises(WmbenchError, match="not found"):
        SpecGuard(checkpoint="/no/such/file.safetensors")


# ------------------------------------------------------------------------------------------------ training
def _config(tmp_path: Path, **changes: Any) -> Path:
    data = yaml.safe_load(TINY.read_text())
    data.update(changes)
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return train("specguard_tiny", tmp_path_factory.mktemp("sg") / "out")


def test_training_lowers_the_loss(tmp_path: Path) -> None:
    cfg = _config(tmp_path, steps=40, log_every=10, checkpoint_every=40, eval={"size": 64, "count": 4})
    train(cfg, tmp_path / "out")
    rows = [json.loads(ln) for ln in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert rows[-1]["message_loss"] < 0.9 * rows[0]["message_loss"], rows
    assert rows[-1]["loss"] < rows[0]["loss"], rows


def test_reloaded_checkpoint_gives_identical_outputs(tiny_run: Path) -> None:
    card = json.loads((tiny_run.parent / "specguard_tiny.json").read_text())
    assert card["method"] == "specguard" and card["nbits"] == 8 and card["complete"]
    from safetensors import safe_open

    with safe_open(str(tiny_run), framework="pt") as f:
        assert (f.metadata() or {})["wmbench_method"] == "specguard"
    m = SpecGuard(checkpoint=str(tiny_run))  # the architecture comes from the file's metadata
    m.setup(torch.device("cpu"))
    assert m.nbits == 8 and m.arch["width"] == 8
    ref = SpecGuard(init="random", **m.arch)
    ref.setup(torch.device("cpu"))
    ref.begin_training(lr=1e-3, gen=torch.Generator())
    state = torch.load(tiny_run.parent / "checkpoint.pt", weights_only=True)
    ref.load_training_state(state["model"])
    x = torch.rand(3, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    msg = _msg(3, 8)
    y, y_ref = m.embed(x, msg), ref.embed(x, msg)
    assert torch.equal(y, y_ref)
    assert torch.equal(m.extract(quantize_8bit(y)), ref.extract(quantize_8bit(y)))
    _, cfg = load_train_config("specguard_tiny")
    from wmbench.data import load_image_set

    imgs = load_image_set("builtin", size=cfg.eval.size, count=cfg.eval.count, split="eval").images
    ev = evaluate(m, imgs, cfg.eval.batch_size)
    assert ev["bit_acc"] == card["eval"]["bit_acc"] and ev["psnr"] == card["eval"]["psnr"]
    # explicit params must agree with the checkpoint's, except the embedding strength
    with pytest.raises(WmbenchError, match="disagrees"):
        SpecGuard(checkpoint=str(tiny_run), nbits=64)
    assert SpecGuard(checkpoint=str(tiny_run), strength=3.0).strength == 3.0


def test_128_bits_round_trip_on_a_tiny_random_net() -> None:
    """The 128-bit operating point's shapes: a random-init net embeds and reads 128 logits per image."""
    m = SpecGuard(**{**SpecGuard.tiny_params(), "nbits": 128})
    m.setup(torch.device("cpu"))
    x = torch.rand(2, 3, 64, 64)
    msg = torch.randint(0, 2, (2, 128)).float()
    y = m.embed(x, msg)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert m.extract(y).shape == (2, 128)


def test_nbits_selects_the_shipped_checkpoint_of_that_payload() -> None:
    """params: {nbits: 128} loads specguard128.safetensors; a payload with no shipped file says which stem."""
    m = SpecGuard(nbits=128)
    assert m.weights_name == "specguard128" and "weights" not in m.params
    assert SpecGuard(nbits=256).weights_name == "specguard256"
    with pytest.raises(SkipCell, match="specguard512"):
        SpecGuard(nbits=512).setup(torch.device("cpu"))
    with pytest.raises(WmbenchError, match="disagrees"):  # an explicit stem wins, and must match the payload
        SpecGuard(nbits=128, weights="specguard")


@pytest.mark.parametrize(
    ("config", "nbits"),
    [
        ("specguard", 64),
        ("specguard128", 128),
        ("specguard256", 256),
        ("specguard_robust", 64),
        ("specguard_robust40", 64),
    ],
)
def test_packaged_config_validates(config: str, nbits: int) -> None:
    _, cfg = load_train_config(config)
    assert cfg.model.name == "specguard" and cfg.model.params["nbits"] == nbits


WEIGHTS = Path(__file__).parents[1] / "wmbench" / "weights"


@pytest.mark.parametrize(
    ("params", "stem", "nbits", "min_acc", "min_psnr"),
    [
        ({}, "specguard", 64, 0.97, 40.0),
        ({"nbits": 128}, "specguard128", 128, 0.98, 42.0),
        ({"nbits": 256}, "specguard256", 256, 0.97, 40.0),
        ({"weights": "specguard_robust40"}, "specguard_robust40", 64, 0.97, 40.0),
    ],
    ids=["64", "128", "256", "robust40"],
)
def test_shipped_weights_decode_at_256(
    params: dict[str, Any], stem: str, nbits: int, min_acc: float, min_psnr: float
) -> None:
    """Each shipped checkpoint loads from its params (no params: 64 bits; nbits: 128 selects specguard128) and
    reads its bits back at 256² (clean, 8-bit) at its operating point's PSNR."""
    from wmbench.data import load_image_set

    if not (WEIGHTS / f"{stem}.safetensors").is_file():
        pytest.skip(f"no shipped {stem} weights")
    m = SpecGuard(**params)
    m.setup(torch.device("cpu"))
    assert m.nbits == nbits and m.weights_name == stem
    imgs = load_image_set("builtin", size=256, count=6, split="eval").images
    ev = evaluate(m, imgs, 6)
    assert ev["bit_acc"] >= min_acc and ev["psnr"] >= min_psnr, ev


def test_a_fine_tune_trains_at_the_strength_it_is_given(tiny_run: Path, tmp_path: Path) -> None:
    """init_from + an explicit strength: the training steps embed at that strength (not the start checkpoint's),
    and the checkpoint written records it (configs/specguard_robust.yaml relies on this)."""
    data = yaml.safe_load(TINY.read_text())
    start = SpecGuard(checkpoint=str(tiny_run)).arch["strength"]
    data["model"]["params"]["strength"] = 2 * start
    data["model"]["init_from"] = str(tiny_run)
    data.update(steps=4, checkpoint_every=4)
    p = tmp_path / "ft.yaml"
    p.write_text(yaml.safe_dump(data))
    out = train(p, tmp_path / "ft")
    m = SpecGuard(checkpoint=str(out))
    assert m.arch["strength"] == m.strength == 2 * start
    rows = [json.loads(ln) for ln in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    base = [json.loads(ln) for ln in (tiny_run.parent / "log.jsonl").read_text().splitlines()]
    first = next(r for r in rows if r["kind"] == "train")
    last_base = [r for r in base if r["kind"] == "train"][-1]
    assert first["psnr"] < last_base["psnr"] - 3  # twice the strength: ~6 dB lower, not the start's PSNR


def test_robust_operating_point_survives_jpeg_90_where_the_mild_one_does_not() -> None:
    """The shipped >= 40 dB robust checkpoint keeps JPEG 90 (docs/specguard.md: 0.83 on 25 tiles) where the
    mild-noise checkpoint at the same PSNR is at chance (0.51)."""
    from wmbench.data import load_image_set
    from wmbench.registry import attacks

    if not (WEIGHTS / "specguard_robust40.safetensors").is_file():
        pytest.skip("no shipped specguard_robust40 weights")
    x = load_image_set("builtin", size=256, count=6, split="eval").images.float() / 255
    msg = _msg(6, 64)
    jpeg = attacks().get("jpeg")()
    accs = {}
    for stem in ("specguard", "specguard_robust40"):
        m = SpecGuard(weights=stem)
        m.setup(torch.device("cpu"))
        y = jpeg.apply(quantize_8bit(m.embed(x, msg)), 90, gen=torch.Generator())
        accs[stem] = float(((m.extract(quantize_8bit(y)) > 0).float() == msg).float().mean())
    assert accs["specguard_robust40"] >= 0.75 and accs["specguard"] <= 0.62, accs
