"""The report-figure helper process (wmbench.painter): same figures as drawing in process, and any trouble with
the helper falls back to drawing here, so a report never depends on it."""

from __future__ import annotations

import os
import signal
import threading

import pandas as pd
import pytest

from wmbench import painter as painter_mod
from wmbench.painter import Painter, draw_here


def _cells() -> pd.DataFrame:
    """A methods × attacks table as the heatmap reads it."""
    rows = [
        {"method": m, "attack": a, "family": f, "goal": "removal", "bit_acc": v}
        for m, base in (("a", 0.9), ("b", 0.7))
        for a, f, v in (("jpeg", "distortion", base), ("regen", "regeneration", base - 0.1))
    ]
    return pd.DataFrame(rows)


@pytest.fixture
def painter():
    p = Painter.start(force=True)
    assert p.proc is not None
    yield p
    p.kill()
    p.close()


def test_helper_draws_the_same_png_as_this_process(painter, tmp_path) -> None:
    there = painter.draw("heatmap", _cells(), ["a", "b"], tmp_path / "there.png").result()
    here = draw_here("heatmap", _cells(), ["a", "b"], tmp_path / "here.png").result()
    assert there == tmp_path / "there.png" and painter.fallbacks == 0  # drawn by the helper
    assert there.read_bytes() == here.read_bytes()
    painter.close()  # reaped, not left behind
    assert painter.proc.returncode == 0


def test_a_dead_helper_means_drawing_here(painter, tmp_path) -> None:
    pending = painter.draw("heatmap", _cells(), ["a", "b"], tmp_path / "0.png")
    painter.proc.kill()
    painter.proc.wait(timeout=30)
    later = [painter.draw("heatmap", _cells(), ["a", "b"], tmp_path / f"{i}.png") for i in (1, 2)]
    assert [d.result() for d in (pending, *later)] == [tmp_path / f"{i}.png" for i in range(3)]
    assert all((tmp_path / f"{i}.png").stat().st_size > 0 for i in range(3))


def test_a_figure_the_helper_cannot_draw_raises_the_real_error_here(painter, tmp_path) -> None:
    bad = _cells().drop(columns=["family"])
    drawn = painter.draw("heatmap", bad, ["a", "b"], tmp_path / "x.png")
    with pytest.raises(KeyError, match="family"):
        drawn.result()
    assert painter.fallbacks == 1  # the helper said "err"; the parent redrew it and got the real error
    ok = painter.draw("heatmap", _cells(), ["a", "b"], tmp_path / "y.png")  # the helper keeps serving
    assert ok.result() == tmp_path / "y.png" and painter.fallbacks == 1


def test_arguments_that_do_not_pickle_are_drawn_here_and_keep_the_replies_in_step(painter, tmp_path) -> None:
    odd = painter.draw("heatmap", _cells(), ["a", "b"], tmp_path / "odd.png", _lock=threading.Lock())
    with pytest.raises(TypeError, match="_lock"):  # heatmap() has no such argument: drawn here, real error
        odd.result()
    ok = painter.draw("heatmap", _cells(), ["a", "b"], tmp_path / "ok.png")
    assert ok.result() == tmp_path / "ok.png" and painter.fallbacks == 0


def test_a_stuck_helper_is_stopped_and_its_figures_drawn_here(painter, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(painter_mod, "TIMEOUT", 2.0)
    os.kill(painter.proc.pid, signal.SIGSTOP)  # alive, but never answers
    drawn = painter.draw("heatmap", _cells(), ["a", "b"], tmp_path / "s.png")
    assert drawn.result() == tmp_path / "s.png" and painter.fallbacks == 1
    assert painter.proc.wait(timeout=30) != 0  # killed


def test_no_helper_when_matplotlib_is_already_here_or_switched_off(monkeypatch) -> None:
    import matplotlib  # noqa: F401 - loaded here: a helper would import it a second time for nothing

    assert Painter.start().proc is None
    monkeypatch.setenv("WMBENCH_PAINTER", "0")
    assert Painter.start(force=True).proc is None
