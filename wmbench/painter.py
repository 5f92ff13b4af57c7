"""Report figures drawn by a helper process that starts with the run, so matplotlib's import (~0.7 s), its first
draw (fonts, ~0.5 s) and the figures themselves overlap the run and the report's tables instead of adding to them.

``Painter.start()`` launches ``python -m wmbench.painter``; it imports ``wmbench.plots``, draws a throwaway figure
and then draws what it is sent: pickled ``(function name in wmbench.plots, args, kwargs)`` jobs on its stdin, one
pickled ``("ok", result)`` or ``("err", message)`` reply per job on its stdout.  The parent's ``draw`` returns a
future.  Anything going wrong with the helper (it could not start, died, replied with an error) makes that job, and
every later one, run in the parent instead: the report never depends on the helper.  The helper exits when its
stdin closes, so it cannot outlive the run.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, BinaryIO

#: what the report hands its figures to: ``draw(name in wmbench.plots, *args, **kwargs) -> Future``
Draw = Callable[..., Future]


def draw_here(fn: str, *args: Any, **kwargs: Any) -> Future:
    """Draw ``wmbench.plots.<fn>`` in this process.  -> a resolved future"""
    from wmbench import plots

    f: Future = Future()
    try:
        f.set_result(getattr(plots, fn)(*args, **kwargs))
    except BaseException as e:  # noqa: BLE001 - handed to whoever reads the future
        f.set_exception(e)
    return f


class Painter:
    """A helper process that draws ``wmbench.plots`` figures; ``draw`` falls back to this process on any trouble."""

    def __init__(self, proc: subprocess.Popen | None) -> None:
        self.proc = proc
        self._pending: deque[tuple[Future, tuple]] = deque()
        self._lock = threading.Lock()
        self._broken = proc is None
        if proc is not None:
            threading.Thread(
                target=self._read, args=(proc.stdout,), daemon=True, name="wmbench-painter"
            ).start()

    @classmethod
    def start(cls, force: bool = False) -> Painter:
        """Launch the helper unless matplotlib is already loaded here (a second run in one process: drawing here
        costs no import; ``force`` launches it anyway) or ``WMBENCH_PAINTER=0``."""
        if os.environ.get("WMBENCH_PAINTER") == "0" or ("matplotlib" in sys.modules and not force):
            return cls(None)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "wmbench.painter"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "MPLBACKEND": "Agg"},
            )
        except OSError:
            return cls(None)
        return cls(proc)

    def draw(self, fn: str, *args: Any, **kwargs: Any) -> Future:
        """Draw ``wmbench.plots.<fn>(*args, **kwargs)``; the future holds its return value (a path or None)."""
        job = (fn, args, kwargs)
        with self._lock:
            if not self._broken:
                f: Future = Future()
                try:
                    assert self.proc is not None and self.proc.stdin is not None
                    self._pending.append((f, job))
                    pickle.dump(job, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                    self.proc.stdin.flush()
                    return f
                except (OSError, ValueError, pickle.PicklingError):
                    self._pending.pop()
                    self._broken = True
        return draw_here(fn, *args, **kwargs)

    def _read(self, stdout: BinaryIO) -> None:
        """Resolve the pending futures in order; on EOF or a garbled reply, redo what is left locally."""
        while True:
            try:
                status, value = pickle.load(stdout)
            except Exception:  # noqa: BLE001 - any failure to read means the helper is gone
                break
            with self._lock:
                f, job = self._pending.popleft()
            if status == "ok":
                f.set_result(value)
            else:  # the helper could not draw it: draw it here, where the error (if any) is the real one
                self._settle(f, job)
        with self._lock:
            self._broken = True
            left = list(self._pending)
            self._pending.clear()
        for f, job in left:
            self._settle(f, job)

    @staticmethod
    def _settle(f: Future, job: tuple) -> None:
        fn, args, kwargs = job
        g = draw_here(fn, *args, **kwargs)
        if g.exception() is not None:
            f.set_exception(g.exception())  # type: ignore[arg-type]
        else:
            f.set_result(g.result())

    def close(self) -> None:
        """Close the helper's stdin (it exits) once every figure is in."""
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass


def _serve() -> None:
    """The helper: import and warm up matplotlib, then draw each job read from stdin."""
    from wmbench import plots

    plots.warm_up()
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            fn, args, kwargs = pickle.load(inp)
        except EOFError:
            out.flush()
            os._exit(0)  # nothing left to draw: skip tearing matplotlib down module by module
        try:
            reply: tuple = ("ok", getattr(plots, fn)(*args, **kwargs))
        except Exception as e:  # noqa: BLE001 - reported back; the parent redraws it itself
            reply = ("err", f"{type(e).__name__}: {e}")
        pickle.dump(reply, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()


if __name__ == "__main__":
    _serve()
