"""Pydantic errors as messages a user can act on: file, key path, and a did-you-mean for unknown keys.

Shared by suites and training configs, so every YAML wmbench reads reports its mistakes the same way.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from wmbench.errors import WmbenchError


def key_path(loc: tuple) -> str:
    """('attacks', 0, 'strenghts') -> 'attacks[0].strenghts'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def fields_at(root: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model that holds the last key of ``loc`` (for did-you-mean hints)."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        nxt = None
        for cand in (field.annotation, *getattr(field.annotation, "__args__", ())):
            for inner in (cand, *getattr(cand, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    nxt = inner
        if nxt is None:
            return []
        model = nxt
    return list(getattr(model, "model_fields", {}))


def problems(err: ValidationError, root: type[BaseModel]) -> list[tuple[tuple, str]]:
    """(key location, message) per problem; an unknown key gets the closest known one as a did-you-mean."""
    out: list[tuple[tuple, str]] = []
    for e in err.errors():
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), fields_at(root, loc), n=1)
            out.append((loc, "unknown key" + (f" (did you mean {close[0]!r}?)" if close else "")))
        else:
            out.append((loc, str(e["msg"]).removeprefix("Value error, ")))
    return out


def format_validation_error(path: Path | str, err: ValidationError, root: type[BaseModel], what: str) -> str:
    """One line per problem: ``FILE: invalid WHAT:`` then ``  key.path: message``."""
    lines = [f"{path}: invalid {what}:"]
    lines += [f"  {key_path(loc)}: {msg}" for loc, msg in problems(err, root)]
    return "\n".join(lines)


#: bounds on what a YAML file wmbench reads may be: suites and configs are a few KB
MAX_YAML_BYTES = 1_000_000
MAX_YAML_NODES = 100_000  # after expanding aliases (an "alias bomb" is small on disk, huge in memory)
MAX_YAML_DEPTH = 64


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML would silently keep the last)."""


def _no_duplicate_keys(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for k_node, _ in node.value:
        k = loader.construct_object(k_node, deep=deep)
        if isinstance(k, list | dict):
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", k_node.start_mark
            )
        if k in seen:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {k!r} appears twice in one mapping (the first value would be lost)",
                k_node.start_mark,
            )
        seen[k] = True
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicate_keys)


def _check_size(data: Any, path: Path) -> None:
    """Count nodes with aliases expanded (bounded walk): refuse alias bombs and absurd nesting before any use."""
    budget = [MAX_YAML_NODES]
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        obj, depth = stack.pop()
        budget[0] -= 1
        if budget[0] < 0:
            raise WmbenchError(f"{path}: too large after expanding YAML aliases (> {MAX_YAML_NODES} values)")
        if depth > MAX_YAML_DEPTH:
            raise WmbenchError(f"{path}: nested more than {MAX_YAML_DEPTH} levels deep")
        if isinstance(obj, dict):
            stack.extend((v, depth + 1) for v in obj.values())
        elif isinstance(obj, list):
            stack.extend((v, depth + 1) for v in obj)


def _read_text(path: Path) -> str:
    """The file as UTF-8 text, or an error that says what it is instead."""
    try:
        size = path.stat().st_size
        if size > MAX_YAML_BYTES:
            raise WmbenchError(
                f"{path}: {size} bytes; a suite or config is at most {MAX_YAML_BYTES} bytes of YAML"
            )
        raw = path.read_bytes()
    except OSError as e:
        raise WmbenchError(f"{path}: cannot read ({e.strerror})") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise WmbenchError(f"{path}: UTF-16 text; save it as UTF-8")
    if b"\x00" in raw:
        raise WmbenchError(f"{path}: a binary file, not YAML text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise WmbenchError(
            f"{path}: not UTF-8 text (byte {e.start}: {raw[e.start : e.start + 1]!r}); save it as UTF-8"
        ) from None


def read_yaml_mapping(path: Path, what: str) -> dict:
    """Load a YAML file that must hold a mapping (safe, UTF-8, no duplicate keys, bounded size and depth);
    errors name the file and say what it should be."""
    path = Path(path)
    text = _read_text(path)
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise WmbenchError(f"{path}: not valid YAML: {e}") from None
    except RecursionError:
        raise WmbenchError(f"{path}: nested more than {MAX_YAML_DEPTH} levels deep") from None
    if not isinstance(data, dict):
        raise WmbenchError(f"{path}: {what}")
    _check_size(data, path)
    return data
