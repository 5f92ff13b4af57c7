"""The driver of a run: plan units (method × shard), hand them to an executor, write what comes back, merge.

Data flows one way: suite → plan of units (pure data, ``wmbench.work``) → executor (``local`` in this process, or
``ray``) → worker sessions (``wmbench.session``: embed a shard, attack, extract, score) → results → this driver,
the only writer of the run folder: one atomic parquet part per (method, attack, strength, shard), examples, an
events log, then ``results.parquet`` streamed from the parts in a fixed order.

Determinism: messages and every random draw derive from (seed, method, attack, strength, image id), so batch
size, shard size, executor and worker count never change a value, and a resume may use other execution options.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from wmbench import __version__
from wmbench.api import WmbenchError
from wmbench.checkpoints import shipped_weights
from wmbench.rng import derive_seed  # noqa: F401  (re-exported: older callers import it from here)
from wmbench.session import message_for  # noqa: F401  (re-exported)
from wmbench.store import RunStore, cell_key, example_path, part_key
from wmbench.suite import Plan, Suite, expand, suite_hash
from wmbench.work import CellSpec, MethodRef, Shard, Unit, UnitResult, cells_of, shards_of

DEFAULT_SHARD = 256
EXECUTORS = ("local", "ray")


def resolve_device(spec: str | None) -> torch.device:
    """``auto`` picks cuda > mps > cpu; anything else is passed to torch (errors name the value)."""
    if spec in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError as e:
        raise WmbenchError(f"--device {spec!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise WmbenchError(
            f"--device {spec!r}: CUDA is not available on this machine; use --device cpu or auto"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise WmbenchError(f"--device {spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise WmbenchError(f"--device {spec!r}: unsupported device type; use auto, cpu, cuda, cuda:N or mps")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise WmbenchError(
            f"--device {spec!r}: MPS is not available on this machine; use --device cpu or auto"
        )
    return dev


@dataclass
class RunOptions:
    out: Path | None = None
    fresh: bool = False
    device: str | None = None
    batch_size: int | None = None
    shard_size: int | None = None
    executor: str = "local"
    workers: int = 1
    address: str | None = None
    progress: bool = True
    n_examples: int = 2  # images per cell saved as PNG under examples/ for the report's image grids


@dataclass
class RunResult:
    out: Path
    rows: pd.DataFrame
    manifest: dict
    errors: list[dict] = field(default_factory=list)


def _git_sha() -> str | None:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "wmbench": __version__}
    for pkg in (
        "torch",
        "kornia",
        "torchmetrics",
        "lpips",
        "invisible-watermark",
        "onnxruntime",
        "numpy",
        "pillow",
        "ray",
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _ids_sha(ids: tuple[str, ...] | list[str]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:16]


class FolderLock:
    """An exclusive lock on the run folder for the length of a run: a second writer is refused, not interleaved."""

    def __init__(self, root: Path) -> None:
        self.path = root / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> FolderLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise WmbenchError(
                f"--out {self.path.parent}: cannot write there ({e.strerror}); choose a writable folder"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WmbenchError(
                f"{self.path.parent}: another wmbench run is writing to this folder; wait for it to finish "
                "(or stop it), or choose another folder with --out"
            ) from None
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


class Runner:
    """Runs one expanded suite into a run folder; see the module docstring."""

    def __init__(self, suite: Suite, opts: RunOptions, console: Console | None = None) -> None:
        if opts.executor not in EXECUTORS:
            raise WmbenchError(f"--executor {opts.executor!r}: use one of {', '.join(EXECUTORS)}")
        self.suite = suite
        self.opts = opts
        self.console = console or Console(stderr=True)
        self.plan: Plan = expand(suite)
        self.device = resolve_device(opts.device or suite.device)
        self.batch = opts.batch_size or suite.batch_size
        if self.batch < 1:
            raise WmbenchError(f"--batch-size must be >= 1, got {self.batch}")
        self.out = Path(opts.out) if opts.out else Path("results") / suite.name
        if str(opts.out) == "":
            raise WmbenchError("--out: empty path; give a folder for the run")
        self.store = RunStore(self.out)
        self.hash = suite_hash(suite)
        self._shipped = shipped_weights()  # checked against a resumed folder's manifest, then recorded in it
        self.timings: dict[str, float] = {}
        self.errors: list[dict] = []
        self.skipped: dict[tuple[str, str, float | None], str] = {}
        self._skip_said: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ folder
    def _prepare_folder(self) -> dict:
        old = self.store.read_manifest()
        if self.opts.fresh:
            self.store.clear()
            old = None
        elif old is not None and old.get("suite_hash") != self.hash:
            raise WmbenchError(
                f"{self.out} holds results of a different suite configuration (hash {old.get('suite_hash')} ≠ "
                f"{self.hash}). Rerun with --fresh to start over there, or choose another folder with --out."
            )
        elif old is not None and (changed := _changed_weights(old.get("shipped_weights"), self._shipped)):
            raise WmbenchError(
                f"{self.out} was run with other shipped weights: {', '.join(changed)} changed since (a newer "
                "wmbench?), so resuming would mix two models' results in one table. Rerun with --fresh to start "
                "over there, or choose another folder with --out."
            )
        elif old is None and self.store.done():
            raise WmbenchError(
                f"{self.out} holds result parts but no readable manifest.json, so they cannot be matched to this "
                "suite; rerun with --fresh to start over there, or choose another folder with --out."
            )
        self.store.sweep_leftovers()
        return old or {}

    def _shard_size(self, old: dict) -> int:
        want = next(
            (v for v in (self.opts.shard_size, self.suite.shard_size) if v is not None), DEFAULT_SHARD
        )
        if want < 1:
            raise WmbenchError(f"--shard-size must be >= 1, got {want}")
        have = old.get("shard_size")
        if have and have != want and self.store.done():
            self.console.print(
                f"[yellow]resuming with this folder's shard size {have} (parts are per shard); values do not depend "
                f"on it, so the asked {want} changes nothing but memory",
                highlight=False,
            )
            return int(have)
        return int(want)

    # ------------------------------------------------------------------ planning
    def _part_meta(self, cell: CellSpec, shard: Shard) -> dict:
        """What a part's footer must say (``rows`` is read from the file itself) to count as done."""
        ids = _ids_sha(shard.ids)
        return {"suite_hash": self.hash, "cell": cell.cell, "shard": shard.index, "ids": ids, "rows": shard.n}

    def _quality_meta(self, method: str, shard: Shard) -> dict:
        ids = _ids_sha(shard.ids)
        return {"suite_hash": self.hash, "method": method, "shard": shard.index, "ids": ids, "rows": shard.n}

    def _plan_units(self, shards: list[Shard]) -> tuple[list[Unit], list[str], int]:
        """Units still to run, every part key in merge order, and how many parts are already done."""
        done = self.store.done()
        units: list[Unit] = []
        order: list[str] = []
        n_done = 0
        for mp in self.plan.methods:
            ref = MethodRef(mp.label, mp.name, dict(mp.params))
            cells = cells_of(self.plan, mp.label)
            todo_by_shard: dict[int, list[CellSpec]] = {}
            for c in cells:
                for sh in shards:
                    key = part_key(c.cell, sh.index)
                    order.append(key)
                    if key in done and self.store.part_meta(key) == self._part_meta(c, sh):
                        n_done += 1
                    else:
                        todo_by_shard.setdefault(sh.index, []).append(c)
            for sh in shards:
                todo = todo_by_shard.get(sh.index)
                if todo:
                    qkey = part_key(cell_key(mp.label, "__quality__", 0.0), sh.index)
                    q = self.store.read_quality(qkey, self._quality_meta(mp.label, sh))
                    slots = [g for g in range(sh.start, sh.stop) if g < self.opts.n_examples]
                    units.append(Unit(ref, sh, todo, q, slots))
        return units, order, n_done

    # ------------------------------------------------------------------ run
    def run(self) -> RunResult:
        if self.out.exists() and not self.out.is_dir():
            raise WmbenchError(f"--out {self.out}: exists and is not a folder; choose a folder path")
        with FolderLock(self.out):
            return self._run()

    def _run(self) -> RunResult:
        t_start = time.perf_counter()
        old = self._prepare_folder()
        shard_size = self._shard_size(old)
        from wmbench.data import open_image_source

        t0 = time.perf_counter()
        im = self.suite.images
        source = open_image_source(
            im.source, size=im.size, count=im.count, path=im.path, split=im.split, limit=im.limit
        )
        self.timings["load_images"] = time.perf_counter() - t0
        shards = shards_of(source.ids, shard_size)
        units, order, n_done = self._plan_units(shards)
        attempt = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "executor": self.opts.executor,
            "workers": self.opts.workers if self.opts.executor == "ray" else 1,
            "device": str(self.device),
            "batch_size": self.batch,
            "shard_size": shard_size,
            "parts_before": n_done,
            "host": platform.node(),
        }
        manifest = self._manifest(old, source, shard_size)
        manifest["attempts"] = [*old.get("attempts", []), attempt]
        self.store.write_manifest({**manifest, "status": "running"})
        self.store.log_event({"event": "start", **attempt, "parts_total": len(order)})
        if n_done:
            self.console.print(f"resuming: {n_done} of {len(order)} parts already done", highlight=False)
        status = "failed"  # until the units ran (an exception below leaves it so, with what finished merged)
        try:
            self._execute(units, source, shards)
            status = "finished"
        except KeyboardInterrupt:
            status = "interrupted"
            self.console.print(f"[yellow]interrupted: finished parts are kept in {self.out}; rerun to resume")
        finally:
            t0 = time.perf_counter()
            done = self.store.done()
            n_rows = self.store.merge([k for k in order if k in done])
            self.timings["merge"] = time.perf_counter() - t0
            self._finish(manifest, attempt, status, t_start, n_rows)
        if status == "interrupted":
            raise KeyboardInterrupt
        rows = pd.read_parquet(self.store.results_path)
        return RunResult(self.out, rows, manifest, self.errors)

    def _manifest(self, old: dict, source: Any, shard_size: int) -> dict:
        first = {k: old[k] for k in ("started",) if k in old}
        return {
            "wmbench_version": __version__,
            "suite_name": self.suite.name,
            "suite_hash": self.hash,
            "suite": self.suite.model_dump(mode="json"),
            "seed": self.suite.seed,
            "target_fpr": self.suite.target_fpr,
            "device": str(self.device),
            "batch_size": self.batch,
            "shard_size": shard_size,
            "executor": self.opts.executor,
            "versions": _versions(),
            "git_sha": _git_sha(),
            "shipped_weights": self._shipped,
            "host": platform.node(),
            "torch_threads": torch.get_num_threads(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **first,
            "images": {**source.info, "n": len(source.ids), "ids": source.ids},
            "skipped_files": source.skipped,
        }

    def _finish(self, manifest: dict, attempt: dict, status: str, t_start: float, n_rows: int) -> None:
        wall = round(time.perf_counter() - t_start, 3)
        attempt.update(status=status, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), wall_s=wall)
        attempt["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        total: dict[str, float] = {}
        for a in manifest["attempts"]:
            for k, v in a.get("timings", {}).items():
                total[k] = round(total.get(k, 0.0) + v, 4)
        manifest.update(
            status=status,
            finished=attempt["finished"],
            timings=total,
            wall_s=round(sum(a.get("wall_s", 0.0) for a in manifest["attempts"]), 3),
            errors=self.errors,
            skipped_cells=[
                {"method": m, "attack": a, "strength": s, "reason": r}
                for (m, a, s), r in self.skipped.items()
            ],
            n_rows=n_rows,
        )
        self.store.write_manifest(manifest)
        self.store.log_event({"event": "end", "status": status, "wall_s": wall, "rows": n_rows})

    # ------------------------------------------------------------------ dispatch
    def _executor(self) -> Any:
        from wmbench.executors import LocalExecutor, RayExecutor

        if self.opts.executor == "ray":
            return RayExecutor(
                self.suite,
                self.opts.device or self.suite.device,
                self.batch,
                self.opts.workers,
                self.opts.address,
            )
        return LocalExecutor(self.suite, self.device, self.batch)

    def _execute(self, units: list[Unit], source: Any, shards: list[Shard]) -> None:
        if self.opts.executor == "ray":
            units = self._preflight(units)
        total = sum(u.images_of_work for u in units)
        if not units:
            return
        ex = self._executor()
        try:
            with self._progress() as prog:
                task = prog.add_task(f"{len(units)} units on {ex.describe}", total=total)
                for res in ex.run(units, lambda sh: source.load(sh.start, sh.stop)):
                    self._write(res)
                    prog.update(task, advance=res.unit.images_of_work)
        finally:
            ex.close()

    def _preflight(self, units: list[Unit]) -> list[Unit]:
        """Before dispatch to other nodes: decide on the driver which methods and attacks can run (weights and
        models present), so a skip never depends on the node a unit lands on."""
        from wmbench.preflight import probe_plan

        av = probe_plan(self.plan)
        bad_methods, bad_attacks = av.methods, av.attacks
        kept = []
        for u in units:
            if u.method.label in bad_methods:
                self._skip(u.method.label, "*", None, bad_methods[u.method.label])
                continue
            for c in u.cells:
                if c.attack_index in bad_attacks:
                    self._skip(u.method.label, c.attack_label, c.strength, bad_attacks[c.attack_index])
            u.cells = [c for c in u.cells if c.attack_index not in bad_attacks]
            if u.cells:
                kept.append(u)
        return kept

    def _write(self, res: UnitResult) -> None:
        """Store one unit's results: parts, stored quality, examples, skips and errors."""
        u, label = res.unit, res.unit.method.label
        for k, v in res.timings.items():
            self.timings[k] = self.timings.get(k, 0.0) + v
        if res.skip is not None:
            self._skip(label, "*", None, res.skip)
            return
        if res.error is not None:
            self._error(res.error, u.shard)
            return
        if res.quality is not None:
            qkey = part_key(cell_key(label, "__quality__", 0.0), u.shard.index)
            self.store.write_quality(qkey, res.quality, self._quality_meta(label, u.shard))
        from wmbench.imageio import save_png

        for name, img in res.examples:
            g, what = name.split("_", 1)
            save_png(img, example_path(self.out, label, int(g), what))
        for c in res.cells:
            if c.rows is not None:
                self.store.write_part(u.key(c.cell), c.rows, self._part_meta(c.cell, u.shard))
            elif c.skip is not None:
                self._skip(label, c.cell.attack_label, c.cell.strength, c.skip)
            elif c.error is not None:
                self._error(c.error, u.shard)

    def _error(self, rec: dict, shard: Shard) -> None:
        rec = {**rec, "shard": shard.index}
        self.errors.append(rec)
        self.store.log_event({"event": "error", **rec})
        where = rec["method"] + (f" × {rec['attack']} {rec['strength']:g}" if rec.get("attack") else "")
        self.console.print(
            f"[red]error in {rec['stage']} ({where}, shard {shard.index}): {rec['error']} — recorded in the "
            "manifest; continuing",
            highlight=False,
        )

    def _skip(self, method: str, attack: str, strength: float | None, why: str) -> None:
        key = (method, attack, strength)
        if key in self.skipped:
            return
        self.skipped[key] = why
        self.store.log_event(
            {"event": "skip", "method": method, "attack": attack, "strength": strength, "reason": why}
        )
        if (
            attack,
            why,
        ) not in self._skip_said:  # one line per reason and attack; the manifest keeps every cell
            self._skip_said.add((attack, why))
            self.console.print(
                f"[yellow]skipped {method} × {'every cell' if attack == '*' else attack}: {why}",
                highlight=False,
            )

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description:<40}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("images"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.opts.progress,
            transient=False,
            refresh_per_second=2,  # rich's default 10 Hz rebuilt the bars' table ~200 times in a 20 s run: ~9 % of it
        )


def _changed_weights(old: object, now: dict[str, str]) -> list[str]:
    """Shipped models whose recorded hash differs from the installed one (models added or removed since do not
    count: a suite cannot have used a model that was not there)."""
    if not isinstance(old, dict):
        return []  # a run from before wmbench recorded them
    return sorted(k for k, v in old.items() if k in now and now[k] != v)


def finite_mean(x: pd.Series) -> float:
    v = x[np.isfinite(x)]
    return float(v.mean()) if len(v) else math.nan
