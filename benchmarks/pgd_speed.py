"""Seconds for ``pgd_remove`` on 64 images at 128² × 50 steps against a HiDDeN-sized decoder (issue 5's budget).

Usage: python benchmarks/pgd_speed.py [--n 64] [--size 128] [--steps 50] [--batch 64] [--eps 4] [--device cpu]

The decoder is random-init: PGD's cost (a forward and a backward per step) does not depend on the weights, only
on the architecture — 4 × (3×3 conv 64ch + BN + ReLU) at full resolution, a 3×3 conv to 30 channels, global average
pooling and a 30 → 30 linear layer, as HiDDeN's decoder (which has 7 conv blocks).  Prints the total seconds,
seconds per step and per image, and the mean change of the logits (a sanity check that gradients flow).
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmbench.api import Method
from wmbench.registry import attacks
from wmbench.runner import resolve_device


class HiddenSizedDecoder(Method):
    """A differentiable stand-in decoder (identity embed) with HiDDeN's decoder cost profile."""

    name = "hidden_sized_decoder"
    differentiable_extract = True
    nbits = 30

    def __init__(self, channels: int = 64, blocks: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for _ in range(blocks):
            layers += [nn.Conv2d(cin, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
            cin = channels
        layers += [nn.Conv2d(cin, self.nbits, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        layers += [nn.Linear(self.nbits, self.nbits)]
        with torch.random.fork_rng():  # PyTorch's default init, seeded, without touching the global RNG
            torch.manual_seed(0)
            self.net = nn.Sequential(*layers).eval().requires_grad_(False)

    def setup(self, device: torch.device) -> None:
        self.device = device
        self.net.to(device)

    def embed(self, x: Tensor, msg: Tensor) -> Tensor:
        return x

    def extract(self, y: Tensor) -> Tensor:
        return self.net(y)  # b 3 h w -> b 30


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=64, help="images per apply() call (the runner's batch_size)")
    ap.add_argument("--eps", type=float, default=4.0, help="epsilon in 1/255")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    dev = resolve_device(args.device)
    method = HiddenSizedDecoder()
    method.setup(dev)
    g = torch.Generator().manual_seed(1)
    low = torch.rand(args.n, 3, args.size // 8, args.size // 8, generator=g)
    x = (
        F.interpolate(low, size=(args.size, args.size), mode="bicubic", align_corners=False)
        .clamp(0, 1)
        .to(dev)
    )
    atk = attacks().get("pgd_remove")(steps=args.steps)

    moved, t0 = 0.0, time.perf_counter()
    for j in range(0, args.n, args.batch):
        xb = x[j : j + args.batch]
        y = atk.apply(xb, args.eps, gen=torch.Generator().manual_seed(j), method=method)
        with torch.no_grad():
            moved += float((method.extract(y) - method.extract(xb)).abs().sum())
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0

    print(
        f"pgd_remove: {args.n} images at {args.size}² × {args.steps} steps (batch {args.batch}, eps {args.eps:g}/255, "
        f"{dev}, {torch.get_num_threads()} threads, load avg {os.getloadavg()[0]:.2f})"
    )
    print(f"seconds: {dt:.1f}   per step: {dt / args.steps:.2f}   per image: {dt / args.n:.2f}")
    print(
        f"mean |logit change| (a random decoder's logits barely vary; > 0 shows PGD moved them): "
        f"{moved / (args.n * method.nbits):.2e}"
    )


if __name__ == "__main__":
    main()
