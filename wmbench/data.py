"""Image sources for a run: deterministic tiles of real photographs that installed packages ship, or a folder.

``builtin``: the photos in ``PHOTOS`` (scikit-image, scikit-learn and matplotlib ship them, so this works offline),
split by SOURCE PHOTO into disjoint ``SPLITS`` (a photo never contributes to both). Each photo is downscaled
(Pillow LANCZOS, 8-bit) by each factor in ``SCALES`` while it still holds a tile, and cut into non-overlapping
size×size tiles on a grid centred in the photo. Near-flat tiles (pixel std < ``FLAT_STD`` on a [0,1] scale) are
dropped: many watermarks cannot embed in flat regions, and a benchmark of flat patches says little. Tiles of a
photo are ordered by a hash of their id (so the first few come from all over the photo and all scales), then
photos are interleaved round-robin, so a small ``count`` still spans every photo of the split.

``folder``: every image file under a folder (recursively, sorted by relative path, hidden files skipped), read by
``wmbench.imageio.load_image`` and brought to size×size by scaling the shorter side to ``size`` and centre-cropping.

See docs/images.md for the tile counts and the policies.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from wmbench.api import WmbenchError
from wmbench.imageio import EXTENSIONS, load_image, resize_center_crop, to_uint8, warn_skip

#: downscale factors applied to every built-in photo (a factor is used while the scaled photo holds a tile)
SCALES: tuple[float, ...] = (1.0, 0.75, 0.5, 0.35, 0.25)
#: tiles whose pixel std (all channels, values in [0,1]) is below this are dropped as near-flat (≈ 8/255)
FLAT_STD = 0.03
SPLIT_NAMES = ("eval", "train")
FOLDER_POLICY = (
    "EXIF orientation applied; alpha composited over white; grayscale replicated to RGB; 16-bit/float scaled by "
    "full range; shorter side scaled to size (bicubic, antialiased, on float values), centre crop, rounded to 8 bits"
)


@dataclass
class ImageSet:
    """The covers of a run.  images: n 3 s s uint8 (kept 8-bit to save memory; the runner converts per batch)."""

    ids: list[str]
    images: torch.Tensor
    skipped: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- built-in photos
@dataclass(frozen=True)
class Photo:
    """A photograph an installed package ships; ``load()`` -> h w 3 uint8 (grayscale replicated)."""

    package: str
    load: Callable[[], np.ndarray]
    kind: str  # colour | grayscale


def _skimage(name: str, index: int | None = None) -> Callable[[], np.ndarray]:
    def f() -> np.ndarray:
        import skimage.data

        a = getattr(skimage.data, name)()
        return a[index] if index is not None else a

    return f


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def f() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)

    return f


def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook as cbook

    with cbook.get_sample_data("grace_hopper.jpg") as fh, Image.open(fh) as im:
        return np.asarray(im.convert("RGB"))


#: every built-in photograph; all load offline from the installed packages (no pooch download)
PHOTOS: dict[str, Photo] = {
    "astronaut": Photo("scikit-image", _skimage("astronaut"), "colour"),
    "coffee": Photo("scikit-image", _skimage("coffee"), "colour"),
    "rocket": Photo("scikit-image", _skimage("rocket"), "colour"),
    "motorcycle_left": Photo("scikit-image", _skimage("stereo_motorcycle", 0), "colour"),
    "china": Photo("scikit-learn", _sklearn("china.jpg"), "colour"),
    "grace_hopper": Photo("matplotlib", _grace_hopper, "colour"),
    "chelsea": Photo("scikit-image", _skimage("chelsea"), "colour"),
    "flower": Photo("scikit-learn", _sklearn("flower.jpg"), "colour"),
    "immunohistochemistry": Photo("scikit-image", _skimage("immunohistochemistry"), "colour"),
    "retina": Photo("scikit-image", _skimage("retina"), "colour"),
    "hubble_deep_field": Photo("scikit-image", _skimage("hubble_deep_field"), "colour"),
    "camera": Photo("scikit-image", _skimage("camera"), "grayscale"),
    "brick": Photo("scikit-image", _skimage("brick"), "grayscale"),
    "grass": Photo("scikit-image", _skimage("grass"), "grayscale"),
    "gravel": Photo("scikit-image", _skimage("gravel"), "grayscale"),
    "coins": Photo("scikit-image", _skimage("coins"), "grayscale"),
    "moon": Photo("scikit-image", _skimage("moon"), "grayscale"),
}

#: the split, by source photo (disjoint). eval: six natural colour photos (portrait, people, objects, outdoor
#: scene, food, vehicle); train: the other colour photos (cat, flower, microscopy, fundus, astronomy) plus the
#: grayscale ones replicated to RGB (textures, a street scene, coins, the moon).
SPLITS: dict[str, tuple[str, ...]] = {
    "eval": ("astronaut", "coffee", "rocket", "china", "grace_hopper", "motorcycle_left"),
    "train": (
        "chelsea",
        "flower",
        "immunohistochemistry",
        "retina",
        "hubble_deep_field",
        "camera",
        "brick",
        "grass",
        "gravel",
        "coins",
        "moon",
    ),
}

#: shipped photos deliberately left out, and why
EXCLUDED: dict[str, str] = {
    "motorcycle_right": "stereo twin of motorcycle_left (same scene): it would leak eval content into train",
    "cat": "the same photo as chelsea",
    "page": "a scanned text page, too small (191 px) for most tile sizes",
    "text": "rendered text on a flat background, too small (172 px)",
}


def _rgb_u8(a: np.ndarray) -> np.ndarray:
    """h w | h w c (any int dtype) -> h w 3 uint8."""
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise WmbenchError(f"built-in photo has dtype {a.dtype}, expected uint8")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def _tile_key(tile_id: str) -> str:
    return hashlib.sha256(tile_id.encode()).hexdigest()


@lru_cache(maxsize=64)
def _photo_tiles(name: str, size: int) -> tuple[tuple[str, ...], np.ndarray]:
    """All non-flat tiles of one photo at one size, in their fixed (hash) order.  -> ids, n 3 size size uint8"""
    rgb = _rgb_u8(PHOTOS[name].load())
    pil = Image.fromarray(rgb)
    found: list[tuple[str, np.ndarray]] = []
    for s in SCALES:
        w, h = round(pil.width * s), round(pil.height * s)
        if min(w, h) < size:
            break
        a = rgb if s == 1.0 else np.asarray(pil.resize((w, h), Image.Resampling.LANCZOS))
        rows, cols = h // size, w // size
        top, left = (h - rows * size) // 2, (w - cols * size) // 2
        for r in range(rows):
            for c in range(cols):
                t = a[top + r * size : top + (r + 1) * size, left + c * size : left + (c + 1) * size]
                if float((t.astype(np.float32) / 255.0).std()) >= FLAT_STD:
                    found.append((f"{name}@{s:.2f}/r{r}c{c}", t))
    found.sort(key=lambda kv: _tile_key(kv[0]))
    if not found:
        return (), np.empty((0, 3, size, size), dtype=np.uint8)
    imgs = np.ascontiguousarray(np.stack([t for _, t in found]).transpose(0, 3, 1, 2))
    return tuple(k for k, _ in found), imgs


@lru_cache(maxsize=16)
def _split_tiles(split: str, size: int) -> tuple[tuple[str, ...], torch.Tensor, tuple[tuple[str, str], ...]]:
    """All tiles of a split, photos interleaved round-robin.  -> ids, n 3 size size uint8, missing photos"""
    per_photo: list[tuple[tuple[str, ...], np.ndarray]] = []
    missing: list[tuple[str, str]] = []
    for name in SPLITS[split]:
        try:
            per_photo.append(_photo_tiles(name, size))
        except Exception as e:  # a package that stopped shipping a photo must not take the whole source down
            reason = f"{type(e).__name__}: {e}"
            warnings.warn(
                f"built-in photo {name!r} ({PHOTOS[name].package}) could not be loaded: {reason}",
                stacklevel=2,
            )
            missing.append((name, reason))
    order: list[tuple[int, int]] = []
    for i in range(max((len(ids) for ids, _ in per_photo), default=0)):
        order += [(p, i) for p, (ids, _) in enumerate(per_photo) if i < len(ids)]
    if not order:
        return (), torch.empty(0, 3, size, size, dtype=torch.uint8), tuple(missing)
    ids = tuple(per_photo[p][0][i] for p, i in order)
    offsets = np.cumsum([0] + [len(ids_) for ids_, _ in per_photo])
    rows = np.array([int(offsets[p]) + i for p, i in order], dtype=np.int64)
    # gather in numpy: torch's uint8 index_select is very slow on CPU
    imgs = torch.from_numpy(np.concatenate([t for _, t in per_photo])[rows])
    return ids, imgs, tuple(missing)


def builtin_tiles(size: int, split: str = "eval") -> tuple[list[str], torch.Tensor]:
    """Every built-in tile of a split, in the order ``count`` takes them.  -> ids, n 3 size size uint8"""
    _check_split(split)
    ids, imgs, _ = _split_tiles(split, int(size))
    return list(ids), imgs.clone()


def tile_counts(size: int) -> dict[str, int]:
    """How many built-in tiles each split has at ``size``."""
    return {s: len(_split_tiles(s, int(size))[0]) for s in SPLIT_NAMES}


def _check_split(split: str) -> None:
    if split not in SPLIT_NAMES:
        raise WmbenchError(f"images.split: unknown split {split!r}; use one of {list(SPLIT_NAMES)}")


def _digest(imgs: torch.Tensor) -> str:
    """sha256 of the uint8 pixels: two runs with the same digest saw exactly the same covers."""
    return hashlib.sha256(imgs.contiguous().numpy().tobytes()).hexdigest()


def _builtin(size: int, count: int | None, split: str) -> ImageSet:
    all_ids, all_imgs, missing = _split_tiles(split, size)
    n_avail = len(all_ids)
    if n_avail == 0:
        raise WmbenchError(
            f"images: the built-in {split} split has no tiles at {size}x{size} (its photos are smaller); "
            "lower images.size or use source: folder"
        )
    if count is not None and count > n_avail:
        raise WmbenchError(
            f"images.count: {count} requested but the built-in {split} split has only {n_avail} tiles at "
            f"{size}x{size}; lower count or size, or use source: folder with your own images"
        )
    n = n_avail if count is None else count
    ids, imgs = list(all_ids[:n]), all_imgs[:n].clone()
    photos: dict[str, dict[str, Any]] = {}
    for name in SPLITS[split]:
        if name in dict(missing):
            continue
        avail = sum(1 for i in all_ids if i.split("@", 1)[0] == name)
        used = sum(1 for i in ids if i.split("@", 1)[0] == name)
        photos[name] = {
            "package": PHOTOS[name].package,
            "kind": PHOTOS[name].kind,
            "tiles": used,
            "available": avail,
        }
    info: dict[str, Any] = {
        "source": "builtin",
        "split": split,
        "size": size,
        "count": len(ids),
        "available": n_avail,
        "photos": photos,
        "other_split_photos": list(SPLITS["train" if split == "eval" else "eval"]),
        "policy": (
            f"non-overlapping grid tiles (grid centred) of each photo downscaled by {list(SCALES)} (Pillow LANCZOS, "
            f"8-bit) while it holds a tile; tiles with pixel std < {FLAT_STD} dropped as near-flat; tiles of a photo "
            "ordered by sha256 of their id, photos interleaved round-robin; the first `count` taken"
        ),
        "sha256": _digest(imgs),
    }
    if missing:
        info["missing_photos"] = [{"photo": p, "reason": r} for p, r in missing]
    return ImageSet(ids, imgs, [], info)


# ---------------------------------------------------------------------------------------------- folder
def _candidates(root: Path) -> list[Path]:
    """Image files under root (recursive), sorted by relative path; hidden files/folders (e.g. ._x.jpg) skipped."""
    out: list[tuple[str, Path]] = []
    seen: set[str] = set()  # real paths of visited folders: symlinked folders are followed, cycles are not
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.startswith(".") or Path(f).suffix.lower() not in EXTENSIONS:
                continue
            p = Path(dirpath) / f
            if p.is_file() or p.is_symlink():  # a dangling link is skipped with a warning, not silently
                out.append((p.relative_to(root).as_posix(), p))
    return [p for _, p in sorted(out)]


def _reason(e: WmbenchError, p: Path) -> str:
    msg = str(e)
    return msg[len(f"{p}: ") :] if msg.startswith(f"{p}: ") else msg


def _read_one(p: Path, size: int) -> torch.Tensor | str:
    """-> 3 size size uint8, or the reason the file cannot be read."""
    try:
        img = load_image(p, exact_u8=size)
        return img if img.dtype == torch.uint8 else to_uint8(resize_center_crop(img, size))
    except WmbenchError as e:
        return _reason(e, p)


def _scan_folder(
    root: Path, size: int, count: int | None, keep: Callable[[Path, torch.Tensor], None]
) -> tuple[list[str], list[dict], int]:
    """Read the first ``count`` readable files under root in order, handing each to ``keep``.
    -> ids, skipped files, number of candidate files"""
    if not root.exists():
        raise WmbenchError(
            f"images.path: folder not found: {root}; point images.path at a folder of image files "
            f"({', '.join(sorted(EXTENSIONS))}), or use source: builtin"
        )
    if not root.is_dir():
        raise WmbenchError(
            f"images.path: {root} is a file, not a folder; give the folder that holds the images"
        )
    files = _candidates(root)
    if not files:
        raise WmbenchError(
            f"images.path: no image files in {root} (looked recursively for {', '.join(sorted(EXTENSIONS))}); "
            "add images there or fix the path"
        )
    ids: list[str] = []
    skipped: list[dict] = []
    workers = max(1, min(8, os.cpu_count() or 1))
    chunk = 4 * workers
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(files), chunk):
            batch = files[start : start + chunk]
            # read in parallel, but warn and keep files in sorted order (deterministic ids)
            for p, res in zip(batch, pool.map(lambda q: _read_one(q, size), batch), strict=True):
                if count is not None and len(ids) >= count:
                    break
                if isinstance(res, str):
                    warn_skip(p, res)
                    skipped.append({"path": str(p), "reason": res})
                    continue
                ids.append(p.relative_to(root).as_posix())
                keep(p, res)
            if count is not None and len(ids) >= count:
                break
    if not ids:
        raise WmbenchError(
            f"images.path: none of the {len(files)} image files in {root} could be read ({len(skipped)} skipped; "
            "see the warnings); check the files or point images.path elsewhere"
        )
    if count is not None and len(ids) < count:
        raise WmbenchError(
            f"images.count: {count} requested but {root} holds only {len(ids)} readable images "
            f"({len(skipped)} unreadable skipped); lower count or add images"
        )
    return ids, skipped, len(files)


def _folder(root: Path, size: int, count: int | None) -> ImageSet:
    imgs: list[torch.Tensor] = []
    ids, skipped, n_files = _scan_folder(root, size, count, lambda p, img: imgs.append(img))
    stack = torch.stack(imgs)
    return ImageSet(ids, stack, skipped, _folder_info(root, size, len(ids), n_files, skipped, _digest(stack)))


def _folder_info(
    root: Path, size: int, n: int, n_files: int, skipped: list[dict], sha: str
) -> dict[str, Any]:
    return {
        "source": "folder",
        "path": str(root),
        "size": size,
        "count": n,
        "candidates": n_files,
        "skipped": len(skipped),
        "policy": FOLDER_POLICY,
        "sha256": sha,
    }


def load_image_set(
    source: str,
    *,
    size: int,
    count: int | None = None,
    path: str | Path | None = None,
    split: str = "eval",
) -> ImageSet:
    """The covers of a run.  -> ImageSet, images n 3 size size uint8

    ``builtin``: the first ``count`` (all if None) tiles of the ``split`` ("eval" or "train"); WmbenchError when
    fewer exist. ``folder``: the first ``count`` readable files under ``path``, shorter side scaled to ``size``
    (bicubic, antialiased) and centre-cropped; unreadable files are skipped with one warning each and listed in
    ``skipped``.
    """
    _check_split(split)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise WmbenchError(f"images.size must be a positive integer, got {size!r}")
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise WmbenchError(f"images.count must be a positive integer or null (all), got {count!r}")
    if source == "folder":
        if path is None:
            raise WmbenchError("images.path: source 'folder' needs a path to a folder of images")
        return _folder(Path(path).expanduser(), size, count)
    if source == "builtin":
        return _builtin(size, count, split)
    raise WmbenchError(f"images.source: unknown source {source!r}; use 'builtin' or 'folder'")


# ---------------------------------------------------------------------------------------------- lazy sources
@dataclass
class ImageSource:
    """The covers of a run, read a shard at a time (memory O(shard), not O(dataset)).

    ``ids`` and ``info`` (with the sha256 of every pixel in run order) are known up front; ``load(start, stop)``
    returns those covers as ``n 3 s s`` uint8. Built-in tiles come from the packaged photos (bounded in size);
    folder images are read once up front to skip unreadable files and hash them, then re-read per shard and
    checked against that hash, so a file changed mid-run is an error, not a silent mix.
    """

    ids: list[str]
    info: dict
    skipped: list[dict]
    _load: Callable[[int, int], torch.Tensor]

    def load(self, start: int, stop: int) -> torch.Tensor:
        return self._load(start, stop)


def open_image_source(
    source: str,
    *,
    size: int,
    count: int | None = None,
    path: str | Path | None = None,
    split: str = "eval",
    limit: int | None = None,
) -> ImageSource:
    """Like ``load_image_set`` (same ids, order, checks, info and digest) without keeping every image in memory.

    ``limit``: take at most this many of the images ``count`` asks for, fewer if the source holds fewer."""
    if limit is not None:
        if source == "builtin":
            _check_split(split)
            avail = len(_split_tiles(split, int(size))[0])
            count = min(limit, count or avail, max(avail, 1))
        elif count is None or limit < count:
            return _limited_folder(Path(path).expanduser() if path else None, size, count, limit)
    if source != "folder":
        s = load_image_set(source, size=size, count=count, path=path, split=split)
        imgs = s.images
        return ImageSource(s.ids, s.info, s.skipped, lambda a, b: imgs[a:b].clone())
    _check_split(split)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise WmbenchError(f"images.size must be a positive integer, got {size!r}")
    if path is None:
        raise WmbenchError("images.path: source 'folder' needs a path to a folder of images")
    return _folder_source(Path(path).expanduser(), size, count)


def _limited_folder(root: Path | None, size: int, count: int | None, limit: int) -> ImageSource:
    """The first ``limit`` readable images of a folder, or all of them when it holds fewer."""
    if root is None:
        raise WmbenchError("images.path: source 'folder' needs a path to a folder of images")
    try:
        return _folder_source(root, size, limit)
    except WmbenchError as e:
        if "images.count" not in str(e):
            raise
        return _folder_source(root, size, None)


#: decoded covers the folder scan keeps for the run's first ``load`` of them (MB): below it a folder is decoded once,
#: not twice (scan, then shard); above it the rest are read again per shard and checked against their digests
SCAN_KEEP_MB = 256


def _folder_source(root: Path, size: int, count: int | None) -> ImageSource:
    digests: list[str] = []
    total = hashlib.sha256()
    paths: list[Path] = []
    kept: dict[int, torch.Tensor] = {}
    budget = [SCAN_KEEP_MB * 2**20]

    def keep(p: Path, img: torch.Tensor) -> None:
        b = img.contiguous().numpy().tobytes()
        total.update(b)
        digests.append(hashlib.sha256(b).hexdigest())
        if len(b) <= budget[0]:
            budget[0] -= len(b)
            kept[len(paths)] = img
        paths.append(p)

    ids, skipped, n_files = _scan_folder(root, size, count, keep)
    info = _folder_info(root, size, len(ids), n_files, skipped, total.hexdigest())

    def load(a: int, b: int) -> torch.Tensor:
        out = []
        for i, (p, d) in enumerate(zip(paths[a:b], digests[a:b], strict=True), start=a):
            if i in kept:  # decoded by the scan: the very pixels its digest was taken of
                out.append(kept[i])
                continue
            img = _read_one(p, size)
            if isinstance(img, str) or hashlib.sha256(img.contiguous().numpy().tobytes()).hexdigest() != d:
                raise WmbenchError(
                    f"{p}: the image changed or became unreadable during the run; rerun to resume"
                )
            out.append(img)
        return torch.stack(out)

    return ImageSource(ids, info, skipped, load)
