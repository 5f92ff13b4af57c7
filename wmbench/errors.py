"""wmbench's exception types, in a module that imports nothing heavy.

Why a module of their own: the command line catches ``WmbenchError`` in every command, and importing it from
``wmbench.api`` (which imports torch) made ``wmbench --help`` pay for torch.  ``wmbench.api`` re-exports both.
"""

from __future__ import annotations


class WmbenchError(Exception):
    """An error a user can act on: the message says which file/key/name is wrong and what to do."""


class SkipCell(WmbenchError):
    """Raised by an attack or method that cannot run here (e.g. weights missing offline): the runner records the
    message in the manifest, skips the cells, and goes on."""
