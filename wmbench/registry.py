"""A name -> class registry with lazy ``"module:Class"`` targets, entry points and did-you-mean errors.

Why lazy strings: importing wmbench must not import onnxruntime, diffusers or a model zoo just to list names.
"""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from wmbench.errors import WmbenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names (and aliases) to plugin classes; third-party packages add theirs via an entry-point group."""

    def __init__(self, kind: str, group: str) -> None:
        self.kind = kind
        self.group = group
        self._targets: dict[str, str | type[T]] = {}
        self._loaded: dict[str, type[T]] = {}
        self._eps_loaded = False

    def register(self, name: str, target: str | type[T]) -> None:
        if name in self._targets and self._targets[name] != target:
            raise WmbenchError(f"{self.kind} {name!r} is already registered to {self._targets[name]!r}")
        self._targets[name] = target

    def _load_entry_points(self) -> None:
        if self._eps_loaded:
            return
        self._eps_loaded = True
        for ep in entry_points(group=self.group):
            if ep.name not in self._targets:
                self._targets[ep.name] = ep.value

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._targets)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._targets

    def suggest(self, name: str) -> list[str]:
        return difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)

    def unknown_message(self, name: str) -> str:
        close = self.suggest(name)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(self.names())}."

    def target(self, name: str) -> str | type[T]:
        """What ``name`` is registered to (a lazy ``"module:Class"`` string or a class), without importing it."""
        self._load_entry_points()
        if name not in self._targets:
            raise WmbenchError(self.unknown_message(name))
        return self._targets[name]

    def get(self, name: str) -> type[T]:
        self._load_entry_points()
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._targets:
            raise WmbenchError(self.unknown_message(name))
        target = self._targets[name]
        if isinstance(target, str):
            mod_name, _, attr = target.partition(":")
            try:
                cls = getattr(importlib.import_module(mod_name), attr)
            except (ImportError, AttributeError) as e:
                raise WmbenchError(f"{self.kind} {name!r}: cannot import {target!r}: {e}") from e
        else:
            cls = target
        self._loaded[name] = cls
        return cls


def _builtin(reg: Registry, table: dict[str, str]) -> Registry:
    for k, v in table.items():
        reg.register(k, v)
    return reg


def methods() -> Registry:
    """The method registry (built-ins from ``wmbench.methods.BUILTIN`` + entry points ``wmbench.methods``)."""
    global _METHODS
    if _METHODS is None:
        from wmbench.methods import BUILTIN

        _METHODS = _builtin(Registry("method", "wmbench.methods"), BUILTIN)
    return _METHODS


def attacks() -> Registry:
    """The attack registry (built-ins from ``wmbench.attacks.BUILTIN`` + entry points ``wmbench.attacks``)."""
    global _ATTACKS
    if _ATTACKS is None:
        from wmbench.attacks import BUILTIN

        _ATTACKS = _builtin(Registry("attack", "wmbench.attacks"), BUILTIN)
    return _ATTACKS


_METHODS: Registry | None = None
_ATTACKS: Registry | None = None
