"""ISMark OPT embedding: seconds per image against the number of optimisation steps k (the paper's Table 4).

    python benchmarks/ismark_embed_time.py [--count N] [--batch-size B] [--steps 10 25 50 100 200]
        [--checkpoint HIDDEN.safetensors] [--device cpu|cuda] [--noise-per-step n]

Covers: the first N built-in eval tiles at 128².  Decoder: ``hidden`` at its default architecture (30 bits)
with ``--checkpoint``, else the shipped hidden weights, else a seeded RANDOM-INIT decoder (the output says which:
timings are the same for any weights of one architecture, PSNR and bit accuracy are not meaningful then).
Prints one row per k: seconds per image (wall clock, whole batches, after one warm-up step), mean PSNR of the
8-bit output, clean bit accuracy and bit accuracy after real JPEG-50.
"""

from __future__ import annotations

import argparse
import importlib.resources
import platform
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100, 200])
    ap.add_argument(
        "--checkpoint", default=None, help="a hidden .safetensors (default: shipped, else random)"
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--noise-per-step", type=int, default=None)
    a = ap.parse_args()

    from wmbench.methods.ismark import ISMark

    from wmbench.data import load_image_set
    from wmbench.registry import attacks

    if a.checkpoint:
        dp, what = {"checkpoint": a.checkpoint}, f"hidden checkpoint {a.checkpoint}"
    elif (importlib.resources.files("wmbench.weights") / "hidden.safetensors").is_file():
        dp, what = {}, "shipped hidden weights (wmbench/weights/hidden.safetensors)"
    else:
        dp = {"init": "random"}
        what = "RANDOM-INIT hidden decoder (no shipped weights): timings only, PSNR/accuracy not meaningful"
    dev = torch.device(a.device)
    x_all = load_image_set("builtin", size=128, count=a.count, split="eval").images.float() / 255.0
    msg_all = torch.randint(0, 2, (a.count, 30), generator=torch.Generator().manual_seed(0)).float()
    jpeg = attacks().get("jpeg")()
    threads = torch.get_num_threads()
    print(f"# ISMark OPT embedding time; decoder: {what}")
    print(
        f"# {a.count} builtin eval tiles at 128², batch {a.batch_size}, device {dev} "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}, {threads} threads), "
        f"noise_per_step {a.noise_per_step or 'all (8)'}"
    )
    print(f"{'k':>5} {'s/image':>9} {'psnr':>7} {'bit_acc':>8} {'jpeg50':>7}")
    for k in a.steps:
        m = ISMark(decoder="hidden", decoder_params=dp, steps=k, noise_per_step=a.noise_per_step)
        m.setup(dev)
        m.opt_embed(x_all[:1].to(dev), msg_all[:1].to(dev), steps=1)  # warm-up
        ys, t0 = [], time.perf_counter()
        for i in range(0, a.count, a.batch_size):
            ys.append(
                m.embed(x_all[i : i + a.batch_size].to(dev), msg_all[i : i + a.batch_size].to(dev)).cpu()
            )
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / a.count
        y = torch.cat(ys)
        with torch.no_grad():
            psnr = float((-10 * torch.log10(((y - x_all) ** 2).flatten(1).mean(1))).mean())
            acc = float(((m.extract(y.to(dev)).cpu() > 0).float() == msg_all).float().mean())
            yj = jpeg.apply(y, 50, gen=torch.Generator().manual_seed(0))
            accj = float(((m.extract(yj.to(dev)).cpu() > 0).float() == msg_all).float().mean())
        print(f"{k:>5} {dt:>9.2f} {psnr:>7.2f} {acc:>8.3f} {accj:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
