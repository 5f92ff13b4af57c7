"""Class metadata of built-in plugins read from their source, without importing them.

Why: ``wmbench list`` prints constants (name, unit, default strengths, …) that every built-in declares as
literals in its class body, yet importing the classes imports torch, kornia and friends (seconds).  This module
parses the source with ``ast`` instead, following base classes defined in the same module or imported from
another ``wmbench`` module, and gives up (returns None, so the caller imports the class) at anything it cannot
read for certain: a value that is not a literal, a class decorator or metaclass, ``__init_subclass__``, a base
it cannot find.  Only ``wmbench.*`` targets are read this way (``tests/test_cli.py`` checks every built-in
against its imported class); third-party entry points are always imported.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wmbench.registry import Registry

#: marks an attribute assigned something that is not a literal
_UNKNOWN = object()


@lru_cache(maxsize=64)
def _module_ast(mod_name: str) -> ast.Module | None:
    try:
        # imports the parent packages only (wmbench.attacks: a dict)
        spec = importlib.util.find_spec(mod_name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, encoding="utf-8") as f:
        return ast.parse(f.read(), spec.origin)


def _imports(tree: ast.Module, mod_name: str) -> dict[str, tuple[str, str]]:
    """Names bound by ``from X import Y [as Z]`` at module level -> (module, name)."""
    out: dict[str, tuple[str, str]] = {}
    package = mod_name.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                out[alias.asname or alias.name] = (base, alias.name)
    return out


def _class_attrs(mod_name: str, cls_name: str, depth: int = 0) -> dict[str, Any] | None:
    """Literal class-level attributes of ``mod_name.cls_name`` and its wmbench bases (later ones win)."""
    tree = _module_ast(mod_name)
    if tree is None or depth > 16:
        return None
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name), None)
    if node is None or node.decorator_list or node.keywords:
        return None
    attrs: dict[str, Any] = {}
    imports = _imports(tree, mod_name)
    for base in reversed(node.bases):  # the first base wins over later ones, as in the MRO of simple cases
        root = base.value if isinstance(base, ast.Subscript) else base  # Generic[T] -> Generic
        if not isinstance(root, ast.Name):
            if isinstance(root, ast.Attribute):  # e.g. nn.Module: outside wmbench, declares none of ours
                continue
            return None
        if any(isinstance(n, ast.ClassDef) and n.name == root.id for n in tree.body):
            inherited = _class_attrs(mod_name, root.id, depth + 1)
        elif root.id in imports and imports[root.id][0].startswith("wmbench"):
            inherited = _class_attrs(*imports[root.id], depth + 1)
        elif root.id in imports or root.id in ("object", "Exception"):
            continue  # ABC, Generic, …: declare none of the attributes read here
        else:
            return None
        if inherited is None:
            return None
        attrs.update(inherited)
    for stmt in node.body:
        if isinstance(stmt, ast.FunctionDef) and stmt.name == "__init_subclass__":
            return None
        target, value = None, None
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            target, value = stmt.targets[0].id, stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            target, value = stmt.target.id, stmt.value
        elif isinstance(stmt, ast.Assign):
            return None  # a, b = …: not worth reading
        if target is not None:
            try:
                attrs[target] = ast.literal_eval(value)
            except ValueError:
                attrs[target] = _UNKNOWN
    return attrs


def static_meta(target: str, fields: tuple[str, ...]) -> dict[str, Any] | None:
    """``fields`` of the class a registry target ``"wmbench.module:Class"`` names, read from its source, or None
    when any of them cannot be read for certain (then import the class)."""
    mod_name, _, cls_name = target.partition(":")
    if not mod_name.startswith("wmbench.") or not cls_name:
        return None
    try:
        attrs = _class_attrs(mod_name, cls_name)
    except (OSError, SyntaxError):
        return None
    if attrs is None or any(attrs.get(f, _UNKNOWN) is _UNKNOWN for f in fields):
        return None
    return {f: attrs[f] for f in fields}


def plugin_meta(reg: Registry, name: str, fields: tuple[str, ...]) -> dict[str, Any]:
    """``fields`` of a registered plugin: read from the source of a built-in when possible, else from the
    imported class (a missing attribute reads "?")."""
    target = reg.target(name)
    meta = static_meta(target, fields) if isinstance(target, str) else None
    if meta is None:
        cls = reg.get(name)
        meta = {f: getattr(cls, f, "?") for f in fields}
    return meta
