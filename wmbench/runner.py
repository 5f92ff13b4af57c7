"""The pipeline: images -> embed (cached, 8-bit) -> attack × strength (batched) -> extract -> metrics -> store.

Determinism: messages and every random attack draw from generators seeded by hashes of (seed, labels, strength,
batch index), so the same suite and seed give identical rows; the device and the order cells run in do not enter.
"""

from __future__ import annotations

import hashlib
import math
import platform
import subprocess
import time
import traceback
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
from wmbench.api import Method, SkipCell, WmbenchError, quantize_8bit
from wmbench.cache import WatermarkCache, wm_key
from wmbench.store import CLEAN, RunStore, cell_key, example_path
from wmbench.suite import AttackPlan, MethodPlan, Plan, Suite, expand, suite_hash


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
    return dev


def derive_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & ((1 << 63) - 1)


def message_for(seed: int, image_id: str, nbits: int) -> torch.Tensor:
    """Uniform random bits per image from the suite seed.  -> k float {0,1}"""
    g = torch.Generator().manual_seed(derive_seed("msg", seed, image_id, nbits))
    return torch.randint(0, 2, (nbits,), generator=g).float()


@dataclass
class RunOptions:
    out: Path | None = None
    fresh: bool = False
    device: str | None = None
    batch_size: int | None = None
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
    ):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


