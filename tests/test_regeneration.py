"""Regeneration attacks on tiny in-code networks (no hub): real CompressAI entropy coding, VAE round trips,
DDIM regeneration; offline behaviour: missing weights raise SkipCell at once and a run records the skip."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import wmtest_plugins
import yaml
from torch import Tensor

from wmbench.api import SkipCell, WmbenchError, quantize_8bit
from wmbench.registry import attacks
from wmbench.runner import Runner, RunOptions
from wmbench.store import CLEAN
from wmbench.suite import load_suite

pytest.importorskip("compressai")
pytest.importorskip("diffusers")


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("WMBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty torch hub cache


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int = 2, size: int = 64, seed: int = 1) -> Tensor:
    """Smooth 8-bit images.  # b 3 s s"""
    low = torch.rand(b, 3, size // 8, size // 8, generator=_gen(seed))
    return quantize_8bit(F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False))


def _psnr(a: Tensor, b: Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a, b)))


def _check(x: Tensor, y: Tensor) -> None:
    assert y.shape == x.shape and y.dtype == x.dtype and not y.requires_grad
    assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
    assert _psnr(x, y) < 60  # the image changed


def _tiny_codec(kind: str = "factorized") -> torch.nn.Module:
    from compressai.models import FactorizedPrior, MeanScaleHyperprior

    torch.manual_seed(0)
    net = FactorizedPrior(8, 8) if kind == "factorized" else MeanScaleHyperprior(8, 8)
    return net.eval()


def _tiny_vae() -> torch.nn.Module:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
    ).eval()


def _tiny_unet() -> torch.nn.Module:
    from diffusers import UNet2DModel

    torch.manual_seed(1)
    return UNet2DModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()


# --- CompressAI -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["factorized", "hyperprior"])
def test_compressai_real_entropy_coding(kind):
    x = _images(size=72)  # not a multiple of 16/64: padded, then cropped back
    atk = attacks().get("compressai")().use_modules(net=_tiny_codec(kind))
    y = atk.apply(x, 3, gen=_gen())
    _check(x, y)
    bpp = atk.last_stats["bpp"]
    assert bpp.shape == (2,) and (bpp > 0).all()
    assert torch.equal(y, atk.apply(x, 3, gen=_gen(9)))  # deterministic, no randomness
    assert atk.label() == "compressai[modules=injected]"


def test_compressai_uses_a_checkpoint_from_the_hub_cache(tmp_path):
    from wmbench.attacks.regeneration import compressai_checkpoint

    path, url = compressai_checkpoint("bmshj2018-factorized", "mse", 2)
    assert path.is_relative_to(tmp_path / "torch") and path.name == Path(url).name
    path.parent.mkdir(parents=True)
    torch.save(_tiny_codec().state_dict(), path)  # a stand-in file at the zoo's cache path
    atk = attacks().get("compressai")()
    _check(_images(), atk.apply(_images(), 2, gen=_gen()))
    with pytest.raises(SkipCell, match="quality 5"):  # only quality 2 is in the cache
        atk.apply(_images(), 5, gen=_gen())


def test_compressai_missing_weights_skip_at_once():
    atk = attacks().get("compressai")(model="mbt2018-mean")
    t0 = time.perf_counter()
    with pytest.raises(SkipCell) as e:
        atk.apply(_images(), 1, gen=_gen())
    assert time.perf_counter() - t0 < 10
    msg = str(e.value)
    assert "mbt2018-mean" in msg and "mbt2018-mean-1-" in msg and "pretrained=True" in msg


def test_compressai_params_and_strengths():
    with pytest.raises(WmbenchError, match="cheng2020-anchor"):
        attacks().get("compressai")(model="cheng2020")
    cheng = attacks().get("compressai")(model="cheng2020-anchor")
    # the class range (8 -> 1) is what every command shows; the model's own top quality maps relative strengths
    assert (
        cheng.strength_range == (8.0, 1.0) and "strength_range" not in vars(cheng) and cheng.max_quality == 6
    )
    assert cheng.from_relative(0.0) == 6 and cheng.from_relative(1.0) == 1
    with pytest.raises(WmbenchError, match=r"\[1, 6\]"):
        cheng.apply(_images(), 7, gen=_gen())


# --- VAE and diffusion ------------------------------------------------------------------------------------


