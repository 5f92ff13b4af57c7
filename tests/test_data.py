"""Image sources: built-in tiles (deterministic, disjoint splits) and folders of every common format and mode."""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

from wmbench.api import WmbenchError
from wmbench.data import FLAT_STD, PHOTOS, SPLITS, _photo_tiles, _split_tiles, load_image_set, tile_counts
from wmbench.imageio import (
    ImageSkipWarning,
    _read_16bit_colour,
    load_image,
    resize_center_crop,
    save_png,
    to_float,
    to_uint8,
)


# ---------------------------------------------------------------------------------------------- builtin
def _photo(tile_id: str) -> str:
    return tile_id.split("@", 1)[0]


def test_builtin_shapes_ids_and_count():
    s = load_image_set("builtin", size=128, count=64)
    assert s.images.shape == (64, 3, 128, 128) and s.images.dtype == torch.uint8
    assert len(s.ids) == 64 and len(set(s.ids)) == 64
    assert s.skipped == []
    # round-robin: a small count already spans every eval photo
    assert {_photo(i) for i in s.ids[: len(SPLITS["eval"])]} == set(SPLITS["eval"])
    assert s.info["source"] == "builtin" and s.info["split"] == "eval" and s.info["count"] == 64
    assert sum(p["tiles"] for p in s.info["photos"].values()) == 64


def test_builtin_deterministic_even_without_cache():
    a = load_image_set("builtin", size=128, count=20)
    b = load_image_set("builtin", size=128, count=20)
    _split_tiles.cache_clear()
    _photo_tiles.cache_clear()
    c = load_image_set("builtin", size=128, count=20)
    assert a.ids == b.ids == c.ids
    assert torch.equal(a.images, b.images) and torch.equal(a.images, c.images)
    assert a.info["sha256"] == c.info["sha256"]
    # a prefix: a smaller count takes the first tiles of the same order
    d = load_image_set("builtin", size=128, count=7)
    assert d.ids == a.ids[:7] and torch.equal(d.images, a.images[:7])


def test_builtin_splits_disjoint_by_photo():
    ev, tr = set(SPLITS["eval"]), set(SPLITS["train"])
    assert not ev & tr
    assert ev | tr <= set(PHOTOS)
    assert 5 <= len(ev) <= 6 and all(PHOTOS[p].kind == "colour" for p in ev)
    e = load_image_set("builtin", size=256, split="eval")
    t = load_image_set("builtin", size=256, split="train")
    assert {_photo(i) for i in e.ids} <= ev and {_photo(i) for i in t.ids} <= tr
    assert not set(e.ids) & set(t.ids)
    assert len({_photo(i) for i in t.ids}) >= 5


def test_builtin_enough_eval_tiles_and_no_flat_tiles():
    assert tile_counts(128)["eval"] >= 64
    s = load_image_set("builtin", size=128)
    assert len(s.ids) == s.info["available"] >= 64
    std = (s.images.float() / 255.0).flatten(1).std(dim=1)
    assert (std >= FLAT_STD - 1e-4).all()


def test_builtin_errors():
    n = tile_counts(256)["eval"]
    with pytest.raises(WmbenchError, match=f"only {n} tiles"):
        load_image_set("builtin", size=256, count=n + 1)
    with pytest.raises(WmbenchError, match="split"):
        load_image_set("builtin", size=128, split="test")
    with pytest.raises(WmbenchError, match="source"):
        load_image_set("imagenet", size=128)
    with pytest.raises(WmbenchError, match="count"):
        load_image_set("builtin", size=128, count=0)


