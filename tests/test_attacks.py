"""Attack contract tests, parametrised over the live registry (a newly registered attack is covered at once),
then behaviour tests of the built-ins: real codecs, identities at zero strength, cover mixing, sequences."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from PIL import Image
from torch import Tensor

from wmbench.api import Attack, Method, SkipCell, WmbenchError, quantize_8bit
from wmbench.registry import attacks

NAMES = attacks().names()
SEQ_STEPS = [{"name": "gaussian_blur", "strength": 1.0}, {"name": "jpeg"}]


class _TinyMethod(Method):
    """A differentiable stand-in for attacks that need a method (adversarial ones): logits = channel means."""

    name = "tiny"
    differentiable_extract = True
    nbits = 3

    def embed(self, x: Tensor, msg: Tensor) -> Tensor:
        return x

    def extract(self, y: Tensor) -> Tensor:
        return y.mean(dim=(2, 3)) - 0.5  # b 3


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int = 2, size: int = 64, seed: int = 1) -> Tensor:
    """Smooth 8-bit test images (upsampled noise), closer to photos than white noise.  # b 3 s s"""
    low = torch.rand(b, 3, size // 8, size // 8, generator=_gen(seed))
    return quantize_8bit(F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False))


def _make(name: str) -> Attack:
    cls = attacks().get(name)
    return cls(steps=SEQ_STEPS) if name == "sequence" else cls()


def _run(atk: Attack, x: Tensor, s: float, seed: int = 0, cover: Tensor | None = None) -> Tensor:
    cover = _images(x.shape[0], x.shape[-1], seed=7) if cover is None else cover
    method = _TinyMethod() if atk.needs_method else None
    try:
        return atk.apply(x, s, gen=_gen(seed), method=method, cover=cover)
    except SkipCell as e:
        pytest.skip(f"{atk.name}: {e}")


def _psnr(a: Tensor, b: Tensor) -> float:
    return float(10 * torch.log10(1 / F.mse_loss(a, b)))


# --- generic contract -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_metadata(name):
    atk = _make(name)
    assert atk.name == name
    assert atk.description and atk.unit
    assert len(atk.default_strengths) >= 1
    lo, hi = atk.strength_range
    for s in atk.default_strengths:
        assert min(lo, hi) <= s <= max(lo, hi), (name, s, atk.strength_range)
        if atk.integer_strength:
            assert s == round(s)


@pytest.mark.parametrize("name", NAMES)
def test_output_contract_and_no_global_rng(name):
    atk = _make(name)
    x = _images()
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    for s in atk.default_strengths:
        y = _run(atk, x, s)
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device, (name, s)
        assert torch.isfinite(y).all(), (name, s)
        assert y.min() >= 0 and y.max() <= 1, (name, s)
    assert torch.equal(torch.get_rng_state(), torch_state), f"{name} used torch's global RNG"
    assert np.array_equal(np.random.get_state()[1], np_state), f"{name} used numpy's global RNG"


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_under_seed(name):
    atk, x = _make(name), _images()
    for s in atk.default_strengths:
        assert torch.equal(_run(atk, x, s, seed=5), _run(atk, x, s, seed=5)), (name, s)


@pytest.mark.parametrize("name", NAMES)
def test_differentiable_flag_is_truthful(name):
    atk = _make(name)
    for s in atk.default_strengths:
        x = _images().requires_grad_()
        y = _run(atk, x, s)
        if atk.differentiable:
            y.sum().backward()
            assert x.grad is not None and torch.isfinite(x.grad).all(), (name, s)
            assert (x.grad != 0).any(), f"{name}({s}) claims differentiable but gives zero gradients"
        elif y.requires_grad:
            y.sum().backward()
            assert x.grad is None or not (x.grad != 0).any(), (
                f"{name}({s}): gradients flow; set differentiable"
            )


@pytest.mark.parametrize("name", NAMES)
def test_forward_st_always_gives_a_gradient(name):
    atk = _make(name)
    if atk.needs_method:
        pytest.skip(f"{name} attacks a method's decoder; forward_st (a training distortion) gets no method")
    s = atk.default_strengths[-1]
    x = _images().requires_grad_()
    try:
        y = atk.forward_st(x, s, gen=_gen(), cover=_images(seed=7))
    except SkipCell as e:
        pytest.skip(f"{name}: {e}")
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and (x.grad != 0).any()
    if not atk.differentiable and type(atk).forward_st is Attack.forward_st:
        # the base class's straight-through: the upstream gradient passes unchanged
        assert torch.equal(x.grad, torch.ones_like(x))


@pytest.mark.parametrize("name", NAMES)
def test_from_relative_maps_onto_range(name):
    atk = _make(name)
    lo, hi = atk.strength_range
    assert atk.from_relative(0.0) == pytest.approx(lo, abs=1e-12)
    assert atk.from_relative(1.0) == pytest.approx(hi, abs=1e-12)
    for bad in (1.5, -0.1):
        with pytest.raises(WmbenchError):
            atk.from_relative(bad)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "sequence"])
