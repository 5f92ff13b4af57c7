"""Image-quality metrics (PSNR, SSIM, MS-SSIM, LPIPS), bit metrics and watermark detection.

Image metrics are per-sample ``fn(ref, test) -> b`` on ``b 3 h w`` tensors in [0, 1], registered in
``IMAGE_METRICS``.  Bit metrics work on decoder logits ``b k`` (a bit reads as 1 when its logit is > 0) and
{0, 1} messages ``b k``; ``BIT_METRICS`` describes them and ``compute_bit_metrics`` computes them all.

Detection: the score of an image is its number of matching bits.  ``analytic_threshold`` gives the binomial
threshold under the null "decoded bits are independent fair coins" (no clean images needed); ``empirical_tpr``
takes the threshold from the scores of real clean images instead.  Both are one-sided (many matching bits =
watermarked); an inverted decoder is *not* detected.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from wmbench.api import BitMetric, ImageMetric, WmbenchError
from wmbench.detection import (  # noqa: F401  (re-exported: the detection API lives there)
    _binom_sf_table,
    analytic_threshold,
    empirical_tpr,
)
from wmbench.lpips_net import lpips_distance
from wmbench.metric_meta import METRICS

SSIM_KERNEL = 11
SSIM_SIGMA = 1.5
#: Wang et al. 2003 scale weights, finest scale first (torchmetrics' default)
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _check_pair(name: str, ref: Tensor, test: Tensor) -> None:
    if ref.ndim != 4 or ref.shape[1] != 3 or ref.shape != test.shape:
        raise WmbenchError(
            f"{name}: expected two b 3 h w tensors of one shape, got {tuple(ref.shape)} and {tuple(test.shape)}"
        )
    if min(ref.shape[-2:]) < SSIM_KERNEL and name in ("ssim", "ms_ssim"):
        raise WmbenchError(
            f"{name}: images must be at least {SSIM_KERNEL} px on each side, got {tuple(ref.shape)}"
        )


def psnr(ref: Tensor, test: Tensor) -> Tensor:
    """PSNR in dB, data range 1, per image over all channels and pixels.  b 3 h w, b 3 h w -> b

    Identical images give ``inf`` (kept, not capped: a cap would collide with real values, which reach ~101 dB
    for a single 1/255 error in a 256² image); means over a set containing one are inf too.
    Computed in float64.
    """
    _check_pair("psnr", ref, test)
    # one float64 temporary, not four (the same values: ref promotes exactly); a copy even when test is float64
    diff = test.to(torch.float64, copy=True).sub_(ref)
    mse = torch.sum(diff.square_(), dim=(1, 2, 3)) / ref[0].numel()  # b
    # torchmetrics' peak_signal_noise_ratio arithmetic, to the bit (its constant 10/ln 10 is a float32): the same
    # values without importing torchmetrics, which pulls in torchvision and scipy (~250 MB, seconds)
    out = (2 * torch.log(torch.tensor(1.0)) - torch.log(mse)) * (10 / torch.log(torch.tensor(10.0)))
    return out.float()


@lru_cache(maxsize=1)
def _gauss_taps() -> np.ndarray:
    """The 1-D Gaussian window (11 taps, σ 1.5, normalised; torchmetrics' and skimage's); the 2-D window is its
    outer product, so filtering along rows then columns does the same arithmetic with 2·11 instead of 121
    multiply-adds per pixel.  -> 11 (float64)"""
    d = np.arange((1 - SSIM_KERNEL) / 2, (1 + SSIM_KERNEL) / 2, 1.0)
    g = np.exp(-((d / SSIM_SIGMA) ** 2) / 2)
    return g / g.sum()


def _gauss_filter(maps: Tensor) -> Tensor:
    """Gaussian-filter every plane, borders reflected without repeating the edge (torch's ``reflect``
    padding), as two depthwise 1-D convolutions (any device, differentiable).  n c h w -> n c h w"""
    n, c, h, w = maps.shape
    p = SSIM_KERNEL // 2
    k = torch.from_numpy(_gauss_taps()).to(device=maps.device, dtype=maps.dtype)
    kx = k.view(1, 1, 1, -1).expand(c, 1, 1, SSIM_KERNEL)
    ky = k.view(1, 1, -1, 1).expand(c, 1, SSIM_KERNEL, 1)
    padded = F.pad(maps, (p, p, p, p), mode="reflect")
    return F.conv2d(F.conv2d(padded, kx, groups=c), ky, groups=c)


def _ssim_maps(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel SSIM and contrast-structure maps (Wang et al. 2004; K1 0.01, K2 0.03, data range 1), with
    torchmetrics' arithmetic (variances clamped at 0).  Border pixels read reflected neighbours: crop
    ``SSIM_KERNEL // 2`` px for the reference definition.  b c h w, b c h w -> (b c h w, b c h w)"""
    b = x.shape[0]
    mx, my, xx, yy, xy = _gauss_filter(torch.cat([x, y, x * x, y * y, x * y])).split(b)
    mx2, my2, mxy = mx * mx, my * my, mx * my
    c1, c2 = 0.01**2, 0.03**2
    upper = 2 * (xy - mxy) + c2
    lower = (xx - mx2).clamp_(min=0) + (yy - my2).clamp_(min=0) + c2
    return ((2 * mxy + c1) * upper) / ((mx2 + my2 + c1) * lower), upper / lower


