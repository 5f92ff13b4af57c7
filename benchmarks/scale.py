"""Scale figures: images/s for the local executor vs Ray with 1 and 2 workers, and peak RSS vs image count.

    python benchmarks/scale.py                        # both parts, defaults below
    python benchmarks/scale.py --part memory --counts 256,1024,4096
    python benchmarks/scale.py --part throughput --n 64

Every figure comes from `wmbench run` in a subprocess, as a user runs it (report included), with a fresh watermark
cache so embedding is timed too. Peak RSS is the child's ``ru_maxrss`` (os.wait4). The images are distinct 256²
crops of the built-in photos (random position, scale and flip, seeded), written once as PNGs under --workdir, so
a folder of any size exists offline. Run both executors side by side in one invocation: this machine is shared
and noisy, so read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml


def write_crops(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """n distinct size×size crops (random scale 0.35–1 of the shorter side, position, flip) of all built-in photos."""
    from PIL import Image

    from wmbench.data import PHOTOS

    root.mkdir(parents=True, exist_ok=True)
    have = sorted(root.glob("*.png"))
    if len(have) >= n:
        return root
    rng = np.random.default_rng(seed)
    photos = [Image.fromarray(np.asarray(p.load()).astype(np.uint8)).convert("RGB") for p in PHOTOS.values()]
    photos = [p for p in photos if min(p.size) >= size]
    for i in range(n):
        p = photos[i % len(photos)]
        side = int(min(p.size) * rng.uniform(0.35, 1.0))
        side = max(side, size)
        x0, y0 = rng.integers(0, p.width - side + 1), rng.integers(0, p.height - side + 1)
        crop = p.crop((x0, y0, x0 + side, y0 + side)).resize((size, size), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crop.save(root / f"{i:05d}.png", compress_level=1)
    return root


def suite(path: Path, folder: Path, n: int, size: int, methods: list[dict], attacks: list[dict]) -> Path:
    data = {
        "name": path.stem,
        "seed": 0,
        "images": {"source": "folder", "path": str(folder), "count": n, "size": size},
        "methods": methods,
        "attacks": attacks,
        "metrics": ["bit_acc", "psnr", "ssim"],
        "batch_size": 16,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def run(suite_path: Path, out: Path, home: Path, *extra: str) -> dict:
    """One `wmbench run` in a child process.  -> wall, peak RSS (MB), rows, manifest timings"""
    cmd = [
        sys.executable,
        "-m",
        "wmbench.cli",
        "run",
        str(suite_path),
        "--out",
        str(out),
        "--fresh",
        "--no-progress",
    ]
    env = {**os.environ, "WMBENCH_HOME": str(home), "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    with (out.parent / f"{out.name}.log").open("w") as log:
        proc = subprocess.Popen([*cmd, *extra], env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"run failed ({status}); see {out.parent / (out.name + '.log')}")
    m = json.loads((out / "manifest.json").read_text())
    return {"wall": wall, "rss_mb": usage.ru_maxrss / 1024, "rows": m["n_rows"], "runner_wall": m["wall_s"]}


def throughput(work: Path, folder: Path, n: int, size: int) -> None:
    methods = [{"name": "hidden"}]
    attacks = [
        {"name": "jpeg", "strengths": [50]},
        {"name": "gaussian_noise", "strengths": [0.05]},
        {"name": "resize", "strengths": [0.5]},
        {"name": "gaussian_blur", "strengths": [1.0]},
    ]
    s = suite(work / "tp.yaml", folder, n, size, methods, attacks)
    cells = len(attacks) + 2  # + identity + clean covers
    print(
        f"\nthroughput: hidden × {len(attacks)} attacks (+identity, clean) on {n} images at {size}², {os.cpu_count()} cores"
    )
    print(f"{'executor':<22}{'wall s':>9}{'img·cells/s':>13}{'vs local':>10}{'peak RSS MB':>13}")
    base = None
    for name, extra in (
        ("local", ()),
        ("ray, 1 worker", ("--executor", "ray", "--workers", "1", "--shard-size", str(max(1, n // 4)))),
        ("ray, 2 workers", ("--executor", "ray", "--workers", "2", "--shard-size", str(max(1, n // 4)))),
    ):
        r = run(
            s,
            work / f"tp-{name.replace(', ', '-').replace(' ', '')}",
            Path(tempfile.mkdtemp(dir=work)),
            *extra,
        )
        rate = n * cells / r["wall"]
        base = base or rate
        print(f"{name:<22}{r['wall']:>9.1f}{rate:>13.1f}{rate / base:>10.2f}{r['rss_mb']:>13.0f}")


def memory(work: Path, counts: list[int], size: int) -> None:
    folder = write_crops(work / f"crops-{size}", max(counts), size)
    print(
        f"\npeak RSS vs image count: dwtdct × jpeg 50 at {size}², shard size 256 (default), report included"
    )
    print(f"{'images':>8}{'wall s':>9}{'peak RSS MB':>13}{'vs first':>10}")
    first = None
    for n in counts:
        s = suite(
            work / f"mem{n}.yaml",
            folder,
            n,
            size,
            [{"name": "dwtdct"}],
            [{"name": "jpeg", "strengths": [50]}],
        )
        r = run(s, work / f"mem{n}", Path(tempfile.mkdtemp(dir=work)))
        first = first or r["rss_mb"]
        print(f"{n:>8}{r['wall']:>9.1f}{r['rss_mb']:>13.0f}{r['rss_mb'] / first:>10.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["all", "throughput", "memory"], default="all")
    ap.add_argument("--n", type=int, default=64, help="images for the throughput part")
    ap.add_argument("--counts", default="256,1024,4096", help="image counts for the memory part")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "wmbench-scale")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    if a.part in ("all", "throughput"):
        throughput(a.workdir, write_crops(a.workdir / f"crops-{a.size}", a.n, a.size), a.n, a.size)
    if a.part in ("all", "memory"):
        memory(a.workdir, [int(c) for c in a.counts.split(",")], a.size)


if __name__ == "__main__":
    main()