def test_unknown_param_is_rejected(name):
    with pytest.raises(WmbenchError, match="no_such_param"):
        attacks().get(name)(no_such_param=1)


# --- codecs -----------------------------------------------------------------------------------------------


def _pil_roundtrip(x: Tensor, fmt: str, **kw) -> Tensor:
    out = []
    for img in (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format=fmt, **kw)
        out.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


@pytest.mark.parametrize("q", [90, 50, 10])
def test_jpeg_is_a_real_libjpeg_roundtrip(q):
    x = _images()
    assert torch.equal(_run(_make("jpeg"), x, q), _pil_roundtrip(x, "JPEG", quality=q))
    atk = attacks().get("jpeg")(subsampling="4:4:4")
    assert torch.equal(_run(atk, x, q), _pil_roundtrip(x, "JPEG", quality=q, subsampling=0))


@pytest.mark.parametrize("name", ["jpeg", "webp"])
def test_codec_quality_orders_distortion(name):
    x, atk = _images(), _make(name)
    p50, p95 = _psnr(x, _run(atk, x, 50)), _psnr(x, _run(atk, x, 95))
    assert p50 < 45 and p95 > p50


def test_codec_params_are_validated():
    with pytest.raises(WmbenchError, match="subsampling"):
        attacks().get("jpeg")(subsampling="4:1:1")
    with pytest.raises(WmbenchError, match="quality"):
        _make("jpeg").apply(_images(), 150, gen=_gen())


# --- zero strength is the identity, where the unit has one --------------------------------------------------


@pytest.mark.parametrize(
    ("name", "s", "tol"),
    [
        ("identity", 0, 0),
        ("resize", 1.0, 0),
        ("crop", 1.0, 0),
        ("center_crop", 1.0, 0),
        ("gaussian_noise", 0.0, 0),
        ("salt_pepper", 0.0, 0),
        ("dropout", 0.0, 0),
        ("cropout", 1.0, 0),
        ("gaussian_blur", 0.0, 0),
        ("median_blur", 1, 0),
        ("sharpness", 1.0, 1e-6),
        ("brightness", 1.0, 0),
        ("contrast", 1.0, 1e-6),
        ("saturation", 1.0, 1e-6),
        ("hue", 0.0, 0),
        ("rotation", 0.0, 0),
        ("perspective", 0.0, 0),
    ],
)
def test_weakest_strength_is_identity(name, s, tol):
    x = _images()
    assert (_run(_make(name), x, s) - x).abs().max() <= tol


@pytest.mark.parametrize(
    "name", ["resize", "crop", "rotation", "perspective", "gaussian_blur", "median_blur"]
)
def test_geometry_and_filters_change_the_image(name):
    atk, x = _make(name), _images()
    assert _psnr(x, _run(atk, x, atk.default_strengths[-1])) < 40


def test_crop_position_is_random_and_center_crop_is_not():
    x = _images()
    assert not torch.equal(_run(_make("crop"), x, 0.5, seed=1), _run(_make("crop"), x, 0.5, seed=2))
    assert torch.equal(_run(_make("center_crop"), x, 0.5, seed=1), _run(_make("center_crop"), x, 0.5, seed=2))


def test_rotation_params():
    x = _images()
    black = _run(_make("rotation"), x, 45)
    assert (black[:, :, 0, 0] == 0).all()  # corners filled black
    refl = _run(attacks().get("rotation")(fill="reflect"), x, 45)
    assert (refl[:, :, 0, 0] > 0).any()
    with pytest.raises(WmbenchError, match="fill"):
        attacks().get("rotation")(fill="purple")


# --- noise and cover mixing -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "s"), [("dropout", 0.5), ("cropout", 0.5)])
def test_cover_mixing_takes_pixels_from_x_or_cover_only(name, s):
    x, cover = _images(), _images(seed=9)
    y = _run(_make(name), x, s, cover=cover)
    from_x, from_c = (y == x).all(1), (y == cover).all(1)  # b h w, whole pixels
    assert (from_x | from_c).all()
    frac_cover = (from_c & ~from_x).float().mean().item()
    assert abs(frac_cover - (s if name == "dropout" else 1 - s)) < 0.05
    with pytest.raises(WmbenchError, match="cover"):
        _make(name).apply(x, s, gen=_gen(), cover=None)


def test_salt_pepper_sets_pixels_to_black_or_white():
    x = _images()
    y = _run(_make("salt_pepper"), x, 0.1)
    hit = (y != x).any(1)  # b h w
    assert abs(hit.float().mean().item() - 0.1) < 0.03
    v = y.permute(0, 2, 3, 1)[hit]  # n 3
    assert ((v == 0).all(1) | (v == 1).all(1)).all()


