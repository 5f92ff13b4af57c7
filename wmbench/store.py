"""Run folders: a manifest, one parquet part per finished cell, and the merged ``results.parquet``.

Why parts: a cell (method × attack × strength over all images) is written atomically when it finishes, so a run
killed at any moment (Ctrl-C, kill -9) resumes without recomputing finished cells and without duplicate rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

CLEAN = "__clean__"  # attack label of the rows that extract from unwatermarked covers (empirical FPR)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder, then rename: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def atomic_write_parquet(path: Path, df: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".parquet")
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safe_name(s: str) -> str:
    """A label as a file name (characters outside [A-Za-z0-9._-] become '_')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in s)[:80]


def cell_key(method: str, attack: str, strength: float) -> str:
    """File-safe id of a cell: readable prefix + hash of the exact labels and strength."""
    h = hashlib.sha256(json.dumps([method, attack, repr(float(strength))]).encode()).hexdigest()[:12]
    return f"{safe_name(method + '--' + attack)}--{h}"


def example_path(run: Path, method: str, i: int, what: str) -> Path:
    """Where the runner keeps example image i of a method: ``what`` is 'cover', 'wm' or a cell key."""
    return Path(run) / "examples" / safe_name(method) / f"{i}_{what}.png"


class RunStore:
    """The run folder: ``manifest.json``, ``parts/*.parquet``, ``results.parquet``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.parts = self.root / "parts"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def results_path(self) -> Path:
        return self.root / "results.parquet"

    def read_manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError:
            return None

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.manifest_path, manifest)

    def clear(self) -> None:
        """Remove what an earlier run wrote here (``--fresh``); other files are left alone."""
        if self.parts.is_dir():
            for p in self.parts.glob("*.parquet"):
                p.unlink(missing_ok=True)
        for p in (self.results_path, self.manifest_path):
            p.unlink(missing_ok=True)

    def sweep_leftovers(self) -> None:
        """Delete half-written temp files a killed run left behind.

        Only the run that takes the folder calls this: readers (``done``, reports, a test polling a live run) must
        never delete a temp file another process is about to rename into place.
        """
        if self.parts.is_dir():
            for tmp in self.parts.glob(".tmp-*"):
                tmp.unlink(missing_ok=True)

    def done(self) -> set[str]:
        """Keys of the finished cells; read-only, safe while a run is writing."""
        if not self.parts.is_dir():
            return set()
        return {p.stem for p in self.parts.glob("*.parquet") if not p.name.startswith(".")}

    def write_cell(self, key: str, rows: pd.DataFrame) -> None:
        atomic_write_parquet(self.parts / f"{key}.parquet", rows)

    def merge(self, order: list[str] | None = None) -> pd.DataFrame:
        """Concatenate the parts (in ``order`` of cell keys when given) into ``results.parquet``."""
        keys = sorted(self.done())
        if order is not None:
            rank = {k: i for i, k in enumerate(order)}
            keys.sort(key=lambda k: (rank.get(k, len(rank)), k))
        frames = [pd.read_parquet(self.parts / f"{k}.parquet") for k in keys]
        df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        atomic_write_parquet(self.results_path, df)
        return df


def load_results(run: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a run folder's results and manifest (for reports); errors say what is missing."""
    from wmbench.api import WmbenchError

    root = Path(run)
    store = RunStore(root)
    if not root.is_dir():
        raise WmbenchError(f"run folder not found: {root}")
    manifest = store.read_manifest()
    if manifest is None:
        raise WmbenchError(f"{store.manifest_path}: missing or unreadable; is {root} a wmbench run folder?")
    if store.results_path.is_file():
        df = pd.read_parquet(store.results_path)
    elif store.done():
        df = store.merge()
    else:
        raise WmbenchError(f"{root}: no results yet; run `wmbench run` first")
    return df, manifest
