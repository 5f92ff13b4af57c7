"""PSNR matching: per image, on the 8-bit grid, never under the target, and close to it when reachable."""

from __future__ import annotations

import pytest
import torch
from wmbench.methods.end2 import End2
from wmbench.methods.hidden import Hidden

from wmbench import metrics as M
from wmbench.api import WmbenchError, quantize_8bit
from wmbench.quality import psnr_per_image, scale_to_psnr


def _x(n: int = 4, s: int = 32) -> torch.Tensor:
    return quantize_8bit(torch.rand(n, 3, s, s, generator=torch.Generator().manual_seed(0)))


def _msg(n: int, k: int) -> torch.Tensor:
    return torch.randint(0, 2, (n, k), generator=torch.Generator().manual_seed(1)).float()


def test_psnr_per_image_matches_torchmetrics() -> None:
    x = _x()
    y = quantize_8bit(x + 0.03 * torch.randn_like(x))
    assert torch.allclose(psnr_per_image(x, y), M.psnr(x, y), atol=1e-3)


def test_match_reaches_the_target_from_both_sides() -> None:
    x = _x()
    scale = torch.tensor([0.002, 0.01, 0.05, 0.2]).view(-1, 1, 1, 1)  # residuals from ~55 dB down to ~14 dB
    img = x + scale * torch.randn_like(x)
    out = scale_to_psnr(x, img, 30.0, max_scale=4.0)
    p = psnr_per_image(x, out)
    assert torch.equal(out, quantize_8bit(out))
    assert (p >= 30.0).all(), p
    # the 0.002 residual cannot reach 30 dB within x4 (it stays as strong as allowed); the others land on it
    assert p[0] > 40 and ((p[1:] - 30.0) < 0.1).all(), p


def test_floor_only_ever_weakens() -> None:
    x = _x()
    img = x + torch.tensor([0.005, 0.1, 0.1, 0.1]).view(-1, 1, 1, 1) * torch.randn_like(x)
    out = scale_to_psnr(x, img, 30.0, max_scale=1.0)
    assert torch.equal(out[0], quantize_8bit(img)[0]), "already above the floor: untouched"
    assert ((psnr_per_image(x[1:], out[1:]) - 30.0).abs() < 0.1).all()


@pytest.mark.parametrize("cls", [Hidden, End2])
@pytest.mark.parametrize("target", [28.0, 38.0])
def test_learned_methods_embed_at_the_psnr_target(cls: type[Hidden], target: float) -> None:
    m = cls(**{**cls.tiny_params(), "psnr_target": target})
    m.setup(torch.device("cpu"))
    x = _x()
    y = m.embed(x, _msg(4, m.nbits))
    p = psnr_per_image(x, quantize_8bit(y))
    assert ((p >= target) & (p < target + 0.2)).all(), p
    assert m.params["psnr_target"] == target


@pytest.mark.parametrize("bad", [True, "36", 5.0, 120])
def test_psnr_target_is_validated(bad: object) -> None:
    with pytest.raises(WmbenchError, match="psnr_target"):
        Hidden(**{**Hidden.tiny_params(), "psnr_target": bad})
