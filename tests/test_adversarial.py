"""Adversarial attacks against a known differentiable decoder (the test spread-spectrum method): ε = 0 is the
identity, removal lowers bit accuracy inside the ε-ball, forgery makes clean images decode as the watermark,
non-differentiable methods are skipped (or attacked black-box when asked), and a run records it all."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import wmtest_plugins
import yaml
from torch import Tensor
from wmtest_plugins import SpreadSpectrum

from wmbench.api import SkipCell, WmbenchError, quantize_8bit
from wmbench.registry import attacks, methods
from wmbench.runner import Runner, RunOptions
from wmbench.suite import load_suite


class _OpaqueSS(SpreadSpectrum):
    """The same watermark, but declaring its extract non-differentiable (like a numpy/ONNX decoder)."""

    name = "test_ss_opaque"
    differentiable_extract = False


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("WMBENCH_HOME", str(tmp_path / "home"))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int = 4, size: int = 64, seed: int = 1) -> Tensor:
    """Smooth 8-bit images.  # b 3 s s"""
    low = torch.rand(b, 3, size // 8, size // 8, generator=_gen(seed))
    return quantize_8bit(F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False))


def _setup(cls: type[SpreadSpectrum] = SpreadSpectrum) -> tuple[SpreadSpectrum, Tensor, Tensor, Tensor]:
    """method, covers, messages, 8-bit watermarked images (b 3 64 64)."""
    m = cls(nbits=16, amp=6.0)
    x = _images()
    msg = torch.randint(0, 2, (x.shape[0], 16), generator=_gen(2)).float()
    return m, x, msg, quantize_8bit(m.embed(x, msg))


def _acc(m: SpreadSpectrum, y: Tensor, msg: Tensor) -> float:
    return float(((m.extract(quantize_8bit(y)) > 0).float() == msg).float().mean())


def test_zero_epsilon_is_the_identity():
    m, x, _, wm = _setup()
    assert torch.equal(attacks().get("pgd_remove")().apply(wm, 0, gen=_gen(), method=m, cover=x), wm)
    assert torch.equal(attacks().get("pgd_forge")().apply(wm, 0, gen=_gen(), method=m, cover=x), x)
    assert torch.equal(attacks().get("vae_embedding")().apply(wm, 0, gen=_gen()), wm)


@pytest.mark.parametrize(("norm", "target", "below"), [("linf", "random", 0.75), ("l2", "flip", 0.2)])
def test_pgd_remove_lowers_bit_accuracy_inside_the_ball(norm, target, below):
    m, _, msg, wm = _setup()
    assert _acc(m, wm, msg) >= 0.95
    atk = attacks().get("pgd_remove")(norm=norm, target=target, steps=30)
    with torch.enable_grad():
        y = atk.apply(wm, 8, gen=_gen(), method=m)
    assert y.shape == wm.shape and not y.requires_grad and y.min() >= 0 and y.max() <= 1
    assert _acc(m, y, msg) < below
    d = (y - wm).flatten(1)
    if norm == "linf":
        assert d.abs().max() <= 8 / 255 + 1e-6
    else:
        assert (d.pow(2).mean(1).sqrt() <= 8 / 255 + 1e-6).all()
    assert torch.equal(y, atk.apply(wm, 8, gen=_gen(), method=m))


def test_pgd_remove_with_eot_and_random_start():
    m, _, msg, wm = _setup()
    atk = attacks().get("pgd_remove")(
        eot=2, eot_attacks=["gaussian_noise", "jpeg"], random_start=True, steps=15
    )
    y = atk.apply(wm, 8, gen=_gen(4), method=m)
    assert _acc(m, y, msg) < 0.8
    assert torch.equal(y, atk.apply(wm, 8, gen=_gen(4), method=m))
    assert (
        atk.label() == "pgd_remove[steps=15,eot=2,eot_attacks=['gaussian_noise', 'jpeg'],random_start=True]"
    )
    assert atk.description == type(atk).description  # the EOT settings are in the label, not the class text


