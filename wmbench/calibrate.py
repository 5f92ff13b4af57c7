"""FPR calibration: decode many clean images and test the analytic threshold's assumption.

The analytic detection threshold (``metrics.analytic_threshold``) is exact when a decoder reading an unwatermarked
image returns independent fair coins. A run cannot check that: it has a few dozen clean covers, each compared
with its own random message, and against a uniformly random message the number of matching bits is
Binomial(k, ½) *whatever* the decoder returns. What varies is the false-positive rate for one fixed key, which is
how a watermark is deployed. So ``calibrate`` decodes ≥ 1,000 clean images and compares the decoded bits with a
fixed key drawn from the seed, tests the bits themselves (balance per position, dispersion of the number of ones),
and reports the false-positive rate at each threshold with exact intervals, including for the worst key (the
per-bit majority of half the images, measured on the other half).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from wmbench import stats
from wmbench.api import WmbenchError

#: significance level of the fair-coin verdict (split over its three tests, Bonferroni)
ALPHA = 0.01
#: FPR levels reported besides the target: resolvable with 1,000 clean images, unlike 1e-3
LEVELS = (0.1, 0.01)
#: random keys whose FPR spread is reported
N_KEYS = 1000


@dataclass
class CleanImages:
    """Unwatermarked images to decode.  images: n 3 s s uint8."""

    ids: list[str]
    images: torch.Tensor
    info: dict[str, Any]


def _photo_rgb(name: str) -> np.ndarray:
    from wmbench.data import PHOTOS

    a = np.asarray(PHOTOS[name].load())
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3].astype(np.uint8))


def _pyramid(rgb: np.ndarray, size: int) -> list[tuple[float, np.ndarray]]:
    """The photo at each of the built-in tiles' scales that still holds a size × size crop."""
    from wmbench.data import SCALES

    pil = Image.fromarray(rgb)
    out = []
    for s in SCALES:
        w, h = round(pil.width * s), round(pil.height * s)
        if min(w, h) < size:
            break
        out.append((s, rgb if s == 1.0 else np.asarray(pil.resize((w, h), Image.Resampling.LANCZOS))))
    return out


def photo_names(split: str) -> list[str]:
    """The built-in photos a calibration draws from: one split, or ``all`` of them."""
    from wmbench.data import SPLITS

    if split == "all":
        return [*SPLITS["eval"], *SPLITS["train"]]
    if split not in SPLITS:
        raise WmbenchError(f"calibrate: unknown split {split!r}; use all, {', '.join(SPLITS)}")
    return list(SPLITS[split])


def builtin_crops(count: int, size: int, seed: int = 0, split: str = "all") -> CleanImages:
    """``count`` random crops of the built-in photos, deterministic from ``seed``: photos taken in turn, then a
    random scale (the tiles' scales), position and horizontal flip; repeated or near-flat crops are drawn again."""
    from wmbench.data import FLAT_STD

    if count < 1 or size < 1:
        raise WmbenchError(f"calibrate: count and size must be positive, got {count} and {size}")
    rng = np.random.default_rng(seed)
    pyramids = {n: p for n in photo_names(split) if (p := _pyramid(_photo_rgb(n), size))}
    if not pyramids:
        raise WmbenchError(f"calibrate: no built-in photo holds a {size}x{size} crop; lower --size")
    names = list(pyramids)
    ids: list[str] = []
    seen: set[str] = set()
    crops = np.empty((count, size, size, 3), dtype=np.uint8)
    for i in range(count):
        name = names[i % len(names)]
        for _ in range(1000):  # a repeated or near-flat crop is drawn again
            scale, a = pyramids[name][int(rng.integers(len(pyramids[name])))]
            top = int(rng.integers(a.shape[0] - size + 1))
            left = int(rng.integers(a.shape[1] - size + 1))
            flip = bool(rng.random() < 0.5)
            cid = f"{name}@{scale:.2f}/y{top}x{left}" + ("/flip" if flip else "")
            c = a[top : top + size, left : left + size]
            if cid not in seen and float(c.std()) / 255.0 >= FLAT_STD:
                break
        seen.add(cid)
        crops[i] = c[:, ::-1] if flip else c
        ids.append(cid)
    info = {
        "source": "builtin crops",
        "photos": names,
        "split": split,
        "size": size,
        "seed": seed,
        "policy": "photos in turn; random scale among the tiles' scales, random position, horizontal flip with "
        "probability 1/2; repeated or near-flat crops redrawn",
    }
    return CleanImages(ids, torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous(), info)