# ---------------------------------------------------------------------------------------------- folder
def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth, textured test picture.  -> h w 3 uint8"""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    a = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin(xx / 5 + yy / 7)], axis=2) * 200
    a = a + rng.uniform(0, 40, (h, w, 3))
    return a.clip(0, 255).astype(np.uint8)


def _exif(orientation: int) -> Image.Exif:
    ex = Image.Exif()
    ex[0x0112] = orientation
    return ex


GOOD = [
    "a_rgb.png",
    "b_gray.png",
    "c_rgba.png",
    "d_palette.png",
    "e_palette_transparent.png",
    "f_gray16.png",
    "g_rgb16.png",
    "h_exif_rotated.jpg",
    "i_photo.webp",
    "j_photo.tif",
    "k_gray16.tiff",
    "l_float.tif",
    "m_photo.BMP",
    "n_cmyk.jpg",
    "o_la.png",
    "sub/p_nested.jpeg",
]
BAD = ["x_random_bytes.png", "y_truncated.jpg", "z_empty.jpg", "z_text.webp"]


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(_rgb(60, 100, 0)).save(d / "a_rgb.png")
    Image.fromarray(_rgb(100, 60, 1)[..., 0]).save(d / "b_gray.png")
    rgba = np.dstack([_rgb(64, 64, 2), np.full((64, 64), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "c_rgba.png")
    Image.fromarray(_rgb(50, 80, 3)).convert("P", palette=Image.Palette.ADAPTIVE).save(d / "d_palette.png")
    p = Image.fromarray(_rgb(40, 40, 4)).convert("P", palette=Image.Palette.ADAPTIVE)
    p.info["transparency"] = 0
    p.save(d / "e_palette_transparent.png", transparency=0)
    grad16 = np.tile(np.linspace(0, 65535, 256).round().astype(np.uint16), (64, 1))
    Image.fromarray(grad16).save(d / "f_gray16.png")
    cv2.imwrite(str(d / "g_rgb16.png"), (_rgb(48, 72, 5).astype(np.uint16) * 257)[..., ::-1].copy())
    Image.fromarray(_rgb(30, 90, 6)).save(d / "h_exif_rotated.jpg", quality=95, exif=_exif(6))
    Image.fromarray(_rgb(70, 50, 7)).save(d / "i_photo.webp", quality=90)
    Image.fromarray(_rgb(64, 96, 8)).save(d / "j_photo.tif")
    Image.fromarray(grad16[:, ::-1].copy()).save(d / "k_gray16.tiff")
    Image.fromarray(np.tile(np.linspace(0, 1, 80, dtype=np.float32), (40, 1))).save(d / "l_float.tif")
    Image.fromarray(_rgb(33, 47, 9)).save(d / "m_photo.BMP")
    Image.fromarray(_rgb(64, 64, 10)).convert("CMYK").save(d / "n_cmyk.jpg", quality=95)
    la = np.dstack([_rgb(50, 50, 11)[..., 0], np.full((50, 50), 255, np.uint8)])
    Image.fromarray(la, "LA").save(d / "o_la.png")
    Image.fromarray(_rgb(20, 30, 12)).save(d / "sub" / "p_nested.jpeg")  # smaller than size: upscaled
    # bad files
    (d / "x_random_bytes.png").write_bytes(np.random.default_rng(0).bytes(3000))
    buf = io.BytesIO()
    Image.fromarray(_rgb(200, 200, 13)).save(buf, format="JPEG", quality=95)
    (d / "y_truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "z_empty.jpg").write_bytes(b"")
    (d / "z_text.webp").write_text("not an image at all\n")
    # ignored: hidden files (e.g. macOS AppleDouble ._x.jpg), other extensions
    (d / "._a_rgb.jpg").write_bytes(b"\x00\x05\x16\x07junk")
    (d / "notes.txt").write_text("hello")
    return d


def test_folder_loads_good_skips_bad(folder: Path):
    with pytest.warns(ImageSkipWarning) as rec:
        s = load_image_set("folder", size=48, path=folder)
    assert s.ids == sorted(GOOD)
    assert s.images.shape == (len(GOOD), 3, 48, 48) and s.images.dtype == torch.uint8
    assert sorted(Path(k["path"]).name for k in s.skipped) == sorted(BAD)
    assert all(k["reason"] for k in s.skipped)
    msgs = [str(w.message) for w in rec if issubclass(w.category, ImageSkipWarning)]
    assert len(msgs) == len(BAD)  # one warning per bad file, naming it
    for name in BAD:
        assert sum(name in m for m in msgs) == 1
    assert s.info["source"] == "folder" and s.info["count"] == len(GOOD) and s.info["skipped"] == len(BAD)
    assert s.info["candidates"] == len(GOOD) + len(BAD)
    # deterministic
    with pytest.warns(ImageSkipWarning):
        s2 = load_image_set("folder", size=48, path=str(folder))
    assert s2.ids == s.ids and torch.equal(s2.images, s.images)


def test_folder_count_takes_first_readable(folder: Path):
    s = load_image_set("folder", size=32, path=folder, count=3)
    assert s.ids == sorted(GOOD)[:3] and s.images.shape == (3, 3, 32, 32)
    with pytest.warns(ImageSkipWarning), pytest.raises(WmbenchError, match="readable"):
        load_image_set("folder", size=32, path=folder, count=len(GOOD) + 1)


def test_folder_errors(tmp_path: Path):
    with pytest.raises(WmbenchError, match="not found.*nope"):
        load_image_set("folder", size=32, path=tmp_path / "nope")
    with pytest.raises(WmbenchError, match="no image files"):
        load_image_set("folder", size=32, path=tmp_path)
    with pytest.raises(WmbenchError, match="path"):
        load_image_set("folder", size=32)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.warns(ImageSkipWarning), pytest.raises(WmbenchError, match="could be read"):
        load_image_set("folder", size=32, path=tmp_path)
    with pytest.raises(WmbenchError, match="not a folder"):
        load_image_set("folder", size=32, path=tmp_path / "bad.png")


# ---------------------------------------------------------------------------------------------- load_image
def test_16bit_gray_scaled_not_clipped(folder: Path):
    x = load_image(folder / "f_gray16.png")
    assert x.shape == (3, 64, 256) and x.dtype == torch.float32
    expect = torch.linspace(0, 65535, 256).round() / 65535.0
    assert torch.allclose(x[0, 10], expect, atol=1e-6)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert (x >= 0.999).float().mean() < 0.01  # not clipped at 255
    t = load_image(folder / "k_gray16.tiff")
    assert torch.allclose(t[0, 0], expect.flip(0), atol=1e-6)
    dark = folder / "dark16.png"
    Image.fromarray(np.full((8, 8), 200, np.uint16)).save(dark)
    # the depth comes from the format, not from the data
    assert torch.allclose(load_image(dark), torch.full((3, 8, 8), 200 / 65535.0))


def test_16bit_colour_full_depth(folder: Path, tmp_path: Path):
    x = load_image(folder / "g_rgb16.png")
    ref = torch.from_numpy(_rgb(48, 72, 5)).permute(2, 0, 1).float() / 255.0
    assert x.shape == (3, 48, 72) and torch.allclose(x, ref, atol=1e-6)
    a16 = np.random.default_rng(1).integers(0, 65536, (9, 11, 3), dtype=np.uint16)  # low bytes matter
    want = torch.from_numpy(a16.astype(np.float32) / 65535.0).permute(2, 0, 1)
    for ext in ("png", "tif"):
        cv2.imwrite(str(tmp_path / f"c16.{ext}"), a16[..., ::-1].copy())
        assert torch.allclose(load_image(tmp_path / f"c16.{ext}"), want, atol=1e-6)
    opaque = np.dstack([a16[..., ::-1], np.full((9, 11), 65535, np.uint16)])
    cv2.imwrite(str(tmp_path / "c16a.png"), opaque)
    assert torch.allclose(load_image(tmp_path / "c16a.png"), want, atol=1e-6)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_16bit_colour_orientation_matches_pillow(tmp_path: Path, orientation: int):
    a = _rgb(12, 20, orientation)
    p16 = tmp_path / "x16.png"
    cv2.imwrite(str(p16), (a.astype(np.uint16) * 257)[..., ::-1].copy())
    got = _read_16bit_colour(p16, orientation)
    im = Image.fromarray(a)
    im.getexif()[0x0112] = orientation
    im.info["exif"] = im.getexif().tobytes()
    want = np.asarray(ImageOps.exif_transpose(im), dtype=np.float32) / 255.0
    assert got is not None and got.shape == want.shape and np.allclose(got, want, atol=1e-6)


def test_exif_orientation_applied(folder: Path):
    x = load_image(folder / "h_exif_rotated.jpg")
    assert x.shape == (3, 90, 30)  # stored 90 wide x 30 tall, orientation 6 = rotate 90° clockwise
    with Image.open(folder / "h_exif_rotated.jpg") as im:
        stored = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
    assert (x - stored.transpose(1, 2).flip(2)).abs().mean() < 0.02  # CW rotation of what is stored


def test_alpha_over_white_and_modes(folder: Path, tmp_path: Path):
    p = tmp_path / "transparent.png"
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent
    rgba[:2, :, 3] = 255  # top half opaque
    Image.fromarray(rgba, "RGBA").save(p)
    x = load_image(p)
    assert torch.allclose(x[:, :2], torch.tensor([1.0, 0, 0])[:, None, None].expand(3, 2, 4))
    assert torch.allclose(x[:, 2:], torch.ones(3, 2, 4))
    half = load_image(folder / "c_rgba.png")  # alpha 128: halfway to white
    src = torch.from_numpy(_rgb(64, 64, 2)).permute(2, 0, 1).float() / 255
    assert torch.allclose(half, src * (128 / 255) + (1 - 128 / 255), atol=1e-5)
    for name in GOOD:
        y = load_image(folder / name)
        assert y.ndim == 3 and y.shape[0] == 3 and y.dtype == torch.float32
        assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    cmyk = load_image(folder / "n_cmyk.jpg")
    assert (cmyk - torch.from_numpy(_rgb(64, 64, 10)).permute(2, 0, 1) / 255).abs().mean() < 0.05
    f = load_image(folder / "l_float.tif")
    assert torch.allclose(f[0, 0], torch.linspace(0, 1, 80), atol=1e-6)


def test_load_image_errors_name_the_file(folder: Path, monkeypatch: pytest.MonkeyPatch):
    for name in BAD:
        with pytest.raises(WmbenchError, match=name):
            load_image(folder / name)
    with pytest.raises(WmbenchError, match="missing.png"):
        load_image(folder / "missing.png")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # another library's global choice
    with pytest.raises(WmbenchError, match="y_truncated.jpg"):
        load_image(folder / "y_truncated.jpg")


def test_resize_center_crop_policy():
    x = torch.zeros(3, 40, 100)
    x[:, :, 30:70] = 1.0  # a centred white band, 40 px wide
    y = resize_center_crop(x, 20)  # shorter side 40 -> 20 (scale 0.5), width 100 -> 50, crop the middle 20
    assert y.shape == (3, 20, 20)
    assert torch.allclose(y[:, :, 5:15], torch.ones(3, 20, 10), atol=1e-3)
    up = resize_center_crop(torch.rand(3, 10, 16), 32)
    assert up.shape == (3, 32, 32) and 0 <= float(up.min()) and float(up.max()) <= 1


# ---------------------------------------------------------------------------------------------- save_png
def test_save_png_lossless_and_atomic(tmp_path: Path):
    u8 = torch.randint(0, 256, (3, 17, 23), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    p = tmp_path / "deep" / "x.png"
    save_png(u8, p)
    assert torch.equal(to_uint8(load_image(p)), u8)
    f = to_float(u8)
    assert f.dtype == torch.float32 and torch.equal(to_uint8(f), u8)
    save_png(f + 0.4 / 255, p)  # overwrite; floats are rounded onto the 8-bit grid
    assert torch.equal(to_uint8(load_image(p)), u8)
    assert sorted(os.listdir(p.parent)) == ["x.png"]  # no temp files left behind
    with pytest.raises(WmbenchError):
        save_png(torch.zeros(2, 4, 4), tmp_path / "bad.png")


def test_to_uint8_numpy_path_equals_torch_rounding() -> None:
    """The float32 CPU fast path rounds exactly as torch does (half to even), clamps, and keeps any shape."""
    from wmbench.imageio import to_uint8

    def ref(x: torch.Tensor) -> torch.Tensor:
        return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)

    k = torch.arange(256, dtype=torch.float32)
    cases = [k / 255, (k + 0.5) / 255, (k - 0.5) / 255, torch.rand(2, 3, 17, 9) * 1.4 - 0.2]
    cases.append(torch.rand(3, 8, 8)[:, ::2, 1:])  # a strided view
    for x in cases:
        assert torch.equal(to_uint8(x), ref(x))
    assert torch.equal(to_uint8(k.double() / 255), ref(k.double() / 255))  # other dtypes: the torch path


@pytest.mark.parametrize("fmt", ["png", "jpg", "bmp", "webp", "tiff"])
def test_exact_size_covers_read_straight_to_bytes(tmp_path: Path, fmt: str) -> None:
    """An 8-bit RGB file already at the cover size skips the float round trip, with the same values; any other
    file (another size, a mode with alpha) still takes it."""
    rng = np.random.default_rng(0)
    p = tmp_path / f"a.{fmt}"
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(p)
    fast = load_image(p, exact_u8=40)
    assert fast.dtype == torch.uint8 and fast.shape == (3, 40, 40)
    assert torch.equal(fast, to_uint8(resize_center_crop(load_image(p), 40)))
    assert load_image(p, exact_u8=32).dtype == torch.float32  # not the cover size: the float path
    q = tmp_path / "rgba.png"
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8)).save(q)
    assert load_image(q, exact_u8=40).dtype == torch.float32  # alpha is composited over white in float