def test_pgd_forge_copies_the_watermark_onto_a_clean_image():
    m, _, msg, wm = _setup()
    clean = _images(seed=11)  # other images, never watermarked
    assert _acc(m, clean, msg) < 0.8
    y = attacks().get("pgd_forge")(steps=30).apply(wm, 8, gen=_gen(), method=m, cover=clean)
    assert _acc(m, y, msg) >= 0.95
    assert (y - clean).abs().max() <= 8 / 255 + 1e-6
    with pytest.raises(WmbenchError, match="cover"):
        attacks().get("pgd_forge")().apply(wm, 4, gen=_gen(), method=m)


def _cell_gens(b: int, seed: int = 0):
    from wmbench import rng

    return rng.ImageGens.for_cell(seed, "test_ss", "pgd", 8.0, image_ids=[str(i) for i in range(b)])


def _left_early(atk, m, start: Tensor, cover: Tensor | None, eps: float) -> Tensor:
    """Which images ``pgd`` let go early (recorded from its ``reached`` calls).  -> b bool"""
    import wmbench.attacks.adversarial as adv

    left = torch.zeros(start.shape[0], dtype=torch.bool)
    real = adv.pgd

    def spy(*a, **kw):
        reached = kw["reached"]

        def recording(y8: Tensor, idx: Tensor) -> Tensor:
            done = reached(y8, idx)
            left[idx[done]] = True
            return done

        return real(*a, **{**kw, "reached": recording})

    adv.pgd = spy
    try:
        atk.apply(start, eps, gen=_cell_gens(start.shape[0]), method=m, cover=cover)
    finally:
        adv.pgd = real
    return left


@pytest.mark.parametrize(("name", "eps"), [("pgd_remove", 6.0), ("pgd_forge", 2.5)])  # some images reach it
def test_early_stop_returns_images_that_reached_the_goal_and_runs_the_rest_as_before(name, eps):
    """An image leaves once its 8-bit iterate decodes as the target; those that never do follow exactly the
    trajectory they follow without early stop (their own generators, the same shared EOT draws)."""
    m, x, msg, wm = _setup()
    clean = _images(seed=11)
    start, cover = (wm, None) if name == "pgd_remove" else (wm, clean)
    kw = {"steps": 40, "eot": 1, "eot_attacks": ["gaussian_noise"]}
    full = attacks().get(name)(**kw).apply(start, eps, gen=_cell_gens(4), method=m, cover=cover)
    es = attacks().get(name)(early_stop=True, **kw)
    assert es.label().endswith("early_stop=True]")
    fast = es.apply(start, eps, gen=_cell_gens(4), method=m, cover=cover)
    origin = wm if name == "pgd_remove" else clean
    assert (fast - origin).abs().max() <= eps / 255 + 1e-6 and fast.min() >= 0 and fast.max() <= 1
    if name == "pgd_remove":
        from wmbench import rng

        target = rng.randint(_cell_gens(4), 0, 2, 4, 16).float()  # the attack's first draw: its random target
        assert _acc(m, fast, msg) <= _acc(m, full, msg) + 0.1  # removal no weaker
    else:
        target = (m.extract(wm) > 0).float()  # forgery copies what the watermarked image reads
        assert _acc(m, fast, msg) >= _acc(m, full, msg) - 0.1  # forgery no weaker
    read = (m.extract(quantize_8bit(fast)) > 0).float()
    same = (read == target).all(1)
    left = _left_early(es, m, start, cover, eps)  # which images the attack itself let go
    assert left.any() and not left.all(), "early stop not exercised on this batch"
    assert same[left].all()  # every image that left decodes as the target after 8-bit rounding
    assert torch.equal(fast[~left], full[~left])  # the others ran every step, exactly as without early stop
    # ... and alone it is the same image as in the batch
    i = int(left.nonzero()[0])
    gens = _cell_gens(4).subset([i])
    alone = es.apply(
        start[i : i + 1], eps, gen=gens, method=m, cover=None if cover is None else cover[i : i + 1]
    )
    assert torch.allclose(alone, fast[i : i + 1], atol=1e-6)