class Runner:
    """Runs one expanded suite into a run folder; see module docstring."""

    def __init__(self, suite: Suite, opts: RunOptions, console: Console | None = None) -> None:
        from wmbench import metrics as M

        self.M = M
        self.suite = suite
        self.opts = opts
        self.console = console or Console(stderr=True)
        self.plan: Plan = expand(suite)
        self.device = resolve_device(opts.device or suite.device)
        self.batch = opts.batch_size or suite.batch_size
        self.out = Path(opts.out) if opts.out else Path("results") / suite.name
        self.store = RunStore(self.out)
        self.image_metrics = [m for m in suite.metrics if m in M.IMAGE_METRICS]
        self.timings: dict[str, float] = {}
        self.errors: list[dict] = []
        self.skipped: list[dict] = []
        self._skip_said: set[str] = set()

    # ------------------------------------------------------------------ bookkeeping
    def _tick(self, key: str, dt: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + dt

    def _prepare_folder(self) -> dict:
        h = suite_hash(self.suite)
        old = self.store.read_manifest()
        if self.opts.fresh:
            self.store.clear()
        elif old is not None and old.get("suite_hash") != h:
            raise WmbenchError(
                f"{self.out} holds results of a different suite configuration (hash {old.get('suite_hash')} ≠ {h}). "
                "Rerun with --fresh to start over there, or choose another folder with --out."
            )
        self.out.mkdir(parents=True, exist_ok=True)
        self.store.sweep_leftovers()
        prev_done = len(self.store.done())
        return {
            "wmbench_version": __version__,
            "suite_name": self.suite.name,
            "suite_hash": h,
            "suite": self.suite.model_dump(mode="json"),
            "seed": self.suite.seed,
            "target_fpr": self.suite.target_fpr,
            "device": str(self.device),
            "batch_size": self.batch,
            "versions": _versions(),
            "git_sha": _git_sha(),
            "host": platform.node(),
            "torch_threads": torch.get_num_threads(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resumed_cells": prev_done,
        }

    # ------------------------------------------------------------------ pipeline
    def run(self) -> RunResult:
        t_start = time.perf_counter()
        manifest = self._prepare_folder()
        self.store.write_manifest({**manifest, "status": "running"})
        from wmbench.data import load_image_set

        t0 = time.perf_counter()
        im = self.suite.images
        images = load_image_set(im.source, size=im.size, count=im.count, path=im.path, split=im.split)
        self._tick("load_images", time.perf_counter() - t0)
        manifest["images"] = {**images.info, "n": len(images.ids), "ids": images.ids}
        manifest["skipped_files"] = images.skipped
        if not images.ids:
            raise WmbenchError("no images to run on (all were skipped); see the warnings above")

        order: list[str] = []
        n = len(images.ids)
        per_method = n * (1 + 1 + self.plan.n_cells_per_method)  # embed + clean + cells
        status = "finished"
        try:
            with self._progress() as prog:
                task = prog.add_task("total", total=per_method * len(self.plan.methods))
                for mp in self.plan.methods:
                    order += self._run_method(mp, images, prog, task)
        except KeyboardInterrupt:
            status = "interrupted"
            self.console.print(f"[yellow]interrupted: finished cells are kept in {self.out}; rerun to resume")
        finally:
            t0 = time.perf_counter()
            rows = self.store.merge(order)
            self._tick("merge", time.perf_counter() - t0)
            manifest.update(
                status=status,
                finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                timings={k: round(v, 4) for k, v in self.timings.items()},
                wall_s=round(time.perf_counter() - t_start, 3),
                errors=self.errors,
                skipped_cells=self.skipped,
                n_rows=len(rows),
            )
            self.store.write_manifest(manifest)
        if status == "interrupted":
            raise KeyboardInterrupt
        return RunResult(self.out, rows, manifest, self.errors)

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description:<40}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.opts.progress,
            transient=False,
        )

    def _run_method(self, mp: MethodPlan, images: Any, prog: Progress, task: Any) -> list[str]:
        n = len(images.ids)
        keys = [cell_key(mp.label, CLEAN, 0.0)] + [
            cell_key(mp.label, ap.label, s) for ap in self.plan.attacks for s in ap.strengths
        ]
        done = self.store.done()
        todo = [k for k in keys if k not in done]
        prog.update(task, advance=(len(keys) - len(todo)) * n + (n if not todo else 0))
        if not todo:
            return keys
        prog.update(task, description=f"{mp.label}: setup")
        try:
            t0 = time.perf_counter()
            method = mp.build()
            method.setup(self.device)
            self._tick(f"setup/{mp.label}", time.perf_counter() - t0)
        except SkipCell as e:
            self._skip(mp.label, "*", None, str(e))
            prog.update(task, advance=len(todo) * n + n)
            return keys
        except Exception as e:  # a broken method must not lose the other methods' results
            self._error(mp.label, "setup", None, None, e)
            prog.update(task, advance=len(todo) * n + n)
            return keys

        nb = method.nbits
        msgs = torch.stack([message_for(self.suite.seed, i, nb) for i in images.ids])  # n k
        prog.update(task, description=f"{mp.label}: embed")
        try:
            wm, t_embed = self._embed_all(method, images.images, msgs, prog, task)
        except Exception as e:
            self._error(mp.label, "embed", None, None, e)
            prog.update(task, advance=len(todo) * n)
            return keys
        self._save_examples(mp.label, "cover", images.images)
        self._save_examples(mp.label, "wm", wm)
        t0 = time.perf_counter()
        quality = self._quality(images.images, wm)
        self._tick("metrics/quality", time.perf_counter() - t0)
        ctx = dict(method=method, mp=mp, images=images, msgs=msgs, wm=wm, t_embed=t_embed, quality=quality)

        if keys[0] in todo:
            prog.update(task, description=f"{mp.label}: clean covers")
            self._run_cell(ctx, None, 0.0, None, keys[0], prog, task)
        i = 1
        for ap in self.plan.attacks:
            for s, rel in zip(ap.strengths, ap.relative, strict=True):
                if keys[i] in todo:
                    prog.update(task, description=f"{mp.label}: {ap.label} {s:g}")
                    self._run_cell(ctx, ap, s, rel, keys[i], prog, task)
                i += 1
        del method
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return keys

    def _embed_all(
        self, method: Method, covers: torch.Tensor, msgs: torch.Tensor, prog: Progress, task: Any
    ) -> tuple[torch.Tensor, np.ndarray]:
        """covers: n 3 s s uint8 -> watermarked n 3 s s uint8 (8-bit quantised), per-image embed seconds."""
        cache = WatermarkCache(method.fingerprint())
        n = covers.shape[0]
        out = torch.empty_like(covers)
        times = np.zeros(n)
        keys = [wm_key(covers[i], msgs[i]) for i in range(n)]
        missing = []
        for i, k in enumerate(keys):
            hit = cache.get(k)
            if hit is None or hit[0].shape != covers[i].shape:
                missing.append(i)
            else:
                out[i], times[i] = hit
        prog.update(task, advance=n - len(missing))
        for j in range(0, len(missing), self.batch):
            idx = missing[j : j + self.batch]
            x = covers[idx].to(self.device).float() / 255.0
            m = msgs[idx].to(self.device)
            t0 = time.perf_counter()
            with torch.no_grad():
                y = method.embed(x, m)
            _sync(self.device)
            dt = time.perf_counter() - t0
            self._tick("embed", dt)
            if y.shape != x.shape:
                raise WmbenchError(
                    f"method {method.name!r}: embed returned shape {tuple(y.shape)} for {tuple(x.shape)}"
                )
            y8 = (quantize_8bit(y) * 255.0).round().to(torch.uint8).cpu()
            for r, i in enumerate(idx):
                out[i], times[i] = y8[r], dt / len(idx)
                cache.put(keys[i], y8[r], dt / len(idx))
            prog.update(task, advance=len(idx))
        return out, times

    def _save_examples(self, method: str, what: str, imgs: torch.Tensor) -> None:
        """imgs: n 3 s s uint8; the first few go to examples/<method>/<i>_<what>.png (for report grids)."""
        from wmbench.imageio import save_png

        for i in range(min(self.opts.n_examples, imgs.shape[0])):
            save_png(imgs[i], example_path(self.out, method, i, what))

    def _quality(self, covers: torch.Tensor, wm: torch.Tensor) -> dict[str, np.ndarray]:
        """Image-quality metrics of the watermarked images against their covers, per image."""
        out: dict[str, list[torch.Tensor]] = {m: [] for m in self.image_metrics}
        for j in range(0, covers.shape[0], self.batch):
            c = covers[j : j + self.batch].to(self.device).float() / 255.0
            w = wm[j : j + self.batch].to(self.device).float() / 255.0
            with torch.no_grad():
                for m in self.image_metrics:
                    out[m].append(self.M.IMAGE_METRICS[m].fn(c, w).detach().double().cpu())
        return {m: torch.cat(v).numpy() for m, v in out.items()}

    def _run_cell(
        self,
        ctx: dict,
        ap: AttackPlan | None,
        strength: float,
        rel: float | None,
        key: str,
        prog: Progress,
        task: Any,
    ) -> None:
        """One cell: every image through one attack at one strength (``ap=None``: the clean covers)."""
        mp: MethodPlan = ctx["mp"]
        method: Method = ctx["method"]
        images, msgs, wm = ctx["images"], ctx["msgs"], ctx["wm"]
        n, k = msgs.shape
        label = ap.label if ap else CLEAN
        logits_all, psnr_att, t_att, t_ext = [], [], np.zeros(n), np.zeros(n)
        stats: dict[str, list[torch.Tensor]] = {}  # per-image attack stats (``attack.last_stats``, e.g. bpp)
        try:
            for b, j in enumerate(range(0, n, self.batch)):
                sl = slice(j, j + self.batch)
                cover = images.images[sl].to(self.device).float() / 255.0
                x = cover if ap is None else wm[sl].to(self.device).float() / 255.0
                t0 = time.perf_counter()
                if ap is not None:
                    gen = torch.Generator().manual_seed(
                        derive_seed(self.suite.seed, mp.label, ap.label, strength, b, self.batch)
                    )
                    atk = ap.attack
                    # adversarial attacks backpropagate through the method; everything else runs without autograd
                    grad_ctx = torch.enable_grad() if atk.needs_method else torch.no_grad()
                    if hasattr(atk, "last_stats"):
                        atk.last_stats = {}
                    with grad_ctx:
                        y = atk.apply(x, strength, gen=gen, method=method, cover=cover)
                    y = quantize_8bit(y.detach())
                    for sk, sv in (getattr(atk, "last_stats", None) or {}).items():
                        if isinstance(sv, torch.Tensor) and sv.shape == (x.shape[0],):
                            stats.setdefault(sk, []).append(sv.detach().double().cpu())
                    _sync(self.device)
                else:
                    y = x
                t1 = time.perf_counter()
                with torch.no_grad():
                    logits = method.extract(y).float()
                _sync(self.device)
                t2 = time.perf_counter()
                nb = y.shape[0]
                t_att[sl], t_ext[sl] = (t1 - t0) / nb, (t2 - t1) / nb
                self._tick(f"attack/{label}", t1 - t0)
                self._tick("extract", t2 - t1)
                if logits.shape != (nb, k):
                    raise WmbenchError(
                        f"method {mp.name!r}: extract returned {tuple(logits.shape)}, expected {(nb, k)}"
                    )
                logits_all.append(logits.cpu())
                if b == 0 and ap is not None:
                    self._save_examples(mp.label, key, (y * 255).round().to(torch.uint8).cpu())
                if ap is not None:
                    with torch.no_grad():
                        psnr_att.append(self.M.IMAGE_METRICS["psnr"].fn(x, y).double().cpu())
                prog.update(task, advance=nb)
        except SkipCell as e:
            self._skip(mp.label, label, strength, str(e))
            prog.update(task, advance=n - sum(t.shape[0] for t in logits_all))
            return
        except Exception as e:
            self._error(mp.label, "attack" if ap else "clean", label, strength, e)
            prog.update(task, advance=n - sum(t.shape[0] for t in logits_all))
            return
        t0 = time.perf_counter()
        rows = self._rows(ctx, ap, label, strength, rel, torch.cat(logits_all), psnr_att, t_att, t_ext)
        for sk, parts in stats.items():  # a stat reported for every batch becomes a column attack_<name>
            if sum(p.shape[0] for p in parts) == n:
                rows[f"attack_{sk}"] = torch.cat(parts).numpy()
        self._tick("metrics/bits", time.perf_counter() - t0)
        self.store.write_cell(key, rows)

    def _rows(
        self,
        ctx: dict,
        ap: AttackPlan | None,
        label: str,
        strength: float,
        rel: float | None,
        logits: torch.Tensor,
        psnr_att: list[torch.Tensor],
        t_att: np.ndarray,
        t_ext: np.ndarray,
    ) -> pd.DataFrame:
        M, mp, msgs = self.M, ctx["mp"], ctx["msgs"]
        n, k = msgs.shape
        matches = M.bit_matches(logits, msgs)
        pval = M.p_value(matches, k)
        tau = M.analytic_threshold(k, self.suite.target_fpr)
        clean = ap is None
        nan = np.full(n, np.nan)
        df = pd.DataFrame(
            {
                "run_id": self.suite.name,
                "image_id": ctx["images"].ids,
                "method": mp.label,
                "method_name": mp.name,
                "attack": label,
                "attack_name": "none" if clean else ap.attack.name,
                "family": "none" if clean else getattr(ap.attack, "family", "distortion"),
                "strength": float(strength),
                "relative_strength": np.nan if rel is None else float(rel),
                "unit": "none" if clean else ap.attack.unit,
                "source": "clean" if clean else "watermarked",
                "seed": self.suite.seed,
                "nbits": k,
                "bit_acc": (matches.double() / k).numpy(),
                "ber": (1.0 - matches.double() / k).numpy(),
                "n_bit_err": (k - matches).numpy().astype(np.int64),
                "word_acc": (matches == k).double().numpy(),
                "matches": matches.numpy().astype(np.int64),
                "p_value": np.asarray(pval, dtype=np.float64),
                "det_threshold": int(tau),
                "target_fpr": self.suite.target_fpr,
                "detected": (matches >= tau).numpy(),
            }
        )
        for m in ("psnr", "ssim", "ms_ssim", "lpips"):
            df[m] = nan if clean or m not in ctx["quality"] else ctx["quality"][m]
        df["psnr_attacked"] = nan if clean else torch.cat(psnr_att).numpy()
        df["t_embed"] = nan if clean else ctx["t_embed"]
        df["t_attack"] = t_att
        df["t_extract"] = t_ext
        df["device"] = str(self.device)
        df["logits"] = [r.astype(np.float32) for r in logits.numpy()]
        df["message"] = ["".join(str(int(b)) for b in row) for row in msgs.tolist()]
        return df

    def _error(
        self, method: str, stage: str, attack: str | None, strength: float | None, e: BaseException
    ) -> None:
        msg = f"{type(e).__name__}: {e}"
        self.errors.append(
            {
                "method": method,
                "stage": stage,
                "attack": attack,
                "strength": strength,
                "error": msg,
                "traceback": traceback.format_exc(limit=6),
            }
        )
        where = f"{method}" + (
            f" × {attack} {strength:g}" if attack is not None and strength is not None else ""
        )
        self.console.print(f"[red]error in {stage} ({where}): {msg} — recorded in the manifest; continuing")

    def _skip(self, method: str, attack: str, strength: float | None, why: str) -> None:
        self.skipped.append({"method": method, "attack": attack, "strength": strength, "reason": why})
        if why not in self._skip_said:  # say each reason once; the manifest keeps every skipped cell
            self._skip_said.add(why)
            self.console.print(f"[yellow]skipped {method} × {attack}: {why}", highlight=False)
        else:
            self.console.print(
                f"[yellow]skipped {method} × {attack} {strength if strength is not None else ''}"
                " (same reason as above)",
                highlight=False,
            )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def finite_mean(x: pd.Series) -> float:
    v = x[np.isfinite(x)]
    return float(v.mean()) if len(v) else math.nan
