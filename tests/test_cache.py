"""The watermark cache: entries written in the background round-trip exactly; a failed write is reported by
``flush`` (the run goes on), never raised into the cells."""

from __future__ import annotations

from pathlib import Path

import torch

from wmbench.cache import WatermarkCache, wm_key


def _img(seed: int) -> torch.Tensor:
    return torch.randint(
        0, 256, (3, 16, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_put_later_then_flush_round_trips(tmp_path: Path) -> None:
    cache = WatermarkCache("fp", root=tmp_path)
    imgs = {wm_key(_img(i), torch.ones(8)): _img(100 + i) for i in range(5)}
    for i, (k, img) in enumerate(imgs.items()):
        cache.put_later(k, img, 0.5 + i)
    assert cache.flush() == []
    for i, (k, img) in enumerate(imgs.items()):
        got = cache.get(k)
        assert got is not None and torch.equal(got[0], img) and got[1] == 0.5 + i
    assert not list(cache.dir.glob(".tmp-*"))  # no temp files left behind


def test_a_failed_background_write_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "fp").write_text("a file where the cache folder should be")
    cache = WatermarkCache("fp", root=tmp_path)
    cache.put_later("k", _img(0), 1.0)  # does not raise here
    errors = cache.flush()
    assert len(errors) == 1 and str(cache.dir) in errors[0]
    assert cache.flush() == []  # reported once
    assert cache.get("k") is None


def test_a_torn_entry_is_recomputed_not_trusted(tmp_path: Path) -> None:
    """Entries are written without fsync; the sha256 on every read is what protects them."""
    cache = WatermarkCache("fp", root=tmp_path)
    cache.put("k", _img(1), 1.0)
    png = cache.dir / "k.png"
    png.write_bytes(png.read_bytes()[: png.stat().st_size // 2])
    assert cache.get("k") is None


def test_a_forked_child_writes_with_its_own_thread(tmp_path: Path) -> None:
    """The writer thread is not inherited by fork(); the child must not wait on the parent's."""
    import multiprocessing as mp

    WatermarkCache("fp", root=tmp_path).put_later("warm", _img(0), 1.0)  # the parent's writer exists
    ctx = mp.get_context("fork")
    p = ctx.Process(target=_child_put, args=(tmp_path,))
    p.start()
    p.join(60)
    assert p.exitcode == 0
    assert WatermarkCache("fp", root=tmp_path).get("child") is not None


def _child_put(root: Path) -> None:
    c = WatermarkCache("fp", root=root)
    c.put_later("child", _img(2), 1.0)
    assert c.flush() == []