def folder_images(path: str, count: int | None, size: int) -> CleanImages:
    """The first ``count`` readable images of a folder, resized and centre-cropped as a run would."""
    from wmbench.data import load_image_set

    s = load_image_set("folder", size=size, count=count, path=path)
    return CleanImages(list(s.ids), s.images, {"source": "folder", "path": str(path), "size": size})


@torch.no_grad()
def decode(method: Any, images: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """Logits of every image (8-bit inputs, as a run feeds them), in batches.  n 3 s s uint8 -> n k"""
    out = []
    for s in range(0, len(images), batch_size):
        x = images[s : s + batch_size].to(method.device).float() / 255.0
        out.append(method.extract(x).detach().float().cpu().numpy())
    return np.concatenate(out)


def _fpr(matches: np.ndarray, tau: int) -> dict[str, Any]:
    e = stats.proportion(matches >= tau)
    return {"fpr": e.value, "ci": e.ci, "false_positives": int((matches >= tau).sum())}


def _empirical_threshold(matches: np.ndarray, k: int, fpr: float) -> int:
    """Smallest τ with a share of clean images matching ≥ τ bits at most ``fpr`` (k + 1: never detect)."""
    return next(t for t in range(k + 2) if (matches >= t).mean() <= fpr)


def analyse(logits: np.ndarray, target_fpr: float = 1e-3, seed: int = 0) -> dict[str, Any]:
    """Everything ``calibrate`` reports about clean-image logits (n k), without the method (testable alone)."""
    from wmbench.metrics import analytic_threshold, p_value

    bits = (np.asarray(logits) > 0).astype(np.int64)
    n, k = bits.shape
    key = np.random.default_rng(seed).integers(0, 2, k)
    matches = (bits == key).sum(axis=1)
    tau = analytic_threshold(k, target_fpr)
    gof = stats.binomial_gof(matches, k)
    fair = stats.fairness(bits, ALPHA)
    ratio, p_disp = stats.dispersion_p(matches, k)
    half = n // 2
    worst = (bits[:half].mean(axis=0) >= 0.5).astype(np.int64)  # the key a clean image most often matches
    worst_matches = (bits[half:] == worst).sum(axis=1)
    levels = []
    for f in sorted({*LEVELS, target_fpr}, reverse=True):
        t = analytic_threshold(k, f)
        levels.append(
            {
                "fpr": f,
                "det_threshold": t,
                "analytic_fpr": float(p_value([t], k)[0]) if t <= k else 0.0,
                "key": _fpr(matches, t),
                "worst_key": _fpr(worst_matches, t),
            }
        )
    at_target = next(x for x in levels if x["fpr"] == target_fpr)
    ps = [gof["p_value"], fair["balance_p"], fair["dispersion_p"]]
    is_fair = all(not np.isfinite(p) or p >= ALPHA / 3 for p in ps)
    emp = _fpr(matches, tau)
    return {
        "nbits": k,
        "n_clean": n,
        "target_fpr": target_fpr,
        "det_threshold": tau,
        "analytic_fpr": float(p_value([tau], k)[0]) if tau <= k else 0.0,
        "empirical_fpr": emp["fpr"],
        "fpr_ci": emp["ci"],
        "false_positives": emp["false_positives"],
        "resolvable": bool(target_fpr * n >= 1),
        "empirical_threshold": _empirical_threshold(matches, k, target_fpr),
        "key": "".join(map(str, key)),
        "matches": {
            "observed": gof["observed"],
            "expected": gof["expected"],
            "mean": float(matches.mean()),
            "variance_ratio": ratio,
            "dispersion_p": p_disp,
        },
        "gof": {"test": "chi-square vs Binomial(k, 1/2), tail bins pooled to >= 5 expected", **_pick(gof)},
        "bits": {
            k_: fair[k_]
            for k_ in ("mean_p_one", "max_bit_bias", "balance_p", "variance_ratio", "dispersion_p")
        },
        "levels": levels,
        "keys": _key_spread(bits, analytic_threshold(k, 0.01), seed),
        "fair_coins": bool(is_fair),
        "verdict": _verdict(is_fair, ps, emp, target_fpr, n, at_target["worst_key"]),
    }


def _pick(gof: dict) -> dict:
    return {"statistic": gof["statistic"], "dof": gof["dof"], "p_value": gof["p_value"]}


def _key_spread(bits: np.ndarray, tau: int, seed: int) -> dict[str, Any]:
    """FPR at the 1 % threshold for many random keys, against what fair coins would give for the 95th
    percentile: a decoder whose bits are not fair coins has keys that fire far more often than others."""
    from scipy import stats as st

    from wmbench.metrics import p_value

    n, k = bits.shape
    keys = np.random.default_rng(seed + 1).integers(0, 2, (N_KEYS, k))
    m = bits @ keys.T + (1 - bits) @ (1 - keys).T  # n N_KEYS matching bits
    rates = (m >= tau).mean(axis=0)
    nominal = float(p_value([tau], k)[0]) if tau <= k else 0.0
    return {
        "n_keys": N_KEYS,
        "det_threshold": tau,
        "analytic_fpr": nominal,
        "median": float(np.median(rates)),
        "p95": float(np.quantile(rates, 0.95)),
        "max": float(rates.max()),
        "p95_if_fair": float(st.binom.ppf(0.95, n, nominal) / n),
    }


def _verdict(fair: bool, ps: list[float], emp: dict, fpr: float, n: int, worst: dict) -> str:
    lo, hi = emp["ci"]
    if not fair:
        return (
            f"NOT fair coins (smallest p = {min(p for p in ps if np.isfinite(p)):.1e}): the analytic threshold's "
            f"FPR does not hold for every fixed key; the worst key's measured FPR is {worst['fpr']:.4f} for a "
            f"target of {fpr:g} (levels.worst_key, keys); measure your key's FPR on clean images. This key: FPR "
            f"{emp['fpr']:.4f} [{lo:.4f}, {hi:.4f}] at the analytic threshold"
        )
    tail = "" if fpr * n >= 1 else f" ({n} images resolve FPRs down to {1 / n:.0e}, not {fpr:g})"
    return (
        f"consistent with fair coins; measured FPR at the analytic threshold {emp['fpr']:.4f} [{lo:.4f}, "
        f"{hi:.4f}] for a target of {fpr:g}{tail}"
    )


def pick_device(device: str) -> torch.device:
    """``auto``: cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def calibrate(
    method: str,
    params: dict[str, Any] | None = None,
    *,
    count: int = 1000,
    size: int = 128,
    folder: str | None = None,
    target_fpr: float = 1e-3,
    seed: int = 0,
    split: str = "all",
    batch_size: int = 32,
    device: str = "cpu",
) -> dict[str, Any]:
    """Decode ``count`` clean images with a registered method and report its false-positive calibration."""
    from wmbench.registry import methods

    if not 0.0 < target_fpr < 1.0:
        raise WmbenchError(f"calibrate: --target-fpr must lie in (0, 1), got {target_fpr}")
    m = methods().get(method)(**(params or {}))
    m.setup(pick_device(device))
    imgs = folder_images(folder, count, size) if folder else builtin_crops(count, size, seed, split)
    logits = decode(m, imgs.images, batch_size)
    if logits.ndim != 2 or logits.shape[0] != len(imgs.ids):
        raise WmbenchError(f"calibrate: {method}.extract returned shape {logits.shape}, expected n k")
    res = analyse(logits, target_fpr, seed)
    return {"method": method, "params": params or {}, "images": imgs.info, **res}


def clean_json(v: Any) -> Any:
    """NaN/inf -> None so the JSON is strict."""
    if isinstance(v, dict):
        return {k: clean_json(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [clean_json(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