def test_gaussian_noise_has_the_requested_sigma():
    x = torch.full((2, 3, 64, 64), 0.5)
    assert abs((_run(_make("gaussian_noise"), x, 0.05) - x).std().item() - 0.05) < 0.003


# --- filters ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 40, 72)])
@pytest.mark.parametrize("sigma", [0.7, 2.0, 5.0])
def test_gaussian_blur_matches_kornia(shape, sigma):
    x = torch.rand(*shape, generator=_gen())
    half = min(int(np.ceil(3 * sigma)), min(shape[-2:]) - 1)
    ref = gaussian_blur2d(x, (2 * half + 1,) * 2, (sigma, sigma), border_type="reflect")
    assert (_run(_make("gaussian_blur"), x, sigma) - ref).abs().max() < 1e-5


def test_median_blur_paths_agree_and_kernel_is_odd():
    x, atk = _images(), _make("median_blur")
    fast = _run(atk, x, 5)  # 8-bit CPU input without grad: OpenCV
    exact = _run(atk, x.clone().requires_grad_(), 5).detach()  # autograd: torch
    assert torch.equal(fast, exact)
    assert torch.equal(_run(atk, x, 4), fast)  # an even kernel rounds up
    assert all(atk.from_relative(r) % 2 == 1 for r in np.linspace(0, 1, 11))


# --- sequence ---------------------------------------------------------------------------------------------


def _seq(steps: list[dict]) -> Attack:
    return attacks().get("sequence")(steps=steps)


def test_sequence_equals_steps_in_order():
    x = _images()
    seq = _seq(
        [{"name": "crop", "strength": 0.6}, {"name": "gaussian_noise"}, {"name": "jpeg", "strength": 70}]
    )
    g = _gen(3)
    ref = _make("crop").apply(x, 0.6, gen=g)
    ref = _make("gaussian_noise").apply(ref, 0.05, gen=g)
    ref = _make("jpeg").apply(ref, 70, gen=g)
    assert torch.equal(seq.apply(x, 0.05, gen=_gen(3)), ref)


def test_sequence_takes_the_free_steps_scale():
    seq = _seq(SEQ_STEPS + [{"name": "median_blur", "strength": 3, "params": {}}])
    jpeg = _make("jpeg")
    assert seq.unit == "jpeg quality" and seq.integer_strength
    assert seq.default_strengths == jpeg.default_strengths and seq.strength_range == jpeg.strength_range
    assert seq.from_relative(0.5) == jpeg.from_relative(0.5)
    assert not seq.differentiable and not seq.needs_cover
    assert seq.label() == "gaussian_blur(1.0)+jpeg+median_blur(3)"
    assert seq.params == {"steps": SEQ_STEPS + [{"name": "median_blur", "strength": 3, "params": {}}]}
    # the training form keeps differentiable steps exact and passes straight through the codec
    x = _images().requires_grad_()
    seq.forward_st(x, 50, gen=_gen()).sum().backward()
    assert x.grad is not None and not torch.equal(x.grad, torch.ones_like(x))


def test_sequence_preset_and_cover():
    seq = _seq(
        [
            {"name": "rotation", "strength": 10, "params": {"fill": "reflect"}},
            {"name": "dropout", "strength": 0.3},
        ]
    )
    assert seq.unit == "preset" and seq.default_strengths == (1.0,) and seq.strength_range == (1.0, 1.0)
    assert seq.from_relative(1.0) == 1.0
    assert seq.differentiable and seq.needs_cover
    with pytest.raises(WmbenchError, match="cover"):
        seq.apply(_images(), 1.0, gen=_gen())


@pytest.mark.parametrize(
    ("steps", "match"),
    [
        ([{"name": "jpge"}], "Did you mean 'jpeg'"),
        ([{"name": "jpeg"}, {"name": "webp"}], "only one step may omit"),
        ([{"name": "sequence", "strength": 1}], "cannot contain a sequence"),
        ([{"name": "jpeg", "quality": 50}], r"params\.steps\[0\]\.quality: unknown key"),
        ([{"name": "jpeg", "params": {"subsampling": "bad"}}], "steps\\[0\\].*subsampling"),
        (
            [{"name": "jpeg", "strength": "high"}],
            r"params\.steps\[0\]\.strength: Input should be a valid number",
        ),
        ([], r"params\.steps: List should have at least 1 item"),
    ],
)
def test_sequence_errors(steps, match):
    with pytest.raises(WmbenchError, match=match):
        _seq(steps)


# --- device -----------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("name", NAMES)
def test_runs_on_cuda(name):
    atk = _make(name)
    x = _images().cuda()
    for s in atk.default_strengths:
        y = _run(atk, x, s, cover=_images(seed=7).cuda())
        assert y.device == x.device and y.dtype == x.dtype and y.shape == x.shape
        cpu = _run(atk, x.cpu(), s)
        assert (y.cpu() - cpu).abs().max() < 2e-2, (name, s)
