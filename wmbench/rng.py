"""Random draws that do not depend on how the work is cut.

Why: a benchmark split over batches, shards, workers or machines must give the same value for image *i* however
it was cut. The runner therefore hands an attack an :class:`ImageGens` — one CPU generator per image, seeded from
(suite seed, method label, attack label, strength, image id), plus one ``shared`` generator seeded from the cell
alone for choices that are the same for every image (e.g. which EOT transform a PGD step averages over). Plugins
draw through :func:`rand`, :func:`randn` and :func:`randint`, which stack one draw per image.

Training code passes a plain ``torch.Generator`` instead; the same helpers then draw the whole batch from it at
once, exactly as ``torch.rand((b, ...), generator=gen)`` would (so trainer runs stay bit-identical).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any reprs (stable across processes and machines: sha256, not ``hash``)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & ((1 << 63) - 1)


class ImageGens:
    """One generator per image of a batch (``gens[i]`` for image i) and one for draws shared by the batch."""

    def __init__(self, seeds: Sequence[int], shared_seed: int) -> None:
        self.seeds = [int(s) for s in seeds]
        self.shared_seed = int(shared_seed)
        self.gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        self.shared = torch.Generator().manual_seed(self.shared_seed)

    @classmethod
    def for_cell(cls, *cell: Any, image_ids: Sequence[str]) -> ImageGens:
        """Generators for the images ``image_ids`` of the cell identified by ``cell`` (seed, method, attack, strength)."""
        return cls([derive_seed(*cell, i) for i in image_ids], derive_seed(*cell, "shared"))

    def __len__(self) -> int:
        return len(self.gens)

    def subset(self, idx: Sequence[int]) -> ImageGens:
        """The generators of images ``idx`` (the same objects: drawing from either advances both) and the same
        shared generator: what an attack passes on when it works on part of the batch."""
        sub = object.__new__(ImageGens)
        sub.seeds, sub.shared_seed = [self.seeds[i] for i in idx], self.shared_seed
        sub.gens, sub.shared = [self.gens[i] for i in idx], self.shared
        return sub


Gen = torch.Generator | ImageGens


def _check(gen: ImageGens, b: int) -> None:
    if len(gen) != b:
        raise ValueError(f"{len(gen)} per-image generators for a batch of {b} images")


def rand(gen: Gen, b: int, *shape: int) -> Tensor:
    """Uniform [0,1) draws, one block per image.  -> b *shape (CPU, float32)"""
    if isinstance(gen, torch.Generator):
        return torch.rand((b, *shape), generator=gen)
    _check(gen, b)
    out = torch.empty((b, *shape))
    for i, g in enumerate(gen.gens):  # written in place: no stacked copy of the batch
        torch.rand(shape, generator=g, out=out[i])
    return out


def randn(gen: Gen, b: int, *shape: int) -> Tensor:
    """Standard normal draws, one block per image.  -> b *shape (CPU, float32)"""
    if isinstance(gen, torch.Generator):
        return torch.randn((b, *shape), generator=gen)
    _check(gen, b)
    out = torch.empty((b, *shape))
    for i, g in enumerate(gen.gens):
        torch.randn(shape, generator=g, out=out[i])
    return out


def randint(gen: Gen, low: int, high: int, b: int, *shape: int) -> Tensor:
    """Integers in [low, high), one block per image.  -> b *shape (CPU, int64)"""
    if isinstance(gen, torch.Generator):
        return torch.randint(low, high, (b, *shape), generator=gen)
    _check(gen, b)
    return torch.stack([torch.randint(low, high, shape, generator=g) for g in gen.gens])


def shared(gen: Gen) -> torch.Generator:
    """The generator for a draw every image of the batch shares (the batch's own generator in training)."""
    return gen if isinstance(gen, torch.Generator) else gen.shared


def per_image(gen: Gen, b: int) -> list[torch.Generator]:
    """One generator per image: the per-image ones, or, for a plain generator, b children seeded from it."""
    if isinstance(gen, torch.Generator):
        seeds = torch.randint(0, 2**62, (b,), generator=gen).tolist()
        return [torch.Generator().manual_seed(int(s)) for s in seeds]
    _check(gen, b)
    return list(gen.gens)


def content_gens(seed: int, x: Tensor, msg: Tensor) -> ImageGens:
    """Per-image generators from (seed, image bytes, message bits), for randomness inside ``embed``.

    A method sees no image ids, but its cover and message identify the image (the message derives from the suite
    seed and the image id), so this is as batch-independent as the runner's own draws.  x: b 3 h w; msg: b k
    """
    xs = x.detach().float().cpu().contiguous()
    ms = (msg.detach().cpu() > 0.5).to(torch.uint8).contiguous()
    seeds = []
    for i in range(x.shape[0]):
        h = hashlib.sha256(str(seed).encode())
        h.update(xs[i].numpy().tobytes())
        h.update(ms[i].numpy().tobytes())
        seeds.append(int.from_bytes(h.digest()[:8], "little") >> 1)
    return ImageGens(seeds, derive_seed("content-shared", seed))
