"""Images per second for every stage of a suite: embed, each attack × strength, extract, each metric.

Usage: python benchmarks/throughput.py [SUITE] [--device cpu] [--repeat 2] [--limit N]

Runs the stages directly (no cache, no store) so the figures measure the computation alone; the best of
``--repeat`` timings is reported (the first call of some libraries pays one-time set-up costs).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from wmbench import metrics as M
from wmbench.api import quantize_8bit
from wmbench.data import load_image_set
from wmbench.runner import message_for, resolve_device
from wmbench.suite import expand, load_suite

REPO = Path(__file__).resolve().parents[1]


def _best(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("suite", nargs="?", default=str(REPO / "suites" / "smoke.yaml"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()

    suite = load_suite(args.suite)
    if args.limit:
        suite.images.count = args.limit
    plan = expand(suite)
    dev = resolve_device(args.device)
    im = suite.images
    imgs = load_image_set(im.source, size=im.size, count=im.count, path=im.path, split=im.split)
    x = imgs.images.to(dev).float() / 255.0  # n 3 s s
    n = x.shape[0]
    t = Table(
        "stage",
        "what",
        "images/s",
        "ms/image",
        title=f"{suite.name}: {n} images {im.size}² on {dev}, "
        f"{torch.get_num_threads()} threads, best of {args.repeat}",
    )

    def row(stage: str, what: str, secs: float) -> None:
        t.add_row(stage, what, f"{n / secs:.1f}", f"{1000 * secs / n:.2f}")

    for mp in plan.methods:
        method = mp.build()
        method.setup(dev)
        msgs = torch.stack([message_for(suite.seed, i, method.nbits) for i in imgs.ids]).to(dev)
        with torch.no_grad():
            secs, wm = _best(
                lambda m=method, g=msgs: torch.cat(
                    [
                        m.embed(x[j : j + suite.batch_size], g[j : j + suite.batch_size])
                        for j in range(0, n, suite.batch_size)
                    ]
                ),
                args.repeat,
            )
            row("embed", mp.label, secs)
            wm = quantize_8bit(wm)
            secs, _ = _best(
                lambda m=method, w=wm: torch.cat(
                    [m.extract(w[j : j + suite.batch_size]) for j in range(0, n, suite.batch_size)]
                ),
                args.repeat,
            )
            row("extract", mp.label, secs)
    wm = wm if plan.methods else x
    for a in plan.attacks:
        for s in a.strengths:
            gen = torch.Generator().manual_seed(0)

            def go(a=a, s=s, gen=gen):
                return torch.cat(
                    [
                        a.attack.apply(
                            wm[j : j + suite.batch_size],
                            s,
                            gen=gen,
                            method=method,
                            cover=x[j : j + suite.batch_size],
                        )
                        for j in range(0, n, suite.batch_size)
                    ]
                )

            with torch.no_grad():
                secs, _ = _best(go, args.repeat)
            row("attack", f"{a.label} {s:g} ({a.attack.unit})", secs)
    for name in suite.metrics:
        if name in M.IMAGE_METRICS:
            fn = M.IMAGE_METRICS[name].fn
            with torch.no_grad():
                secs, _ = _best(
                    lambda fn=fn: torch.cat(
                        [
                            fn(x[j : j + suite.batch_size], wm[j : j + suite.batch_size])
                            for j in range(0, n, suite.batch_size)
                        ]
                    ),
                    args.repeat,
                )
            row("metric", name, secs)
    Console().print(t)


if __name__ == "__main__":
    main()
