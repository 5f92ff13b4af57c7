"""Run folders: a manifest, one parquet part per finished cell, and the merged ``results.parquet``.

Why parts: a cell (method × attack × strength over all images) is written atomically when it finishes, so a run
killed at any moment (Ctrl-C, kill -9) resumes without recomputing finished cells and without duplicate rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

CLEAN = "__clean__"  # attack label of the rows that extract from unwatermarked covers (empirical FPR)


@contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """A temp file beside ``path`` to write; renamed onto ``path`` (with umask permissions) when the block ends,
    deleted if it raises: readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        yield tmp
        _chmod_umask(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` atomically; ``durable`` also fsyncs it (results, manifests).  A cache whose
    entries carry their own checksum skips the fsync: a file lost to a power cut is recomputed, not trusted."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def atomic_write_parquet(path: Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def safe_name(s: str) -> str:
    """A label as a file name (characters outside [A-Za-z0-9._-] become '_'; never hidden, never '.' or '..')."""
    out = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in s)[:80]
    return "_" + out[1:] if not out or out.startswith(".") else out


def cell_key(method: str, attack: str, strength: float) -> str:
    """File-safe id of a cell: readable prefix + hash of the exact labels and strength."""
    h = hashlib.sha256(json.dumps([method, attack, repr(float(strength))]).encode()).hexdigest()[:12]
    return f"{safe_name(method + '--' + attack)}--{h}"


def example_path(run: Path, method: str, i: int, what: str) -> Path:
    """Where the runner keeps example image i of a method: ``what`` is 'cover', 'wm' or a cell key."""
    return Path(run) / "examples" / safe_name(method) / f"{i}_{what}.png"


def part_key(cell: str, shard: int) -> str:
    """File name (without .parquet) of one cell's rows on one shard of images."""
    return f"{cell}--s{shard:05d}"


PART_META = b"wmbench_part"  # parquet schema metadata key: which suite, cell, shard and images a part holds


class RunStore:
    """The run folder: ``manifest.json``, ``parts/*.parquet`` (+ ``parts/quality/``), ``events.jsonl``,
    ``results.parquet``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.parts = self.root / "parts"
        self.quality = self.parts / "quality"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def results_path(self) -> Path:
        return self.root / "results.parquet"

    @property
    def events_path(self) -> Path:
        return self.root / "events.jsonl"

    def read_manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        try:
            m = json.loads(self.manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return m if isinstance(m, dict) else None

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.manifest_path, manifest)

    def log_event(self, event: dict) -> None:
        """Append one JSON line to ``events.jsonl`` (errors, skips, starts and ends of each attempt)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with self.events_path.open("a") as f:
            f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **event}, default=str) + "\n")

    def clear(self) -> None:
        """Remove what an earlier run wrote here (``--fresh``); other files are left alone."""
        for d in (self.parts, self.quality):
            if d.is_dir():
                for p in d.glob("*.parquet"):
                    p.unlink(missing_ok=True)
        for p in (self.results_path, self.manifest_path, self.events_path):
            p.unlink(missing_ok=True)

    def sweep_leftovers(self) -> None:
        """Delete half-written temp files a killed run left behind.

        Only the run that takes the folder calls this: readers (``done``, reports, a test polling a live run) must
        never delete a temp file another process is about to rename into place.
        """
        for d in (self.parts, self.quality):
            if d.is_dir():
                for tmp in d.glob(".tmp-*"):
                    tmp.unlink(missing_ok=True)

    def done(self) -> set[str]:
        """Keys of the finished parts; read-only, safe while a run is writing."""
        if not self.parts.is_dir():
            return set()
        return {p.stem for p in self.parts.glob("*.parquet") if not p.name.startswith(".")}

    def part_path(self, key: str) -> Path:
        return self.parts / f"{key}.parquet"

    def write_part(self, key: str, rows: pd.DataFrame, meta: dict) -> None:
        """Atomically write one part with ``meta`` (suite hash, cell, shard, image ids digest) in its footer."""
        _write_with_meta(self.part_path(key), rows, meta)

    def part_meta(self, key: str) -> dict | None:
        """The footer metadata of a part, or None when it is unreadable or not a wmbench part."""
        return _read_meta(self.part_path(key))

    def write_quality(self, key: str, df: pd.DataFrame, meta: dict) -> None:
        _write_with_meta(self.quality / f"{key}.parquet", df, meta)

    def read_quality(self, key: str, meta: dict) -> pd.DataFrame | None:
        """Stored quality metrics of one (method, shard), if present and made for the same images and suite."""
        p = self.quality / f"{key}.parquet"
        if _read_meta(p) != meta:  # meta carries "rows": the shard's image count
            return None
        try:
            return pd.read_parquet(p)
        except Exception:
            return None

    def merge(self, keys: list[str]) -> int:
        """Stream the parts ``keys`` (in that order) into ``results.parquet``; one part in memory at a time.

        Columns are the union over parts (first-seen order; attack stats such as ``attack_bpp`` exist only in some
        cells and are null elsewhere).  -> number of rows"""
        import pyarrow as pa
        import pyarrow.parquet as pq

        paths = [self.part_path(k) for k in keys]
        if not paths:
            atomic_write_parquet(self.results_path, pd.DataFrame())
            return 0
        schema = pa.unify_schemas([pq.read_schema(p).remove_metadata() for p in paths])
        n = 0
        with atomic_path(self.results_path) as tmp, pq.ParquetWriter(tmp, schema) as w:
            for p in paths:
                t = pq.read_table(p).replace_schema_metadata(None)
                cols = [
                    t.column(f.name).cast(f.type) if f.name in t.column_names else pa.nulls(len(t), f.type)
                    for f in schema
                ]
                w.write_table(pa.Table.from_arrays(cols, schema=schema))
                n += len(t)
        return n


def _write_with_meta(path: Path, df: pd.DataFrame, meta: dict) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.Table.from_pandas(df, preserve_index=False)
    t = t.replace_schema_metadata({**(t.schema.metadata or {}), PART_META: json.dumps(meta).encode()})
    with atomic_path(path) as tmp:
        pq.write_table(t, tmp)


def _read_meta(path: Path) -> dict | None:
    """The part's footer metadata plus ``rows``, the row count its footer records (a short part shows here)."""
    import pyarrow.parquet as pq

    try:
        md = pq.read_metadata(path)
        raw = (md.schema.to_arrow_schema().metadata or {}).get(PART_META)
        return {**json.loads(raw), "rows": md.num_rows} if raw else None
    except Exception:
        return None


def _chmod_umask(path: str | Path) -> None:
    """mkstemp creates files 0600; a result file should follow the umask like any other file the user writes."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def load_results(run: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a run folder's results and manifest (for reports); errors say what is missing."""
    from wmbench.errors import WmbenchError

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
        df = pd.concat([pd.read_parquet(store.part_path(k)) for k in sorted(store.done())], ignore_index=True)
    else:
        raise WmbenchError(f"{root}: no results yet; run `wmbench run` first")
    return df, manifest
