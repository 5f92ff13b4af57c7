"""The built-in latent-diffusion stack (attacks/latent_diffusion.py) and the regeneration attacks that load it.

Training, the folder layout, the cards and loading through diffusers' ``from_pretrained`` run on the tiny configs
(seconds); the behaviour of the attacks (changes the image, range, determinism, strength ordering) runs on the
shipped folders, skipped where they are not installed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor

from wmbench import rng
from wmbench.api import SkipCell, WmbenchError, quantize_8bit
from wmbench.data import load_image_set
from wmbench.registry import attacks
from wmbench.train import FOLDER_CARD, _config_hash, folder_files, load_train_config, resolve_config, train

diffusers = pytest.importorskip("diffusers")

import wmbench.attacks.latent_diffusion as ld  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED = {stem: ld.shipped_folder(stem) for stem in (ld.BUILTIN_VAE, ld.BUILTIN_LDM)}
needs_shipped = pytest.mark.skipif(
    not all((p / FOLDER_CARD).is_file() for p in SHIPPED.values()),
    reason="wmbench/weights/sd_vae_builtin/ or ldm_builtin/ not installed",
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _psnr(a: Tensor, b: Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a, b)))


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny VAE, then the tiny UNet on its latents (its config pointed at that VAE folder)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ldm")
    vae = train("sd_vae_tiny", root / "vae")
    cfg = yaml.safe_load(resolve_config("ldm_tiny").read_text())
    cfg["model"]["params"]["vae"] = str(vae)
    (root / "ldm_tiny.yaml").write_text(yaml.safe_dump(cfg))
    unet = train(root / "ldm_tiny.yaml", root / "unet")
    return {"vae": vae, "ldm": unet, "root": root}


# --- training and the folders -------------------------------------------------------------------------------


def test_training_writes_diffusers_folders_with_cards(tiny: dict[str, Path]) -> None:
    vae, ldm = tiny["vae"], tiny["ldm"]
    assert sorted(folder_files(vae)) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert sorted(folder_files(ldm)) == [
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]
    for folder in (vae, ldm):
        card = json.loads((folder / FOLDER_CARD).read_text())
        assert card["kind"] == "diffusers" and card["complete"] and card["file"] == f"{folder.name}/"
        assert card["files"] == folder_files(folder)
    vcard = json.loads((vae / FOLDER_CARD).read_text())
    assert vcard["eval"]["psnr"] > 5 and vcard["eval"]["scaling_factor"] > 0
    assert {"psnr_t0", "psnr_t60", "psnr_t240"} <= set(json.loads((ldm / FOLDER_CARD).read_text())["eval"])


def test_folders_load_offline_with_from_pretrained(tiny: dict[str, Path], monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vae = diffusers.AutoencoderKL.from_pretrained(str(tiny["vae"]))
    card = json.loads((tiny["vae"] / FOLDER_CARD).read_text())
    assert list(vae.config.block_out_channels) == card["architecture"]["block_out_channels"]
    assert vae.config.scaling_factor == card["eval"]["scaling_factor"]
    unet = diffusers.UNet2DModel.from_pretrained(str(tiny["ldm"]), subfolder="unet")
    assert list(unet.config.block_out_channels) == [16, 32]
    sched = diffusers.DDIMScheduler.from_pretrained(str(tiny["ldm"]), subfolder="scheduler")
    assert sched.config.num_train_timesteps == 1000 and sched.config.beta_schedule == "scaled_linear"
    assert sched.config.prediction_type == "epsilon"


def test_vae_training_resumes_exactly(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r"
    train("sd_vae_tiny", out, max_steps=3)
    folder = train("sd_vae_tiny", out, resume=True)
    a = (folder / "diffusion_pytorch_model.safetensors").read_bytes()
    assert a == (tiny["vae"] / "diffusion_pytorch_model.safetensors").read_bytes()


def test_the_trainer_rejects_unknown_diffusers_models(tmp_path: Path) -> None:
    cfg = yaml.safe_load(resolve_config("sd_vae_tiny").read_text())
    cfg["model"]["name"] = "autoencoder_kll"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(WmbenchError, match="autoencoder_kl"):
        load_train_config(tmp_path / "c.yaml")


# --- loading through the attacks ----------------------------------------------------------------------------


def _x(b: int = 2, size: int = 32) -> Tensor:
    low = torch.rand(b, 3, size // 8, size // 8, generator=_gen(1))
    return quantize_8bit(F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False))


def test_attacks_take_local_folders(tiny: dict[str, Path], monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    x = _x()
    vae = attacks().get("sd_vae")(model=str(tiny["vae"]))
    y = vae.apply(x, 1, gen=_gen())
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    reg = attacks().get("diffusion_regen")(model=str(tiny["ldm"]), vae=str(tiny["vae"]))
    assert reg.label() == f"diffusion_regen[model={tiny['ldm']},vae={tiny['vae']}]"
    # t = 0 is the VAE round trip; a positive t denoises from noise drawn from gen
    assert torch.allclose(reg.apply(x, 0, gen=_gen()), y, atol=1e-5)
    assert torch.equal(reg.apply(x, 120, gen=_gen(3)), reg.apply(x, 120, gen=_gen(3)))
    old = attacks().get("diffusion_regen")(pipeline=str(tiny["ldm"]), vae=str(tiny["vae"]))
    assert old.params == reg.params  # the older param name still works


def _broken_copy(src: Path, dst: Path, what: str) -> Path:
    shutil.copytree(src, dst)
    if what == "config":
        (dst / "config.json").write_text("{not json")
    elif what == "weights":
        w = dst / "diffusion_pytorch_model.safetensors"
        w.write_bytes(w.read_bytes()[:200])
    else:
        (dst / "diffusion_pytorch_model.safetensors").unlink()
    return dst


@pytest.mark.parametrize("what", ["config", "weights", "no-weights"])
def test_a_corrupt_folder_is_an_error_naming_it(tiny: dict[str, Path], tmp_path: Path, what: str) -> None:
    bad = _broken_copy(tiny["vae"], tmp_path / f"bad-{what}", what)
    with pytest.raises(WmbenchError, match=str(bad)):
        attacks().get("sd_vae")(model=str(bad)).apply(_x(), 1, gen=_gen())
    with pytest.raises(WmbenchError, match=str(bad)):
        attacks().get("diffusion_regen")(model=str(tiny["ldm"]), vae=str(bad)).apply(_x(), 60, gen=_gen())


def test_a_missing_folder_skips_naming_it(tiny: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    gone = tmp_path / "nowhere" / "vae"
    with pytest.raises(SkipCell, match=str(gone)):
        attacks().get("sd_vae")(model=str(gone)).apply(_x(), 1, gen=_gen())
    pkg = tmp_path / "pkg"
    monkeypatch.setattr(ld, "shipped_folder", lambda stem: pkg / stem)  # an install without the folders
    with pytest.raises(SkipCell, match=f"{pkg / ld.BUILTIN_VAE}.*wmbench train {ld.BUILTIN_VAE}"):
        attacks().get("sd_vae")(model="builtin").apply(_x(), 1, gen=_gen())
    shutil.copytree(tiny["vae"], pkg / ld.BUILTIN_VAE)  # the VAE is there, the UNet is not
    with pytest.raises(SkipCell, match=f"{pkg / ld.BUILTIN_LDM}.*wmbench train {ld.BUILTIN_LDM}"):
        attacks().get("diffusion_regen")(model="builtin").apply(_x(), 60, gen=_gen())


# --- the shipped folders ------------------------------------------------------------------------------------


FOLDER_CARDS = sorted(ld.shipped_folder(ld.BUILTIN_VAE).parent.glob(f"*/{FOLDER_CARD}"))


@needs_shipped
def test_there_are_shipped_folders() -> None:
    assert {p.parent.name for p in FOLDER_CARDS} >= {ld.BUILTIN_VAE, ld.BUILTIN_LDM}


@pytest.mark.parametrize("card_path", FOLDER_CARDS, ids=lambda p: p.parent.name)
def test_shipped_folder_matches_its_card_and_config(card_path: Path) -> None:
    folder, card = card_path.parent, json.loads(card_path.read_text())
    for rel, sha in card["files"].items():
        assert _sha(folder / rel) == sha, f"{folder.name}/{rel} changed since its card was written"
    assert set(card["files"]) == set(folder_files(folder)), (
        f"{folder.name}: files added or removed since the card"
    )
    parsed = load_train_config(card["config"])[1]
    if parsed.model.init_from is None:  # the hash embeds init_from as an absolute path (differs per checkout)
        assert card["config_hash"] == _config_hash(parsed), (
            f"{card['config']}'s settings changed since {folder.name}"
        )
    assert card["steps_planned"] == parsed.steps and card["data"]["split"] == "train"


@needs_shipped
def test_shipped_folders_load_offline_and_match_their_cards(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vcard = json.loads((SHIPPED[ld.BUILTIN_VAE] / FOLDER_CARD).read_text())
    vae = diffusers.AutoencoderKL.from_pretrained(str(SHIPPED[ld.BUILTIN_VAE]))
    for k, v in vcard["architecture"].items():
        got = vae.config[k]
        assert (list(got) if isinstance(got, tuple | list) else got) == v, k
    assert vae.config.scaling_factor == vcard["eval"]["scaling_factor"]
    ucard = json.loads((SHIPPED[ld.BUILTIN_LDM] / FOLDER_CARD).read_text())
    unet = diffusers.UNet2DModel.from_pretrained(str(SHIPPED[ld.BUILTIN_LDM]), subfolder="unet")
    assert list(unet.config.block_out_channels) == ucard["architecture"]["block_out_channels"]
    assert unet.config.in_channels == vae.config.latent_channels
    sched = diffusers.DDIMScheduler.from_pretrained(str(SHIPPED[ld.BUILTIN_LDM]), subfolder="scheduler")
    assert {k: sched.config[k] for k in ld.SCHEDULE} == ld.SCHEDULE


@pytest.fixture(scope="module")
def eval_images() -> Tensor:
    """4 eval-split tiles at 64².  # 4 3 64 64 in [0,1]"""
    return load_image_set("builtin", size=64, count=4, split="eval").images.float() / 255.0