def _ssim_maps_np(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``_ssim_maps`` of one image in numpy, with OpenCV's separable filter plane by plane (BORDER_REFLECT_101 =
    torch's reflect padding).  The CPU path: ~8× less work than torchmetrics' 11×11 convolution, and, unlike
    many small torch ops, no thread-pool barriers (which stall on a loaded machine).  c h w float32 -> (c h w,
    c h w)"""
    import cv2  # imported here: only this path needs OpenCV

    g = _gauss_taps()
    src = np.concatenate([x, y, x * x, y * y, x * y])  # 5c h w
    out = np.empty_like(src)
    for i in range(src.shape[0]):
        cv2.sepFilter2D(src[i], cv2.CV_32F, g, g, dst=out[i], borderType=cv2.BORDER_REFLECT_101)
    mx, my, xx, yy, xy = out.reshape(5, *x.shape)
    mx2, my2, mxy = mx * mx, my * my, mx * my
    c1, c2 = 0.01**2, 0.03**2
    upper = 2 * (xy - mxy) + c2
    lower = np.maximum(xx - mx2, 0) + np.maximum(yy - my2, 0) + c2
    return ((2 * mxy + c1) * upper) / ((mx2 + my2 + c1) * lower), upper / lower


def _numpy_path(ref: Tensor, test: Tensor) -> bool:
    """float32 CPU inputs that need no gradient: the numpy/OpenCV path applies."""
    no_grad = not (torch.is_grad_enabled() and (ref.requires_grad or test.requires_grad))
    return ref.device.type == "cpu" and ref.dtype == test.dtype == torch.float32 and no_grad


def _per_image_np(fn: Callable[[np.ndarray, np.ndarray], float], ref: Tensor, test: Tensor) -> Tensor:
    """``fn(test_i, ref_i)`` on each image's c h w arrays.  b 3 h w, b 3 h w -> b (float32)"""
    r, t = ref.detach().contiguous().numpy(), test.detach().contiguous().numpy()
    return torch.tensor([fn(t[i], r[i]) for i in range(r.shape[0])], dtype=torch.float32)


def ssim(ref: Tensor, test: Tensor) -> Tensor:
    """SSIM (Wang et al. 2004): gaussian window 11 px, σ 1.5, K1 0.01, K2 0.03, data range 1.  b 3 h w -> b

    Averaged over channels and the pixels whose window lies inside the image (a 5-px border is left out), as the
    reference implementation and skimage do.  Separable Gaussian: numpy + OpenCV image by image on a CPU without
    autograd, depthwise 1-D convolutions elsewhere; agrees with skimage's ``structural_similarity(
    gaussian_weights=True, use_sample_covariance=False)`` to ~2e-6.
    """
    _check_pair("ssim", ref, test)
    p = SSIM_KERNEL // 2
    if _numpy_path(ref, test):
        return _per_image_np(
            lambda t, r: float(_ssim_maps_np(t, r)[0][:, p:-p, p:-p].mean(dtype=np.float64)), ref, test
        )
    sim, _ = _ssim_maps(test, ref)
    return sim[..., p:-p, p:-p].mean(dim=(1, 2, 3))


def ms_ssim_scales(h: int, w: int) -> int:
    """How many MS-SSIM scales fit: the coarsest scale must still be >= the 11-px window (so 5 scales need
    a side of >= 176 px, 128² gets 4), within torchmetrics' own size check."""
    side = min(h, w)
    for n in range(len(MS_SSIM_BETAS), 0, -1):
        if side // 2 ** (n - 1) >= SSIM_KERNEL and side // max(1, n - 1) ** 2 > SSIM_KERNEL - 1:
            return n
    raise WmbenchError(f"ms_ssim: images must be at least {SSIM_KERNEL} px on each side, got {h}x{w}")


def _ms_ssim_np(x: np.ndarray, y: np.ndarray, betas: tuple[float, ...]) -> float:
    """``_ms_ssim`` of one image (c h w float32 arrays) on the numpy/OpenCV path."""
    p = SSIM_KERNEL // 2
    terms = []
    for i in range(len(betas)):
        sim, cs = _ssim_maps_np(x, y)
        if i == len(betas) - 1:  # the coarsest scale contributes full SSIM, border included (as torchmetrics)
            terms.append(max(0.0, float(sim.mean(dtype=np.float64))))
        else:
            terms.append(max(0.0, float(cs[:, p:-p, p:-p].mean(dtype=np.float64))))
            c, h, w = x.shape  # 2×2 average pooling, odd rows/columns dropped (as F.avg_pool2d)
            x, y = (
                a[:, : h // 2 * 2, : w // 2 * 2].reshape(c, h // 2, 2, w // 2, 2).mean((2, 4)) for a in (x, y)
            )
    return float(np.prod(np.array(terms) ** np.array(betas)))


def _ms_ssim(ref: Tensor, test: Tensor, betas: tuple[float, ...]) -> Tensor:
    """torchmetrics' multi-scale SSIM arithmetic with the separable filter.  b 3 h w, b 3 h w -> b"""
    p = SSIM_KERNEL // 2
    x, y = test, ref
    terms = []
    for i in range(len(betas)):
        sim, cs = _ssim_maps(x, y)
        if i == len(betas) - 1:  # the coarsest scale contributes full SSIM, border included (as torchmetrics)
            terms.append(torch.relu(sim.flatten(1).mean(1)))
        else:
            terms.append(torch.relu(cs[..., p:-p, p:-p].flatten(1).mean(1)))
            x, y = F.avg_pool2d(x, (2, 2)), F.avg_pool2d(y, (2, 2))
    w = torch.tensor(betas, device=ref.device).view(-1, 1)
    return torch.prod(torch.stack(terms) ** w, dim=0)


def ms_ssim(ref: Tensor, test: Tensor) -> Tensor:
    """MS-SSIM (Wang et al. 2003), SSIM settings as ``ssim``.  b 3 h w, b 3 h w -> b

    Five scales need images of >= 176 px per side.  Smaller images use as many scales as fit
    (``ms_ssim_scales``: 4 at 128², 3 at 64², 1 = plain SSIM below 22 px) with the standard betas truncated to
    the finest scales and renormalised to sum to 1, so values are comparable only between images with the same
    number of scales.
    Negative contrast terms are clipped at 0 (torchmetrics' ``normalize="relu"``) so fractional powers stay real.
    Same definition as torchmetrics' ``multiscale_structural_similarity_index_measure`` (reflected borders
    inside each scale, the coarsest scale's full SSIM map averaged), with the separable filter of ``ssim``.
    """
    _check_pair("ms_ssim", ref, test)
    n = ms_ssim_scales(ref.shape[-2], ref.shape[-1])
    betas = MS_SSIM_BETAS
    if n < len(MS_SSIM_BETAS):  # the full set is used as published (it sums to 1.0001)
        betas = tuple(b / sum(MS_SSIM_BETAS[:n]) for b in MS_SSIM_BETAS[:n])
    if _numpy_path(ref, test):
        return _per_image_np(lambda t, r: _ms_ssim_np(t, r, betas), ref, test)
    return _ms_ssim(ref, test, betas)


#: images per LPIPS forward pass are capped at this many pixels (16 × 256²): AlexNet's activations for a larger
#: batch only cost memory, not speed
LPIPS_PIXELS = 16 * 256 * 256


def lpips(ref: Tensor, test: Tensor) -> Tensor:
    """LPIPS v0.1 AlexNet (Zhang et al. 2018), lower is more similar; inputs fed at their own size, scaled to
    [-1, 1], in chunks of at most ``LPIPS_PIXELS`` pixels.  Differentiable w.r.t. inputs that require grad.
    b 3 h w, b 3 h w -> b"""
    _check_pair("lpips", ref, test)
    step = max(1, LPIPS_PIXELS // (ref.shape[-2] * ref.shape[-1]))
    if ref.shape[0] <= step:
        return lpips_distance(ref, test)
    return torch.cat(
        [lpips_distance(ref[j : j + step], test[j : j + step]) for j in range(0, ref.shape[0], step)]
    )


_IMAGE_FNS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "psnr": psnr,
    "ssim": ssim,
    "ms_ssim": ms_ssim,
    "lpips": lpips,
}
#: name, direction and description come from ``wmbench.metric_meta`` (what ``wmbench list metrics`` prints)
IMAGE_METRICS: dict[str, ImageMetric] = {
    n: ImageMetric(n, _IMAGE_FNS[n], better, text)
    for n, (kind, better, text) in METRICS.items()
    if kind == "image"
}
BIT_METRICS: dict[str, BitMetric] = {
    n: BitMetric(n, better, text) for n, (kind, better, text) in METRICS.items() if kind == "bits"
}


def metric_names() -> list[str]:
    """Every metric name: image metrics, then bit metrics."""
    return [*IMAGE_METRICS, *BIT_METRICS]


def get_image_metric(name: str) -> ImageMetric:
    """Look up an image metric; unknown names raise with a did-you-mean."""
    if name in IMAGE_METRICS:
        return IMAGE_METRICS[name]
    if name in BIT_METRICS:
        raise WmbenchError(
            f"{name!r} is a bit metric, computed for every row; image metrics: {list(IMAGE_METRICS)}"
        )
    close = difflib.get_close_matches(name, IMAGE_METRICS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise WmbenchError(f"unknown image metric {name!r}{hint} (available: {', '.join(IMAGE_METRICS)})")


# ---------------------------------------------------------------------------------------------- bit metrics


def _check_bits(logits: Tensor, msg: Tensor) -> None:
    if logits.ndim != 2 or logits.shape != msg.shape:
        raise WmbenchError(
            f"expected logits and message of one shape b k, got {tuple(logits.shape)} and {tuple(msg.shape)}"
        )


def bit_matches(logits: Tensor, msg: Tensor) -> Tensor:
    """Number of bits decoded right (bit = logit > 0).  b k, b k -> b (int64)"""
    _check_bits(logits, msg)
    return ((logits > 0) == (msg > 0.5)).sum(dim=1)


def bit_acc(logits: Tensor, msg: Tensor) -> Tensor:
    """Fraction of bits decoded right.  b k, b k -> b"""
    return bit_matches(logits, msg).float() / logits.shape[1]


def ber(logits: Tensor, msg: Tensor) -> Tensor:
    """Bit error rate = 1 - bit_acc.  b k, b k -> b"""
    return 1.0 - bit_acc(logits, msg)


def n_bit_err(logits: Tensor, msg: Tensor) -> Tensor:
    """Number of wrong bits.  b k, b k -> b (int64)"""
    return logits.shape[1] - bit_matches(logits, msg)


def word_acc(logits: Tensor, msg: Tensor) -> Tensor:
    """1.0 when every bit is right, else 0.0.  b k, b k -> b"""
    return (bit_matches(logits, msg) == logits.shape[1]).float()


def p_value(matches: Tensor | Sequence[int] | int, k: int) -> Tensor:
    """One-sided binomial p-value P(X >= matches), X ~ Bin(k, 1/2): how likely an unwatermarked image (decoded
    bits independent fair coins) matches at least this many bits.  Exact (rational sums), float64.  b -> b"""
    if k < 1:
        raise WmbenchError(f"p_value: k must be >= 1, got {k}")
    m = torch.as_tensor(matches).long().cpu()
    if m.numel() and (m.min() < 0 or m.max() > k):
        raise WmbenchError(f"p_value: matches must lie in [0, {k}], got {m.min().item()}..{m.max().item()}")
    table = torch.tensor(_binom_sf_table(k), dtype=torch.float64)
    return table[m]


def detected(matches: Tensor, k: int, fpr: float) -> Tensor:
    """Analytic detection decision at false-positive rate fpr.  b -> b (bool)"""
    return torch.as_tensor(matches) >= analytic_threshold(k, fpr)


def compute_bit_metrics(logits: Tensor, msg: Tensor) -> dict[str, Tensor]:
    """Every metric of ``BIT_METRICS`` for a batch.  b k, b k -> {name: b}"""
    m = bit_matches(logits, msg)
    k = logits.shape[1]
    acc = m.float() / k
    return {
        "bit_acc": acc,
        "ber": 1.0 - acc,
        "n_bit_err": k - m,
        "word_acc": (m == k).float(),
        "p_value": p_value(m, k),
    }
