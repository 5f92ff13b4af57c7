"""The worker side of a run: build plugins once, embed a shard, run its cells, return rows (never write the folder).

Why a session: a worker (this process, or a Ray actor on another machine) keeps a method's weights and the attack
instances loaded across shards. Every value it computes depends only on the suite, the image and the cell — the
per-image generators come from (seed, method, attack, strength, image id) — so the cut into shards and batches,
the worker and the executor never change a result.
"""

from __future__ import annotations

import platform
import time
import traceback
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import pandas as pd
import torch

from wmbench.api import Attack, Method, SkipCell, WmbenchError, quantize_8bit
from wmbench.cache import WatermarkCache, wm_key
from wmbench.imageio import to_uint8
from wmbench.memory import trim_heap
from wmbench.rng import ImageGens, derive_seed
from wmbench.store import CLEAN
from wmbench.suite import Plan, Suite, expand
from wmbench.work import CellResult, CellSpec, MethodRef, Unit, UnitResult


def message_for(seed: int, image_id: str, nbits: int) -> torch.Tensor:
    """Uniform random bits per image from the suite seed.  -> k float {0,1}"""
    g = torch.Generator().manual_seed(derive_seed("msg", seed, image_id, nbits))
    return torch.randint(0, 2, (nbits,), generator=g).float()