@needs_shipped
@pytest.mark.parametrize(("name", "strengths"), [("sd_vae", (1, 2)), ("diffusion_regen", (60, 120, 240))])
def test_builtin_regeneration_contract(name: str, strengths: tuple[int, ...], eval_images: Tensor) -> None:
    x = eval_images
    atk = attacks().get(name)(model="builtin")
    assert atk.label() == f"{name}[model=builtin]"
    ids = [f"img{i}" for i in range(x.shape[0])]
    psnrs = []
    base = (
        x if name == "sd_vae" else atk.apply(x, 0, gen=rng.ImageGens.for_cell(0, "m", name, 0, image_ids=ids))
    )
    for s in strengths:
        gens = rng.ImageGens.for_cell(0, "m", name, s, image_ids=ids)
        y = atk.apply(x, s, gen=gens)
        assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
        assert 0 <= y.min() and y.max() <= 1
        assert _psnr(x, y) < 40  # the image changed
        again = atk.apply(x, s, gen=rng.ImageGens.for_cell(0, "m", name, s, image_ids=ids))
        assert torch.equal(y, again)  # deterministic under the seed
        one = atk.apply(x[1:2], s, gen=rng.ImageGens.for_cell(0, "m", name, s, image_ids=ids[1:2]))
        assert torch.allclose(one, y[1:2], atol=1e-4)  # per-image draws: the batch does not matter
        psnrs.append(_psnr(base, quantize_8bit(y)))
    # stronger = lower PSNR.  For diffusion_regen the reference is the t = 0 output (the VAE round trip): the
    # shipped VAE's own error (~12-13 dB) dominates the PSNR against the input and hides the ordering on 4 images
    assert all(a > b for a, b in zip(psnrs, psnrs[1:], strict=False)), psnrs