def test_non_differentiable_method_is_skipped_with_its_name():
    m, x, _, wm = _setup(_OpaqueSS)
    for name in ("pgd_remove", "pgd_forge"):
        with pytest.raises(SkipCell, match="test_ss_opaque.*no differentiable extract"):
            attacks().get(name)().apply(wm, 4, gen=_gen(), method=m, cover=x)


def test_params_are_validated_and_shown():
    get = attacks().get
    # one unit per class whatever the params: list, validate and the report read the same metadata
    for name in ("pgd_remove", "pgd_forge", "vae_embedding", "surrogate_transfer"):
        cls = get(name)
        assert cls().unit == cls(norm="l2").unit == cls.unit and cls.unit.startswith("epsilon (1/255")
        assert cls(norm="l2").description == cls.description
    assert get("pgd_remove")(norm="l2").label() == "pgd_remove[norm=l2]"
    for bad, match in [
        ({"norm": "l1"}, "norm"),
        ({"steps": -1}, "steps"),
        ({"step_size": 0}, "step_size"),
        ({"target": "copy"}, "target"),
        ({"eot_attacks": ["pgd_forge"]}, "eot_attacks"),
        ({"eot_attacks": ["jpge"]}, "jpeg"),
        ({"no_such_param": 1}, "no_such_param"),
    ]:
        with pytest.raises(WmbenchError, match=match):
            get("pgd_remove")(**bad)
    with pytest.raises(WmbenchError, match="training"):
        get("pgd_remove")().forward_st(_images(), 4, gen=_gen())


def test_vae_embedding_pushes_the_latent_away():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
    ).eval()
    x = _images(b=2)
    atk = attacks().get("vae_embedding")(steps=10).use_modules(encoder=vae)
    y = atk.apply(x, 8, gen=_gen())
    assert (y - x).abs().max() <= 8 / 255 + 1e-6 and not y.requires_grad

    def dist(a: Tensor) -> float:
        with torch.no_grad():
            z = vae.encode(x * 2 - 1).latent_dist.mean
            return float((vae.encode(a * 2 - 1).latent_dist.mean - z).pow(2).mean())

    noise = (x + 8 / 255 * torch.randn(x.shape, generator=_gen(5)).sign()).clamp(0, 1)
    assert dist(y) > 2 * dist(noise)  # far more than random noise of the same L-inf size


def test_a_run_records_removal_and_skips_opaque_methods(tmp_path):
    wmtest_plugins.register()
    if "test_ss_opaque" not in methods():
        methods().register("test_ss_opaque", _OpaqueSS)
    data = {
        "name": "adv",
        "seed": 1,
        "images": {"source": "builtin", "count": 3, "size": 64},
        "methods": [{"name": "test_ss"}, {"name": "test_ss_opaque"}],
        "attacks": [{"name": "pgd_remove", "strengths": [8], "params": {"steps": 20}}],
        "metrics": ["bit_acc", "psnr"],
        "batch_size": 3,
    }
    p = tmp_path / "suite.yaml"
    p.write_text(yaml.safe_dump(data))
    res = Runner(load_suite(p), RunOptions(out=tmp_path / "run", progress=False)).run()
    assert res.errors == []
    df = res.rows
    ss = df[df.method == "test_ss"].groupby("attack")
    assert ss.bit_acc.mean()["identity"] >= 0.9 and ss.bit_acc.mean()["pgd_remove[steps=20]"] < 0.8
    assert (
        (ss.psnr_attacked.min()["pgd_remove[steps=20]"]) >= 20 * torch.log10(torch.tensor(255 / 8.5)).item()
    )
    (skip,) = res.manifest["skipped_cells"]
    assert skip["method"] == "test_ss_opaque" and "test_ss_opaque" in skip["reason"]