def error_record(
    method: str, stage: str, attack: str | None, strength: float | None, e: BaseException
) -> dict:
    return {
        "method": method,
        "stage": stage,
        "attack": attack,
        "strength": strength,
        "error": f"{type(e).__name__}: {e}",
        "traceback": traceback.format_exc(limit=6),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Session:
    """Runs units for one suite on one device; keeps the last ``keep`` methods built."""

    def __init__(self, suite: Suite, device: torch.device, batch: int, keep: int = 2) -> None:
        from wmbench import metrics as M

        self.M = M
        self.suite = suite
        self.plan: Plan = expand(suite)
        self.device = device
        self.batch = batch
        self.keep = keep
        self.image_metrics = [m for m in suite.metrics if m in M.IMAGE_METRICS]
        self._methods: OrderedDict[str, Method | SkipCell] = OrderedDict()
        self.timings: dict[str, float] = {}
        self._caches: list[WatermarkCache] = []  # this unit's caches with writes still in flight

    # ------------------------------------------------------------------ plumbing
    def _tick(self, key: str, dt: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + dt

    def method(self, ref: MethodRef) -> Method:
        """The set-up method (built once per worker); raises SkipCell when it cannot run here."""
        if ref.label in self._methods:
            self._methods.move_to_end(ref.label)
        else:
            t0 = time.perf_counter()
            from wmbench.registry import methods

            try:
                m: Method | SkipCell = methods().get(ref.name)(**ref.params)
                m.setup(self.device)
            except SkipCell as e:
                m = e
            self._tick(f"setup/{ref.label}", time.perf_counter() - t0)
            self._methods[ref.label] = m
            while len(self._methods) > self.keep:
                self._methods.popitem(last=False)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        m = self._methods[ref.label]
        if isinstance(m, SkipCell):
            raise m
        return m

    def _f(self, u8: torch.Tensor) -> torch.Tensor:
        # one temporary fewer than "/ 255.0", the same values; always a copy, so the caller's tensor is never divided
        return u8.to(device=self.device, dtype=torch.float32, copy=True).div_(255.0)

    # ------------------------------------------------------------------ a unit
    def run_unit(self, unit: Unit, covers: torch.Tensor) -> UnitResult:
        """covers: n 3 s s uint8, the unit's shard in run order."""
        self.timings = {}
        res = UnitResult(unit, host=platform.node())
        label = unit.method.label
        try:
            method = self.method(unit.method)
        except SkipCell as e:
            res.skip = str(e)
            return res
        except Exception as e:  # a broken method must not lose the other methods' results
            res.error = error_record(label, "setup", None, None, e)
            return res
        ids = list(unit.shard.ids)
        msgs = torch.stack([message_for(self.suite.seed, i, method.nbits) for i in ids])  # n k
        try:
            wm, t_embed = self._embed(method, covers, msgs)
        except Exception as e:
            res.error = error_record(label, "embed", None, None, e)
            self._flush_caches()
            return res
        quality = unit.quality
        if quality is None:
            t0 = time.perf_counter()
            quality = self._quality(ids, covers, wm, t_embed)
            self._tick("metrics/quality", time.perf_counter() - t0)
            res.quality = quality
        self._examples(res, unit, "cover", covers)
        self._examples(res, unit, "wm", wm)
        try:
            for cell in unit.cells:
                res.cells.append(self._cell(method, unit, cell, covers, wm, msgs, quality, res))
        finally:
            self._flush_caches()
        res.timings = dict(self.timings)
        return res

    def _examples(self, res: UnitResult, unit: Unit, what: str, imgs: torch.Tensor) -> None:
        for g in unit.example_slots:
            res.examples.append((f"{g}_{what}", imgs[g - unit.shard.start].clone()))

    def _embed(
        self, method: Method, covers: torch.Tensor, msgs: torch.Tensor
    ) -> tuple[torch.Tensor, np.ndarray]:
        """covers: n 3 s s uint8 -> watermarked n 3 s s uint8 (8-bit quantised, cached per node), embed s/image."""
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
        for j in range(0, len(missing), self.batch):
            idx = missing[j : j + self.batch]
            x, m = self._f(covers[idx]), msgs[idx].to(self.device)
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
            y8 = to_uint8(y).cpu()  # quantize_8bit's values, as bytes
            for r, i in enumerate(idx):
                out[i], times[i] = y8[r], dt / len(idx)
                cache.put_later(keys[i], y8[r], dt / len(idx))
        self._caches.append(cache)
        return out, times

    def _flush_caches(self) -> None:
        """Wait for the unit's cache writes; a failed one is a warning (the results do not depend on it)."""
        errors = [e for c in self._caches for e in c.flush()]
        self._caches = []
        if errors:
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            warnings.warn(f"{errors[0]}{more}; those entries will be recomputed next time", stacklevel=2)

    def _quality(
        self, ids: list[str], covers: torch.Tensor, wm: torch.Tensor, t_embed: np.ndarray
    ) -> pd.DataFrame:
        """Image-quality metrics of the watermarked images against their covers, one row per image."""
        out: dict[str, list[torch.Tensor]] = {m: [] for m in self.image_metrics}
        for j in range(0, covers.shape[0], self.batch):
            c, w = self._f(covers[j : j + self.batch]), self._f(wm[j : j + self.batch])
            with torch.no_grad():
                for m in self.image_metrics:
                    out[m].append(self.M.IMAGE_METRICS[m].fn(c, w).detach().double().cpu())
        df = pd.DataFrame({"image_id": ids, "t_embed": t_embed})
        for m, v in out.items():
            df[m] = torch.cat(v).numpy()
        return df

    # ------------------------------------------------------------------ a cell
    def _cell(
        self,
        method: Method,
        unit: Unit,
        cell: CellSpec,
        covers: torch.Tensor,
        wm: torch.Tensor,
        msgs: torch.Tensor,
        quality: pd.DataFrame,
        res: UnitResult,
    ) -> CellResult:
        ap = self.plan.attacks[cell.attack_index] if cell.attack_index >= 0 else None
        label = unit.method.label
        try:
            logits, psnr_att, t_att, t_ext, stats = self._attack_extract(
                method, unit, cell, ap, covers, wm, res
            )
        except SkipCell as e:
            return CellResult(cell, skip=str(e))
        except Exception as e:
            stage = "attack" if ap is not None else "clean"
            return CellResult(cell, error=error_record(label, stage, cell.attack_label, cell.strength, e))
        t0 = time.perf_counter()
        rows = cell_rows(
            self.suite,
            self.M,
            unit,
            cell,
            ap.attack if ap else None,
            msgs,
            logits,
            quality,
            psnr_att,
            t_att,
            t_ext,
        )
        for sk, parts in stats.items():  # a stat reported for every batch becomes a column attack_<name>
            if sum(p.shape[0] for p in parts) == len(rows):
                rows[f"attack_{sk}"] = torch.cat(parts).numpy()
        rows["device"] = str(self.device)
        self._tick("metrics/bits", time.perf_counter() - t0)
        return CellResult(cell, rows=rows)

    def _attack_extract(
        self,
        method: Method,
        unit: Unit,
        cell: CellSpec,
        ap: Any,
        covers: torch.Tensor,
        wm: torch.Tensor,
        res: UnitResult,
    ) -> tuple[torch.Tensor, np.ndarray | None, np.ndarray, np.ndarray, dict[str, list[torch.Tensor]]]:
        """Attack (unless clean) and extract every image of the shard in batches.  -> logits n k, …"""
        n, ids = covers.shape[0], list(unit.shard.ids)
        logits_all, psnr_att = [], []
        t_att, t_ext = np.zeros(n), np.zeros(n)
        stats: dict[str, list[torch.Tensor]] = {}
        cell_id = (self.suite.seed, unit.method.label, cell.attack_label, float(cell.strength))
        for j in range(0, n, self.batch):
            sl = slice(j, j + self.batch)
            if ap is None:
                y = self._f(covers[sl])
                t0 = time.perf_counter()
            else:
                cover = self._f(covers[sl]) if ap.attack.needs_cover else None  # converted only if used
                t0 = time.perf_counter()
                x = self._f(wm[sl])
                y = self._attack(
                    ap.attack, x, cover, cell, method, ImageGens.for_cell(*cell_id, image_ids=ids[sl])
                )
                for sk, sv in (getattr(ap.attack, "last_stats", None) or {}).items():
                    if isinstance(sv, torch.Tensor) and sv.shape == (x.shape[0],):
                        stats.setdefault(sk, []).append(sv.detach().double().cpu())
                with torch.no_grad():
                    psnr_att.append(self.M.IMAGE_METRICS["psnr"].fn(x, y).double().cpu())
            t1 = time.perf_counter()
            with torch.no_grad():
                logits = method.extract(y).float()
            _sync(self.device)
            t2 = time.perf_counter()
            nb = y.shape[0]
            t_att[sl], t_ext[sl] = (t1 - t0) / nb, (t2 - t1) / nb
            self._tick(f"attack/{cell.attack_label}", t1 - t0)
            self._tick("extract", t2 - t1)
            if logits.shape != (nb, msgs_k := method.nbits):
                raise WmbenchError(
                    f"method {method.name!r}: extract returned {tuple(logits.shape)}, expected {(nb, msgs_k)}"
                )
            logits_all.append(logits.cpu())
            if ap is not None:
                for g in unit.example_slots:
                    r = g - unit.shard.start - j
                    if 0 <= r < nb:
                        res.examples.append((f"{g}_{cell.cell}", (y[r] * 255).round().to(torch.uint8).cpu()))
        trim_heap()  # free heap pages back to the system once per cell, else RSS climbs cell by cell (memory.py)
        pa = torch.cat(psnr_att).numpy() if psnr_att else None
        return torch.cat(logits_all), pa, t_att, t_ext, stats

    def _attack(
        self,
        atk: Attack,
        x: torch.Tensor,
        cover: torch.Tensor,
        cell: CellSpec,
        method: Method,
        gens: ImageGens,
    ) -> torch.Tensor:
        """One batch through one attack, quantised to 8 bits (an attacked image is an image someone saved)."""
        # adversarial attacks backpropagate through the method; everything else runs without autograd
        grad_ctx = torch.enable_grad() if atk.needs_method else torch.no_grad()
        if hasattr(atk, "last_stats"):
            atk.last_stats = {}
        with grad_ctx:
            y = atk.apply(x, cell.strength, gen=gens, method=method, cover=cover)
        y = quantize_8bit(y.detach())
        _sync(self.device)
        return y


def cell_rows(
    suite: Suite,
    M: Any,
    unit: Unit,
    cell: CellSpec,
    attack: Attack | None,
    msgs: torch.Tensor,
    logits: torch.Tensor,
    quality: pd.DataFrame,
    psnr_att: np.ndarray | None,
    t_att: np.ndarray,
    t_ext: np.ndarray,
) -> pd.DataFrame:
    """The tidy rows of one cell on one shard (README, "Results")."""
    n, k = msgs.shape
    matches = M.bit_matches(logits, msgs)
    tau = M.analytic_threshold(k, suite.target_fpr)
    clean = attack is None
    nan = np.full(n, np.nan)
    df = pd.DataFrame(
        {
            "run_id": suite.name,
            "image_id": list(unit.shard.ids),
            "method": unit.method.label,
            "method_name": unit.method.name,
            "attack": CLEAN if clean else cell.attack_label,
            "attack_name": "none" if clean else attack.name,
            "family": "none" if clean else getattr(attack, "family", "distortion"),
            "strength": float(cell.strength),
            "relative_strength": np.nan if cell.relative is None else float(cell.relative),
            "unit": "none" if clean else attack.unit,
            "source": "clean" if clean else "watermarked",
            "seed": suite.seed,
            "nbits": k,
            "bit_acc": (matches.double() / k).numpy(),
            "ber": (1.0 - matches.double() / k).numpy(),
            "n_bit_err": (k - matches).numpy().astype(np.int64),
            "word_acc": (matches == k).double().numpy(),
            "matches": matches.numpy().astype(np.int64),
            "p_value": np.asarray(M.p_value(matches, k), dtype=np.float64),
            "det_threshold": int(tau),
            "target_fpr": suite.target_fpr,
            "detected": (matches >= tau).numpy(),
        }
    )
    for m in ("psnr", "ssim", "ms_ssim", "lpips"):
        df[m] = nan if clean or m not in quality else quality[m].to_numpy()
    df["psnr_attacked"] = nan if clean or psnr_att is None else psnr_att
    df["t_embed"] = nan if clean else quality["t_embed"].to_numpy()
    df["t_attack"] = t_att
    df["t_extract"] = t_ext
    df["device"] = ""
    df["logits"] = [r.astype(np.float32) for r in logits.numpy()]
    df["message"] = ["".join(str(int(b)) for b in row) for row in msgs.tolist()]
    return df
