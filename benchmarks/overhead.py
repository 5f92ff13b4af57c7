"""The harness's overhead: one suite through ``wmbench run`` against the same work written by hand.

    python benchmarks/overhead.py [--repeat 2] [--prefix SCRIPT] [--keep DIR]

Workload (issue 15): 96 photographs at 256² (``_photos.py``: cut from the built-in photos, written as PNGs for a
``source: folder`` suite); dwtdct; jpeg 50, gaussian_blur σ 1, resize 0.5, gaussian_noise σ 0.05 (plus the
identity cell and the clean covers, which every run has); metrics psnr + ssim (and psnr_attacked).

"By hand" is what a user would write with the same libraries: read the PNGs with PIL, the package's DwtDct
embed/extract in batches of 16, quantise to 8 bits, PIL JPEG per image, kornia's Gaussian blur, torch resize and
noise, wmbench's psnr/ssim functions, a CSV of per-image rows.  Both run as fresh subprocesses (imports included,
``WMBENCH_HOME`` empty so nothing comes from the watermark cache), alternately, and each is timed by its process
wall clock and peak RSS (``os.wait4``).  Prints every repeat, the medians and the ratio run ÷ by hand, then the
run's own stage timings from its manifest.

``--prefix SCRIPT`` runs both under ``python SCRIPT …`` (e.g. a launcher that points the imports at another
checkout, to time an older tree side by side with this one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATCH = 16
SUITE = """name: overhead
seed: 0
images: {{source: folder, path: {path}, count: 96, size: 256}}
methods: [{{name: dwtdct}}]
attacks:
  - {{name: jpeg, strengths: [50]}}
  - {{name: gaussian_blur, strengths: [1.0]}}
  - {{name: resize, strengths: [0.5]}}
  - {{name: gaussian_noise, strengths: [0.05]}}
metrics: [bit_acc, psnr, ssim]
batch_size: {batch}
device: cpu
"""


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """Run ``cmd``; -> (wall seconds, peak RSS in MB, exit status)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        sys.stderr.write(p.stderr.read().decode(errors="replace")[-3000:] if p.stderr else "")
    return wall, ru.ru_maxrss / 1024.0, p.returncode


# ------------------------------------------------------------------------------------------- by hand


