"""Checkpoints written by ``wmbench train``: where a model's weights come from and what architecture they hold.

One policy for every trained model (methods and attack models): ``params.checkpoint`` (a path, which must exist),
else the shipped ``wmbench/weights/<stem>.safetensors`` if installed, else none (the caller raises SkipCell or
builds a seeded random net).  The safetensors metadata names the model (``wmbench_method``) and holds its
architecture params as JSON; params given in a suite must agree with them.
"""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from wmbench.api import WmbenchError

WEIGHTS_PACKAGE = "wmbench.weights"


def shipped(stem: str) -> Path | None:
    """The installed ``wmbench/weights/<stem>.safetensors``, or None."""
    res = importlib.resources.files(WEIGHTS_PACKAGE) / f"{stem}.safetensors"
    return Path(str(res)) if res.is_file() else None


def shipped_weights() -> dict[str, str]:
    """Every shipped model's sha256 as its card records it: stem -> the file's hash; a diffusers folder -> the
    hash of its files' hashes.  A run keeps this in its manifest, so a resume after the shipped weights changed
    (a newer wmbench) is refused instead of mixing two models' results in one table."""
    import hashlib

    root = importlib.resources.files(WEIGHTS_PACKAGE)
    out: dict[str, str] = {}
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        try:
            if entry.is_file() and entry.name.endswith(".json"):
                sha = json.loads(entry.read_text()).get("file_sha256")
                if isinstance(sha, str):
                    out[entry.name.removesuffix(".json")] = sha
            elif entry.is_dir() and (card := entry / "wmbench_card.json").is_file():
                files = json.loads(card.read_text()).get("files")
                if isinstance(files, dict):
                    blob = json.dumps(files, sort_keys=True).encode()
                    out[entry.name] = hashlib.sha256(blob).hexdigest()
        except (OSError, ValueError):
            continue  # an unreadable card: the model's own loading reports it
    return out


def check_init(who: str, init: str | None, checkpoint_given: bool, what: str = "a checkpoint") -> None:
    """``init`` is "random" (a seeded random-init net: tests and the trainer) or absent, never beside a checkpoint."""
    if init not in (None, "random"):
        raise WmbenchError(f"{who}: init must be 'random' or absent, got {init!r}")
    if init == "random" and checkpoint_given:
        raise WmbenchError(f"{who}: give either init: random or {what}, not both")


def locate(who: str, checkpoint: str | None, stem: str) -> Path | None:
    """``params.checkpoint`` (must exist), else the shipped file ``stem``, else None.  ``who``: "method 'x'"."""
    if checkpoint is None:
        return shipped(stem)
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise WmbenchError(f"{who}: params.checkpoint not found: {path}")
    return path


def read_metadata(who: str, path: Path) -> dict[str, str]:
    """The safetensors metadata of ``path`` (WmbenchError if it is not a readable safetensors file)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise WmbenchError(f"{who}: cannot read {path} as safetensors: {e}") from None


def read_arch(who: str, path: Path, accepted: Collection[str]) -> tuple[str, dict[str, Any]]:
    """(model name, architecture params) of a checkpoint written for one of the ``accepted`` models."""
    meta = read_metadata(who, path)
    name = meta.get("wmbench_method")
    if name not in accepted or "params" not in meta:
        raise WmbenchError(
            f"{who}: {path} is not a {' or '.join(accepted)} checkpoint written by `wmbench train` "
            f"(metadata wmbench_method={name!r})"
        )
    return str(name), json.loads(meta["params"])


def check_agrees(
    who: str,
    given: Mapping[str, Any],
    stored: Mapping[str, Any],
    path: Path | None,
    ignore: Collection[str] = (),
) -> None:
    """Suite params that the checkpoint also records must have its values (``ignore``: inference-only keys)."""
    for k, v in given.items():
        if k in stored and stored[k] != v and k not in ignore:
            raise WmbenchError(
                f"{who}: param {k}={v!r} disagrees with the checkpoint {path} ({k}={stored[k]!r}); drop the "
                "param or use a matching checkpoint"
            )
