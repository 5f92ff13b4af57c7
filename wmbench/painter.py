"""Report figures drawn by a helper process that starts with the run, so matplotlib's import (~0.7 s), its first
draw (fonts, ~0.5 s) and the figures themselves overlap the run and the report's tables instead of adding to them.

``Painter.start()`` launches ``python -P -m wmbench.painter`` with this process's ``sys.path`` (so it imports the
same wmbench, pandas and matplotlib); it imports ``wmbench.plots``, draws a throwaway figure, then draws what it is
sent: pickled ``(function name in wmbench.plots, args, kwargs)`` jobs on its stdin, one pickled ``("ok", result)``
or ``("err", message)`` reply per job on its stdout.  ``draw`` never blocks (a writer thread feeds the pipe) and
returns a handle whose ``result()`` gives the figure's path.  Anything going wrong with the helper (it could not
start, a job does not pickle, it died, replied with an error, or gave no answer within ``TIMEOUT`` seconds) makes
that figure, and once the helper is gone every later one, drawn in this process, always on the thread that asks
for the result (matplotlib is not thread-safe): the report never depends on the helper.  The helper exits when its
stdin closes, so it cannot outlive the run; ``close`` reaps it.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, BinaryIO

#: seconds a figure may take in the helper before it is given up and drawn here
TIMEOUT = 120.0


class _Redraw:
    """A reply meaning "draw this job here" (the helper failed on it, or is gone)."""

    def __init__(self, job: tuple) -> None:
        self.job = job


class Drawn:
    """A figure being drawn; ``result()`` -> what ``wmbench.plots.<fn>`` returned (a path, or None)."""

    def __init__(self, job: tuple, future: Future | None = None, painter: Painter | None = None) -> None:
        self.job, self.future, self.painter = job, future, painter

    def result(self) -> Any:
        if self.future is None:  # drawn here
            fn, args, kwargs = self.job
            from wmbench import plots

            return getattr(plots, fn)(*args, **kwargs)
        try:
            value = self.future.result(timeout=TIMEOUT)
        except FutureTimeout:  # alive but stuck: stop it; its reader hands every pending job back
            assert self.painter is not None
            self.painter.kill()
            value = self.future.result(timeout=TIMEOUT)
        if isinstance(value, _Redraw):
            assert self.painter is not None
            self.painter.fallbacks += 1
            return Drawn(value.job).result()
        return value


#: what the report hands its figures to: ``draw(name in wmbench.plots, *args, **kwargs) -> Drawn``
Draw = Callable[..., Drawn]


def draw_here(fn: str, *args: Any, **kwargs: Any) -> Drawn:
    """``wmbench.plots.<fn>(*args, **kwargs)`` drawn in this process when its result is asked for."""
    return Drawn((fn, args, kwargs))


class Painter:
    """A helper process that draws ``wmbench.plots`` figures; see the module docstring for the fallbacks."""

    def __init__(self, proc: subprocess.Popen | None) -> None:
        self.proc = proc
        self.fallbacks = 0  # figures drawn here although the helper was asked (tests: 0 when it works)
        self._pending: deque[tuple[Future, tuple]] = deque()
        self._lock = threading.Lock()
        self._broken = proc is None
        self._out: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        if proc is not None:
            threading.Thread(target=self._read, args=(proc.stdout,), daemon=True, name="painter-in").start()
            threading.Thread(target=self._write, args=(proc.stdin,), daemon=True, name="painter-out").start()

    @classmethod
    def start(cls, force: bool = False) -> Painter:
        """Launch the helper unless matplotlib is already loaded here (a second run in one process: drawing here
        costs no import; ``force`` launches it anyway) or ``WMBENCH_PAINTER=0``."""
        if os.environ.get("WMBENCH_PAINTER") == "0" or ("matplotlib" in sys.modules and not force):
            return cls(None)
        path = os.pathsep.join(p for p in sys.path if isinstance(p, str) and p)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "wmbench.painter"],  # -P: not the current directory first
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "MPLBACKEND": "Agg", "PYTHONPATH": path},
            )
        except Exception:  # noqa: BLE001 - no helper (no executable, no fork): draw here
            return cls(None)
        return cls(proc)

    def draw(self, fn: str, *args: Any, **kwargs: Any) -> Drawn:
        """Hand ``wmbench.plots.<fn>(*args, **kwargs)`` to the helper (or draw it here); never blocks."""
        job = (fn, args, kwargs)
        try:
            blob = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - an argument that does not pickle: this one is drawn here
            return draw_here(fn, *args, **kwargs)
        with self._lock:
            if self._broken:
                return draw_here(fn, *args, **kwargs)
            f: Future = Future()
            self._pending.append((f, job))
            self._out.put(blob)
        return Drawn(job, f, self)

    def _write(self, stdin: BinaryIO) -> None:
        """Feed the helper's stdin from the queue (``None``: close it); a broken pipe stops the helper."""
        while (blob := self._out.get()) is not None:
            try:
                stdin.write(blob)
                stdin.flush()
            except (OSError, ValueError):
                self.kill()
                return
        try:
            stdin.close()
        except OSError:
            pass

    def _read(self, stdout: BinaryIO) -> None:
        """Resolve the pending futures in order; errors and, on EOF, every job left come back as ``_Redraw``."""
        while True:
            try:
                status, value = pickle.load(stdout)
            except Exception:  # noqa: BLE001 - any failure to read means the helper is gone
                break
            with self._lock:
                if not self._pending:
                    break
                f, job = self._pending.popleft()
            f.set_result(value if status == "ok" else _Redraw(job))
        with self._lock:
            self._broken = True
            left = list(self._pending)
            self._pending.clear()
        for f, job in left:
            f.set_result(_Redraw(job))

    def kill(self) -> None:
        """Stop the helper now (its pending jobs are then drawn here)."""
        with self._lock:
            self._broken = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def close(self) -> None:
        """Let the helper finish what it was sent and exit, then reap it (killed if it takes over 10 s)."""
        if self.proc is None:
            return
        self._out.put(None)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


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
