"""Pydantic errors as messages a user can act on: file, key path, and a did-you-mean for unknown keys.

Shared by suites and training configs, so every YAML wmbench reads reports its mistakes the same way.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from wmbench.api import WmbenchError


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


def format_validation_error(path: Path | str, err: ValidationError, root: type[BaseModel], what: str) -> str:
    """One line per problem: ``FILE: invalid WHAT:`` then ``  key.path: message``."""
    lines = [f"{path}: invalid {what}:"]
    for e in err.errors():
        where = key_path(tuple(e["loc"]))
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(e["loc"][-1]), fields_at(root, tuple(e["loc"])), n=1)
            lines.append(f"  {where}: unknown key" + (f" (did you mean {close[0]!r}?)" if close else ""))
        else:
            lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def read_yaml_mapping(path: Path, what: str) -> dict:
    """``yaml.safe_load`` a file that must hold a mapping; errors name the file and say what it should be."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise WmbenchError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise WmbenchError(f"{path}: {what}")
    return data
