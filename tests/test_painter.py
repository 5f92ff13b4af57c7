"""The report-figure helper process (wmbench.painter): same figures as drawing in process, and any trouble with
the helper falls back to drawing here, so a report never depends on it."""

from __future__ import annotations

import pandas as pd
import pytest

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
    p.close()
    p.proc.wait(timeout=30)


def test_helper_draws_the_same_png_as_this_process(painter, tmp_path) -> None:
    there = painter.draw("heatmap", _cells(), ["a", "b"], tmp_path / "there.png").result(timeout=60)
    here = draw_here("heatmap", _cells(), ["a", "b"], tmp_path / "here.png").result()
    assert there == tmp_path / "there.png" and not painter._broken  # drawn by the helper
    assert there.read_bytes() == here.read_bytes()


def test_a_dead_helper_means_drawing_here(painter, tmp_path) -> None:
    painter.proc.kill()
    painter.proc.wait(timeout=30)
    futures = [painter.draw("heatmap", _cells(), ["a", "b"], tmp_path / f"{i}.png") for i in range(3)]
    assert [f.result(timeout=60) for f in futures] == [tmp_path / f"{i}.png" for i in range(3)]
    assert all((tmp_path / f"{i}.png").stat().st_size > 0 for i in range(3))


def test_a_figure_the_helper_cannot_draw_raises_the_real_error_here(painter, tmp_path) -> None:
    bad = _cells().drop(columns=["family"])
    f = painter.draw("heatmap", bad, ["a", "b"], tmp_path / "x.png")
    with pytest.raises(KeyError, match="family"):
        f.result(timeout=60)
    ok = painter.draw("heatmap", _cells(), ["a", "b"], tmp_path / "y.png")  # the helper keeps serving
    assert ok.result(timeout=60) == tmp_path / "y.png" and not painter._broken


def test_no_helper_when_matplotlib_is_already_here_or_switched_off(monkeypatch) -> None:
    import matplotlib  # noqa: F401 - loaded here: a helper would import it a second time for nothing

    assert Painter.start().proc is None
    monkeypatch.setenv("WMBENCH_PAINTER", "0")
    assert Painter.start(force=True).proc is None
