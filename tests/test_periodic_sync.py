"""Periodic re-synchronisation (methods/periodic_sync.py): the zoom estimate, and crops decoded again."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from wmbench.attacks.geometric import Crop
from wmbench.methods.hidden import Hidden
from wmbench.methods.periodic_sync import candidate_periods

from wmbench.api import WmbenchError, quantize_8bit
from wmbench.data import load_image_set


def test_candidate_periods_find_a_zoomed_period() -> None:
    g = torch.Generator().manual_seed(0)
    content = F.avg_pool2d(torch.rand(2, 3, 136, 136, generator=g), 9, 1)  # smooth "photo", 128²
    pattern = (torch.rand(1, 3, 16, 16, generator=g) - 0.5).repeat(1, 1, 8, 8) * 0.04  # period 16
    y = content + pattern
    zoomed = F.interpolate(y[..., :107, :107], size=(128, 128), mode="bilinear", align_corners=False)
    found = candidate_periods(zoomed, 16)
    for cands in found:
        assert cands[0] == 16.0
        assert any(abs(p - 16 * 128 / 107) < 0.4 for p in cands[1:]), cands


@pytest.fixture(scope="module")
def marked() -> tuple[Hidden, Hidden, torch.Tensor, torch.Tensor]:
    plain, synced = Hidden(), Hidden(sync=True)
    plain.setup(torch.device("cpu"))
    synced.setup(torch.device("cpu"))
    x = load_image_set("builtin", size=128, count=6, split="train").images.float() / 255
    msg = torch.randint(0, 2, (6, 30), generator=torch.Generator().manual_seed(1)).float()
    return plain, synced, msg, quantize_8bit(plain.embed(x, msg))


def _acc(logits: torch.Tensor, msg: torch.Tensor) -> float:
    return float(((logits > 0).float() == msg).float().mean())


def test_sync_recovers_resized_crops_that_plain_decoding_loses(marked) -> None:
    plain, synced, msg, y = marked
    z = quantize_8bit(Crop().apply(y, 0.6, gen=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        assert _acc(plain.extract(z), msg) < 0.65
        assert _acc(synced.extract(z), msg) > 0.85
        assert _acc(synced.extract(y), msg) == 1.0, "an unattacked image keeps its plain reading"


def test_sync_is_differentiable_and_keeps_shapes(marked) -> None:
    _, synced, msg, y = marked
    z = y[:2].clone().requires_grad_(True)
    logits = synced.extract(z)
    assert logits.shape == (2, 30)
    logits.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [{"sync": "yes"}, {"sync": True, "work_size": 64}])
def test_sync_params_are_validated(bad: dict) -> None:
    with pytest.raises(WmbenchError, match="sync"):
        Hidden(**{**Hidden.tiny_params(), **bad})


def test_unknown_param_error_lists_sync_and_psnr_target() -> None:
    with pytest.raises(WmbenchError, match=r"params\.bogus: unknown key \(known: .*psnr_target, sync"):
        Hidden(**{**Hidden.tiny_params(), "bogus": 1})
