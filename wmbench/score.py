"""Backend of ``wmbench score``: full-reference image metrics between two files or two folders."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from wmbench.api import WmbenchError
from wmbench.imageio import load_image
from wmbench.metrics import IMAGE_METRICS, get_image_metric


def _image_files(root: Path) -> dict[str, Path]:
    """Image files under root (recursive, hidden ones skipped), keyed by POSIX relative path."""
    exts = {e.lower() for e in Image.registered_extensions()}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and p.suffix.lower() in exts and not any(part.startswith(".") for part in rel.parts):
            out[rel.as_posix()] = p
    return out


def _pairs(ref: Path, test: Path) -> tuple[list[tuple[str, Path, Path]], dict[str, list[str]] | None]:
    for p in (ref, test):
        if not p.exists():
            raise WmbenchError(f"score: {p} does not exist")
    if ref.is_file() and test.is_file():
        return [(test.name, ref, test)], None
    if ref.is_dir() and test.is_dir():
        r, t = _image_files(ref), _image_files(test)
        common = sorted(r.keys() & t.keys())
        unmatched = {"ref_only": sorted(r.keys() - t.keys()), "test_only": sorted(t.keys() - r.keys())}
        if not common:
            raise WmbenchError(
                f"score: no image in {test} has the same relative path as one in {ref} "
                f"({len(r)} and {len(t)} images; e.g. {unmatched['ref_only'][:3]} vs {unmatched['test_only'][:3]})"
            )
        return [(name, r[name], t[name]) for name in common], unmatched
    raise WmbenchError(f"score: give two files or two folders, got {ref} and {test}")


def score_paths(
    ref: Path, test: Path, metrics: list[str] | None = None, device: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Image metrics of ``test`` against ``ref``: two image files, or two folders paired by relative path.

    Returns a JSON-serialisable dict: ``{metric: value, ..., "n_pairs": n}``; for folders the values are means
    over pairs, plus ``"per_image": [{"name": rel_path, metric: value, ...}]`` and
    ``"unmatched": {"ref_only": [...], "test_only": [...]}``.  PSNR of identical images is inf (and so is a
    mean including one); Python's json writes it as ``Infinity``.
    """
    names = list(IMAGE_METRICS) if metrics is None else list(metrics)
    fns = {n: get_image_metric(n).fn for n in names}
    pairs, unmatched = _pairs(Path(ref), Path(test))

    rows: list[dict[str, Any]] = []
    for name, rp, tp in pairs:
        x, y = load_image(rp), load_image(tp)  # 3 h w each
        if x.shape != y.shape:
            raise WmbenchError(
                f"score: sizes differ: {rp} is {x.shape[2]}x{x.shape[1]}, {tp} is {y.shape[2]}x{y.shape[1]} (w x h)"
            )
        x, y = x[None].to(device), y[None].to(device)  # 1 3 h w
        with torch.no_grad():
            rows.append({"name": name, **{m: float(fn(x, y)[0]) for m, fn in fns.items()}})

    result: dict[str, Any] = {m: math.fsum(r[m] for r in rows) / len(rows) for m in names}
    result["n_pairs"] = len(rows)
    if unmatched is not None:
        result["per_image"] = rows
        result["unmatched"] = unmatched
    return result