def _attacks():
    """The four distortions, written directly against the libraries.  b 3 h w float -> b 3 h w float"""
    import io

    import numpy as np
    import torch
    import torch.nn.functional as F
    from kornia.filters import gaussian_blur2d
    from PIL import Image

    def jpeg(x: torch.Tensor) -> torch.Tensor:
        a = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        out = []
        for img in a:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="JPEG", quality=50)
            buf.seek(0)
            out.append(np.asarray(Image.open(buf).convert("RGB")))
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255

    def blur(x: torch.Tensor) -> torch.Tensor:
        return gaussian_blur2d(x, (7, 7), (1.0, 1.0), border_type="reflect")

    def resize(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        small = F.interpolate(x, size=(h // 2, w // 2), mode="bilinear", antialias=True)
        return F.interpolate(small, size=(h, w), mode="bilinear")

    gen = torch.Generator().manual_seed(0)

    def noise(x: torch.Tensor) -> torch.Tensor:
        return x + 0.05 * torch.randn(x.shape, generator=gen)

    return {"jpeg50": jpeg, "blur1": blur, "resize0.5": resize, "noise0.05": noise}


def by_hand(folder: Path, out_csv: Path) -> None:
    """The whole workload without the harness (run in its own process by ``main``)."""
    import csv

    import numpy as np
    import torch
    from PIL import Image
    from wmbench.methods.classic import DwtDct

    from wmbench.metrics import psnr, ssim

    def q8(t: torch.Tensor) -> torch.Tensor:
        return (t.clamp(0, 1) * 255).round() / 255

    def batched(fn, *ts: torch.Tensor) -> torch.Tensor:
        return torch.cat([fn(*(t[j : j + BATCH] for t in ts)) for j in range(0, ts[0].shape[0], BATCH)])

    files = sorted(folder.glob("*.png"))
    x = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    x = x.permute(0, 3, 1, 2).float() / 255  # n 3 256 256
    msg = torch.randint(0, 2, (x.shape[0], 32), generator=torch.Generator().manual_seed(0)).float()
    m = DwtDct()
    m.setup(torch.device("cpu"))
    rows = []
    with torch.no_grad():
        wm = q8(batched(m.embed, x, msg))
        q_psnr, q_ssim = batched(psnr, x, wm), batched(ssim, x, wm)

        def record(name: str, y: torch.Tensor, p_att: torch.Tensor | None) -> None:
            acc = ((batched(m.extract, y) > 0).float() == msg).float().mean(1)
            for i in range(x.shape[0]):
                pa = float(p_att[i]) if p_att is not None else ""
                rows.append([files[i].name, name, float(acc[i]), float(q_psnr[i]), float(q_ssim[i]), pa])

        record("clean", x, None)
        record("identity", wm, None)
        for name, fn in _attacks().items():
            y = q8(batched(fn, wm))
            record(name, y, batched(psnr, wm, y))
    with out_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "attack", "bit_acc", "psnr", "ssim", "psnr_attacked"])
        w.writerows(rows)


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--prefix", default=None, help="run python SCRIPT … instead of python …")
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp folder)")
    ap.add_argument("--by-hand", nargs=2, type=Path, metavar=("FOLDER", "CSV"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.by_hand:
        by_hand(*a.by_hand)
        return
    sys.path.insert(0, str(HERE))
    from _photos import write_folder

    work = a.keep or Path(tempfile.mkdtemp(prefix="wmbench-overhead-"))
    photos = write_folder(work / "photos")
    suite = work / "overhead.yaml"
    suite.write_text(SUITE.format(path=photos, batch=BATCH))
    py = [sys.executable, *([a.prefix] if a.prefix else [])]
    runs, hands = [], []
    for r in range(a.repeat):
        env = {**os.environ, "WMBENCH_HOME": str(work / f"home{r}")}
        out = work / f"run{r}"
        cmd = [*py, "-m", "wmbench.cli", "run", str(suite), "--out", str(out), "--fresh", "--no-progress"]
        runs.append(timed(cmd, env))
        hands.append(
            timed([*py, str(Path(__file__).resolve()), "--by-hand", str(photos), str(work / "h.csv")], env)
        )
        (wr, mr, cr), (wh, mh, ch) = runs[-1], hands[-1]
        print(
            f"repeat {r}: wmbench run {wr:6.1f} s {mr:6.0f} MB (rc {cr}) · by hand {wh:6.1f} s {mh:6.0f} MB (rc {ch})"
        )
    med = [statistics.median(v) for v in zip(*[(w, m) for w, m, _ in runs], strict=True)]
    medh = [statistics.median(v) for v in zip(*[(w, m) for w, m, _ in hands], strict=True)]
    print(
        f"median: wmbench run {med[0]:.1f} s, peak RSS {med[1]:.0f} MB · by hand {medh[0]:.1f} s, "
        f"peak RSS {medh[1]:.0f} MB · ratio {med[0] / medh[0]:.2f}"
    )
    print(
        f"report-figure helper (wmbench.painter) redrawing run0's figures: peak RSS {_painter_rss(work / 'run0'):.0f} MB"
    )
    man = work / "run0" / "manifest.json"
    if man.is_file():
        tm = json.loads(man.read_text()).get("timings", {})
        top = sorted(tm.items(), key=lambda kv: -float(kv[1]))[:12]
        print("run0 stage timings (s): " + ", ".join(f"{k} {float(v):.1f}" for k, v in top))


def _painter_rss(run: Path) -> float:
    """Peak RSS of the helper process that draws a run's figures (a process of its own, so ``wait4`` on the run
    does not count it): replay the report with a fresh helper and read its ``VmHWM`` (peak since its exec; Linux)
    before it exits.  ``wait4``'s ``ru_maxrss`` would not do: Linux keeps the forking parent's high-water mark
    across exec.  -> MB"""
    from wmbench.painter import Painter
    from wmbench.report import write_report

    painter = Painter.start(force=True)  # this process may have loaded matplotlib (skimage's photos)
    if painter.proc is None:
        return float("nan")
    write_report(run, painter)
    try:
        status = Path(f"/proc/{painter.proc.pid}/status").read_text()
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        kb = float("nan")
    painter.close()
    return kb / 1024


if __name__ == "__main__":
    main()
