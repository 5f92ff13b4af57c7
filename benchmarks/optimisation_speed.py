"""Images/s of the optimisation-based methods and attacks at their papers' settings (issue 15).

    python benchmarks/optimisation_speed.py [--count 4] [--batch-size 4] [--only ismark advmark pgd pgd_es]
        [--device cpu|cuda] [--pgd-steps 200]

* ISMark OPT embedding (Algorithm 1): k = 200 steps, Adam, every noise layer each step (the defaults), over the
  shipped hidden decoder (``decoder: hidden``); the paper reports 10.6 s per 128² image on a 2080 Ti.
* AdvMark stage 2 at its defaults (50 steps, PSNR floor 35 dB) over the shipped stage-1 weights.
* ``pgd_remove`` against the shipped hidden decoder: L∞ ε = 4/255, step 0.05 ε, ``--pgd-steps`` steps (WAVES'
  embedding attacks use 200); ``pgd_es``: the same with ``early_stop: true`` (an image leaves the batch once its
  8-bit iterate decodes as the attack's target).  Both draw from per-image generators, as in a run.

Covers: the first ``--count`` built-in eval tiles at 128², 30-bit random messages.  Each row: images/s, seconds
per image (wall clock, whole batches, after a one-image warm-up), mean PSNR and bit accuracy of the output.
The algorithms are the methods' own; this script only times them.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch
from torch import Tensor

from wmbench import rng
from wmbench.api import quantize_8bit
from wmbench.data import load_image_set
from wmbench.metrics import bit_acc, psnr
from wmbench.registry import attacks, methods


def _timed(fn: Callable[[slice], Tensor], n: int, batch: int) -> tuple[float, Tensor]:
    """Wall seconds of ``fn`` over every batch slice of n images (after a one-image warm-up) and its outputs."""
    fn(slice(0, 1))  # warm-up (lazy weights, first-call set-up)
    ys, t0 = [], time.perf_counter()
    for j in range(0, n, batch):
        ys.append(fn(slice(j, j + batch)).detach())
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t0, torch.cat(ys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--only", nargs="+", default=["ismark", "advmark", "pgd", "pgd_es"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--pgd-steps", type=int, default=200)
    a = ap.parse_args()
    dev = torch.device(a.device)
    x = (load_image_set("builtin", size=128, count=a.count, split="eval").images.float() / 255.0).to(dev)
    msg = torch.randint(0, 2, (a.count, 30), generator=torch.Generator().manual_seed(0)).float().to(dev)
    print(
        f"# {a.count} eval tiles 128², batch {a.batch_size}, {dev} ({platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load avg {os.getloadavg()[0]:.1f})"
    )
    print(f"{'what':<42} {'images/s':>9} {'s/image':>8} {'psnr':>6} {'bit_acc':>8}")

    def row(what: str, secs: float, ref: Tensor, y: Tensor, acc: Tensor) -> None:
        n = y.shape[0]
        p = float(psnr(ref.cpu(), quantize_8bit(y).cpu()).mean())
        print(f"{what:<42} {n / secs:>9.3f} {secs / n:>8.2f} {p:>6.2f} {float(acc.mean()):>8.3f}", flush=True)

    for name in a.only:
        if name not in ("ismark", "advmark", "pgd", "pgd_es"):
            raise SystemExit(f"unknown --only entry {name!r} (ismark, advmark, pgd, pgd_es)")
        pgd = name.startswith("pgd")
        m = methods().get("hidden" if pgd else name)(**({"decoder": "hidden"} if name == "ismark" else {}))
        m.setup(dev)
        if pgd:
            atk = attacks().get("pgd_remove")(steps=a.pgd_steps, early_stop=name == "pgd_es")
            with torch.no_grad():
                ref = quantize_8bit(m.embed(x, msg))

            def run(s: slice, m=m, atk=atk, ref=ref) -> Tensor:
                ids = [str(i) for i in range(a.count)][s]  # a run's per-image generators
                gen = rng.ImageGens.for_cell(0, "hidden", "pgd_remove", 4.0, image_ids=ids)
                return atk.apply(ref[s], 4.0, gen=gen, method=m)

            label = f"pgd_remove vs hidden, 4/255, {a.pgd_steps} steps" + (
                ", early stop" if name == "pgd_es" else ""
            )
        else:
            ref = x

            def run(s: slice, m=m) -> Tensor:
                return m.embed(x[s], msg[s])

            label = (
                "ISMark OPT k=200, all noise layers"
                if name == "ismark"
                else "AdvMark stage 2 (50 steps, 35 dB)"
            )
        secs, y = _timed(run, a.count, a.batch_size)
        with torch.no_grad():
            acc = bit_acc(m.extract(quantize_8bit(y)), msg)
        row(label, secs, ref, y, acc)


if __name__ == "__main__":
    main()