def test_sd_vae_round_trips():
    x = _images()
    atk = attacks().get("sd_vae")().use_modules(vae=_tiny_vae())
    y1, y2 = atk.apply(x, 1, gen=_gen()), atk.apply(x, 2, gen=_gen())
    _check(x, y1)
    _check(x, y2)
    assert not torch.equal(y1, y2)
    sampled = attacks().get("sd_vae")(sample=True).use_modules(vae=_tiny_vae())
    assert torch.equal(sampled.apply(x, 1, gen=_gen(3)), sampled.apply(x, 1, gen=_gen(3)))
    assert not torch.equal(sampled.apply(x, 1, gen=_gen(3)), y1)
    assert sampled.label() == "sd_vae[sample=True,modules=injected]"


def test_sd_vae_forward_st_differentiates_through_the_frozen_vae():
    """What an optimiser (AdvMark stage 2) aims at: apply's values, a real gradient (not the identity of a
    straight-through copy), and no gradient left on frozen weights."""
    x = _images()
    atk = attacks().get("sd_vae")().use_modules(vae=_tiny_vae().requires_grad_(False))
    xr = x.clone().requires_grad_(True)
    y = atk.forward_st(xr, 2, gen=_gen())
    assert torch.allclose(y.detach(), atk.apply(x, 2, gen=_gen()), atol=1e-6)
    (y * torch.linspace(0, 1, y.numel()).view_as(y)).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    assert not torch.allclose(xr.grad, torch.linspace(0, 1, y.numel()).view_as(y))  # not straight-through
    assert all(q.grad is None for q in atk._vae().parameters())


def test_diffusion_regen_noises_and_denoises():
    from diffusers import DDIMScheduler

    x, vae = _images(), _tiny_vae()
    mods = {"vae": vae, "unet": _tiny_unet(), "scheduler": DDIMScheduler()}
    atk = attacks().get("diffusion_regen")(steps=20).use_modules(**mods)
    y0 = atk.apply(x, 0, gen=_gen())  # t = 0: a plain VAE round trip
    ref = attacks().get("sd_vae")().use_modules(vae=vae).apply(x, 1, gen=_gen())
    assert (y0 - ref).abs().max() < 1e-5
    y = atk.apply(x, 120, gen=_gen(1))
    _check(x, y)
    assert _psnr(y0, y) < 50
    assert torch.equal(y, atk.apply(x, 120, gen=_gen(1)))  # the noise comes from gen only
    rinse = attacks().get("diffusion_regen")(steps=20, rinse=2).use_modules(**mods)
    assert not torch.equal(rinse.apply(x, 120, gen=_gen(1)), y)


@pytest.mark.parametrize(
    ("name", "model"), [("sd_vae", "stabilityai/sd-vae-ft-mse"), ("diffusion_regen", None)]
)
def test_hub_models_missing_offline_skip_at_once(name, model):
    atk = attacks().get(name)()
    model = model or atk.params["model"]
    t0 = time.perf_counter()
    with pytest.raises(SkipCell) as e:
        atk.apply(_images(), atk.default_strengths[0], gen=_gen())
    assert time.perf_counter() - t0 < 15  # no network wait
    assert model in str(e.value) and f"hf download {model}" in str(e.value)


def test_a_missing_weights_cell_is_skipped_and_recorded(tmp_path):
    wmtest_plugins.register()
    data = {
        "name": "regen-offline",
        "seed": 1,
        "images": {"source": "builtin", "count": 2, "size": 64},
        "methods": [{"name": "test_ss"}],
        "attacks": [
            {"name": "compressai", "params": {"model": "bmshj2018-hyperprior"}, "strengths": [3]},
            {"name": "sd_vae"},
            {"name": "jpeg", "strengths": [50]},
        ],
        "metrics": ["bit_acc", "psnr"],
        "batch_size": 2,
    }
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump(data))
    res = Runner(load_suite(p), RunOptions(out=tmp_path / "run", progress=False)).run()
    assert res.errors == []
    skipped = {s["attack"]: s["reason"] for s in res.manifest["skipped_cells"]}
    assert set(skipped) == {"compressai[model=bmshj2018-hyperprior]", "sd_vae"}
    assert "bmshj2018-hyperprior" in skipped["compressai[model=bmshj2018-hyperprior]"]
    assert "stabilityai/sd-vae-ft-mse" in skipped["sd_vae"]
    assert set(res.rows["attack"]) == {CLEAN, "identity", "jpeg"}  # the other cells ran
