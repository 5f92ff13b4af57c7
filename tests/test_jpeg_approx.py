"""The differentiable JPEG stand-ins against real JPEG (PIL/libjpeg)."""

from __future__ import annotations

import torch
from wmbench.attacks.compression import Jpeg
from wmbench.attacks.jpeg_approx import JpegDiff, JpegMask, _dct_matrix, block_dct_lowpass

from wmbench.data import load_image_set


def _photos() -> torch.Tensor:
    return load_image_set("builtin", size=64, count=8, split="eval").images.float() / 255.0


def test_jpeg_mask_keep_8_is_identity_and_masks_high_frequencies() -> None:
    x = torch.rand(2, 3, 40, 24, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(block_dct_lowpass(x, (8, 8, 8)), x, atol=1e-5)
    # grey (luma-only) blocks holding one DCT basis pattern: (6, 6) is removed at keep 5, (4, 4) survives
    d = _dct_matrix().float()
    for k, kept in ((6, False), (4, True)):
        block = 0.5 + 0.2 * torch.outer(d[k], d[k]) / torch.outer(d[k], d[k]).abs().max()
        img = block.repeat(2, 2).expand(1, 3, 16, 16)
        y = JpegMask().apply(img, 5, gen=torch.Generator())
        assert torch.allclose(y, img if kept else torch.full_like(y, 0.5), atol=1e-4)


def test_jpeg_mask_fewer_coefficients_distort_more() -> None:
    x, gen = _photos(), torch.Generator()
    errs = [(JpegMask().apply(x, k, gen=gen) - x).abs().mean().item() for k in (8, 6, 4, 2)]
    assert errs == sorted(errs) and errs[0] > 0  # chroma stays low-passed at 8


def test_jpeg_diff_is_close_to_real_jpeg() -> None:
    x, gen = _photos(), torch.Generator()
    real = Jpeg().apply(x, 50, gen=gen)
    approx = JpegDiff().apply(x, 50, gen=gen)
    mask = JpegMask().apply(x, 5, gen=gen)
    mae_diff = (approx - real).abs().mean().item()
    assert mae_diff < 0.02
    assert mae_diff < (mask - real).abs().mean().item(), "kornia's codec should beat JPEG-Mask"


def test_odd_sizes_and_gradients() -> None:
    x = torch.rand(2, 3, 37, 21, generator=torch.Generator().manual_seed(0), requires_grad=True)
    for atk, s in ((JpegMask(), 4), (JpegDiff(), 50)):
        y = atk.apply(x, s, gen=torch.Generator())
        assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
        (g,) = torch.autograd.grad(y.sum(), x)
        assert g.abs().sum() > 0


def test_jpeg_st_has_real_jpeg_values_and_the_differentiable_gradient() -> None:
    """jpeg_st: what libjpeg really gives (the jpeg attack's values, bit for bit), steered by kornia's gradient."""
    from wmbench.registry import attacks

    g = torch.Generator().manual_seed(0)
    x = torch.round(torch.rand(2, 3, 40, 56, generator=g) * 255) / 255
    st, real, diff = (attacks().get(n)() for n in ("jpeg_st", "jpeg", "jpeg_diff"))
    weights = torch.rand(x.shape, generator=g)
    with torch.no_grad():
        assert torch.equal(st.apply(x, 50, gen=g), real.apply(x, 50, gen=g))
    grads = []
    for atk in (st, diff):
        xr = x.clone().requires_grad_(True)
        y = atk.apply(xr, 50, gen=g)
        (y * weights).sum().backward()
        grads.append(xr.grad)
        if atk is st:
            assert torch.equal(y.detach(), real.apply(x, 50, gen=g))
    assert torch.equal(grads[0], grads[1]) and grads[0].abs().sum() > 0
