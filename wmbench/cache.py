"""The watermark cache under ``$WMBENCH_HOME`` (default: the user cache dir), never under the CWD.

Watermarked images are stored as lossless 8-bit PNG keyed by the method's fingerprint (name + params + weights)
and a hash of the cover's pixels and the message, so re-runs and other suites reuse them exactly.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wmbench.store import atomic_write_bytes


def home() -> Path:
    env = os.environ.get("WMBENCH_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("wmbench"))


def wm_key(cover: torch.Tensor, msg: torch.Tensor) -> str:
    """cover: 3 h w uint8; msg: k {0,1} -> hex key."""
    h = hashlib.sha256(cover.contiguous().numpy().tobytes())
    h.update(bytes(str(tuple(cover.shape)), "ascii"))
    h.update("".join(str(int(b)) for b in msg.tolist()).encode())
    return h.hexdigest()[:32]


class WatermarkCache:
    """PNG files + a JSON sidecar with the embed time and the pixels' sha256 (checked on every read)."""

    def __init__(self, fingerprint: str, root: Path | None = None) -> None:
        self.dir = (root or home() / "cache" / "wm") / fingerprint
        self._pending: list[Future[None]] = []

    def get(self, key: str) -> tuple[torch.Tensor, float] | None:
        png, meta = self.dir / f"{key}.png", self.dir / f"{key}.json"
        if not (png.is_file() and meta.is_file()):
            return None
        try:
            with Image.open(png) as im:
                if im.mode != "RGB":
                    return None  # written as RGB: another mode means the file was replaced
                arr = np.asarray(im, dtype=np.uint8)
            info = json.loads(meta.read_text())
            t = float(info["t_embed"])
            if info.get("sha256") != hashlib.sha256(arr.tobytes()).hexdigest():
                return None  # an altered or foreign image (or an entry from before hashes) is recomputed
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None  # a damaged entry is recomputed
        return torch.from_numpy(arr.copy()).permute(2, 0, 1), t

    def put(self, key: str, img: torch.Tensor, t_embed: float) -> None:
        """img: 3 h w uint8.  No fsync: every read checks the pixels' sha256, so a torn entry is recomputed."""
        arr = img.permute(1, 2, 0).contiguous().numpy()
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
        info = {"t_embed": t_embed, "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}
        atomic_write_bytes(self.dir / f"{key}.png", buf.getvalue(), durable=False)
        atomic_write_bytes(self.dir / f"{key}.json", json.dumps(info).encode(), durable=False)

    def put_later(self, key: str, img: torch.Tensor, t_embed: float) -> None:
        """``put`` in the background writer, so PNG encoding (which releases the GIL) overlaps the cells that
        follow; ``flush`` waits for it.  img: 3 h w uint8 (not modified afterwards by the caller)."""
        self._pending.append(_writer().submit(self.put, key, img, t_embed))

    def flush(self) -> list[str]:
        """Wait for the background writes; -> one message per entry that could not be written (the run goes on:
        a cache entry is an optimisation, never a result)."""
        errors = []
        for f in self._pending:
            exc = f.exception()
            if exc is not None:
                errors.append(f"watermark cache {self.dir}: {type(exc).__name__}: {exc}")
        self._pending = []
        return errors


@lru_cache(maxsize=1)
def _writer() -> ThreadPoolExecutor:
    """One writer thread per process: cache entries of one unit are written while its cells run."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="wmbench-cache")


# a forked child inherits the executor but not its thread, and would wait on it forever: it builds its own
os.register_at_fork(after_in_child=_writer.cache_clear)
