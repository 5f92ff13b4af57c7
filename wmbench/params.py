"""Plugin params declared once: a pydantic model per plugin (its nested ``Params``), validated in one place.

Why: hand-written checks in each plugin disagreed in style and let ``validate`` pass what the run refused.  A
plugin's ``Params`` model is the single declaration of its params (names, types, defaults, bounds, choices and a
short description); ``Method``/``Attack.__init__`` validate ``**params`` through it (``parse_params``) with the
suites' error style, ``wmbench params`` and ``docs/plugins.md`` print it, and the plugin reads validated values.
Numbers are strict (``true`` or ``"5"`` is no number) and bounded, so an absurd value is refused before any
allocation.  No torch import here: the docs and the CLI read the models without running any plugin.
"""

from __future__ import annotations

import json
import re
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from wmbench.errors import WmbenchError
from wmbench.validation import fields_at, key_path, problems

__all__ = [
    "Int",
    "Num",
    "PluginParams",
    "WeightsStem",
    "param_defaults",
    "params_markdown",
    "params_rows",
    "parse_params",
]

P = TypeVar("P", bound=BaseModel)


class PluginParams(BaseModel):
    """Base of every plugin's params model: an unknown key is an error (with a did-you-mean), never ignored."""

    model_config = ConfigDict(extra="forbid")


def Int(  # noqa: N802 - reads like a type
    default: Any, *, ge: int, le: int, description: str, multiple_of: int | None = None
) -> Any:
    """A bounded integer field (``true`` and ``2.0`` are refused)."""
    return Field(default, strict=True, ge=ge, le=le, multiple_of=multiple_of, description=description)


def Num(  # noqa: N802 - reads like a type
    default: Any,
    *,
    description: str,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A finite number field (an integer is taken as a float; ``true``, ``"1"``, nan and inf are refused)."""
    return Field(
        default, strict=True, allow_inf_nan=False, ge=ge, gt=gt, le=le, lt=lt, description=description
    )


def _weights_stem(v: str) -> str:
    """A stem, not a path or a file name: the run looks for ``wmbench/weights/<v>.safetensors``."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", v) or v.endswith(".safetensors"):
        raise ValueError(
            f"{v!r} is not the stem of a shipped file in wmbench/weights (e.g. 'hidden'); "
            "for a file of your own use params.checkpoint"
        )
    return v


#: the ``weights`` param: the stem of a shipped ``wmbench/weights/<stem>.safetensors``, never a path
WeightsStem = Annotated[str, AfterValidator(_weights_stem)]


def param_defaults(model: type[BaseModel], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Each param's default (labels name only the params that differ from these)."""
    return {
        k: f.get_default(call_default_factory=True) for k, f in model.model_fields.items() if k not in exclude
    }


def format_params_error(who: str, err: ValidationError, model: type[BaseModel]) -> str:
    """``method 'ismark': params.k: Input should be …``: the suites' style, one ``; ``-joined line."""
    parts = []
    for loc, msg in problems(err, model):
        if msg == "unknown key" and fields_at(model, loc):  # no close match: say what is accepted
            msg += f" (known: {', '.join(fields_at(model, loc))})"
        parts.append(f"params.{key_path(loc)}: {msg}" if loc else f"params: {msg}")
    return f"{who}: " + "; ".join(parts)


def parse_params(who: str, model: type[P] | None, params: dict[str, Any]) -> P | None:
    """Validate ``params`` through ``model``; without a model (a plugin that declares none) any param is refused,
    as before models existed.  Raises WmbenchError naming the plugin and the key path."""
    if model is None:
        if params:
            raise WmbenchError(f"{who} takes no params, got {sorted(params)}")
        return None
    try:
        return model.model_validate(params)
    except ValidationError as e:
        raise WmbenchError(format_params_error(who, e, model)) from None


# ----------------------------------------------------------------------------------------------- docs


def _type_name(ann: Any) -> str:
    """A short, stable spelling of a field's type: ``int | null``, ``'linf' | 'l2'``, ``list[str]``."""
    origin, args = get_origin(ann), get_args(ann)
    if ann is type(None):
        return "null"
    if origin is Annotated:
        return _type_name(args[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in args)}]"
    return getattr(ann, "__name__", str(ann)).replace("typing.", "")


def _bounds(field: Any) -> str:
    out = []
    for m in field.metadata:
        for attr, sym in (
            ("ge", "≥"),
            ("gt", ">"),
            ("le", "≤"),
            ("lt", "<"),
            ("min_length", "len ≥"),
            ("max_length", "len ≤"),
        ):
            v = getattr(m, attr, None)
            if v is not None:
                out.append(f"{sym} {v:g}" if isinstance(v, float) else f"{sym} {v}")
    return ", ".join(out)


def params_rows(model: type[BaseModel] | None) -> list[dict[str, str]]:
    """One row per param: name, type, default, bounds, description (for ``wmbench params`` and the docs)."""
    if model is None:
        return []
    rows = []
    for name, f in model.model_fields.items():
        default = "(required)" if f.is_required() else json.dumps(f.get_default(call_default_factory=True))
        rows.append(
            {
                "param": name,
                "type": _type_name(f.annotation),
                "default": default,
                "bounds": _bounds(f),
                "description": f.description or "",
            }
        )
    return rows


def params_markdown(kind: str, names: list[str], models: dict[str, type[BaseModel] | None]) -> str:
    """A markdown section per plugin with its params table (``docs/plugins.md``)."""
    lines = [f"## {kind}", ""]
    for name in names:
        rows = params_rows(models[name])
        lines.append(f"### `{name}`")
        lines.append("")
        if not rows:
            lines += ["No params.", ""]
            continue
        lines += ["| param | type | default | bounds | description |", "|---|---|---|---|---|"]
        for r in rows:
            cells = [f"`{r['param']}`", f"`{r['type']}`", f"`{r['default']}`", r["bounds"], r["description"]]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plugins_markdown() -> str:
    """``docs/plugins.md``: every built-in plugin's params table, from its ``Params`` model (imports them).

    Only wmbench's own plugins: an installed third-party package (or a test registering one) documents its own."""
    from wmbench.registry import attacks, methods

    head = [
        "# Plugin params",
        "",
        "Generated from each plugin's `Params` model by `python -m wmbench.params > docs/plugins.md`;",
        "`tests/test_params.py` checks that this file matches the models. `wmbench params NAME` prints one table.",
        "",
    ]
    parts = []
    for kind, reg in (("Methods", methods()), ("Attacks", attacks())):
        names = [n for n in reg.names() if str(reg.target(n)).startswith("wmbench.")]
        parts.append(params_markdown(kind, names, {n: getattr(reg.get(n), "Params", None) for n in names}))
    return "\n".join(head + parts)


if __name__ == "__main__":
    print(plugins_markdown(), end="")
