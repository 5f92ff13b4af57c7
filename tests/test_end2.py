"""END²: the student never differentiates through a distortion; teacher/student swap and EMA; checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from wmbench.methods.end2 import End2

from wmbench.api import WmbenchError
from wmbench.train import resolve_config, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(**kw: Any) -> End2:
    m = End2(**End2.tiny_params(), **kw)
    m.setup(torch.device("cpu"))
    m.begin_training(lr=1e-3, gen=torch.Generator().manual_seed(0))
    return m


def _x(n: int = 2, s: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, s, s, generator=torch.Generator().manual_seed(1))


def test_student_never_sends_gradients_through_the_distortion() -> None:
    m, seen = _tiny(), []

    def distortion(wm: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
        seen.append((wm.requires_grad, torch.is_grad_enabled()))
        return (wm * 0.9).round()  # a non-differentiable op: no graph may reach it

    m.train_step(_x(), distortion)
    assert seen == [(False, False)], "the distortion got an input attached to the graph"


def test_encoder_gradient_comes_only_through_the_teacher(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the teacher's message/align/image terms off, the student's loss must leave the encoder unchanged."""
    m = _tiny(momentum=1.0, swap_every=0)
    m.set_schedule(lr=1e-2, loss_weights={"message": 0.0, "image": 0.0, "align": 0.0, "student": 1.0})
    enc_before = {k: v.clone() for k, v in m.enc.state_dict().items()}  # type: ignore[union-attr]
    stu_before = {k: v.clone() for k, v in m.dec_s.state_dict().items()}  # type: ignore[union-attr]
    m.train_step(_x(), lambda wm, cover: wm + 0.01)
    enc_after, stu_after = m.enc.state_dict(), m.dec_s.state_dict()  # type: ignore[union-attr]
    params = [k for k in enc_before if "running" not in k and "num_batches" not in k]
    assert all(torch.equal(enc_before[k], enc_after[k]) for k in params)
    assert any(not torch.equal(stu_before[k], stu_after[k]) for k in stu_before)


def test_swap_and_momentum() -> None:
    m = _tiny(swap_every=1, momentum=0.5)
    t0, s0 = m.dec, m.dec_s
    m.train_step(_x(), lambda wm, cover: wm)
    assert m.dec is s0 and m.dec_s is t0, "roles swap after each step"
    m2 = _tiny(swap_every=0, momentum=0.0)  # momentum 0: the teacher becomes a copy of the student
    m2.train_step(_x(), lambda wm, cover: wm)
    for a, b in zip(m2.dec.parameters(), m2.dec_s.parameters(), strict=True):  # type: ignore[union-attr]
        assert torch.equal(a, b)


@pytest.mark.parametrize("decode", ["mean", "teacher", "student"])
def test_decode_modes(decode: str) -> None:
    m = End2(**End2.tiny_params(), decode=decode)
    m.setup(torch.device("cpu"))
    y = _x()
    t, s = m.dec(y), m.dec_s(y)  # type: ignore[misc]
    want = {"mean": 0.5 * (t + s), "teacher": t, "student": s}[decode]
    assert torch.allclose(m.extract(y), want)


def test_bad_params() -> None:
    with pytest.raises(WmbenchError, match="decode"):
        End2(**End2.tiny_params(), decode="max")
    with pytest.raises(WmbenchError, match="momentum"):
        End2(**End2.tiny_params(), momentum=2.0)
    with pytest.raises(WmbenchError, match="discriminator"):
        End2(**End2.tiny_params(), discriminator=True)


def test_trains_and_reloads_identically(tmp_path: Path) -> None:
    data = yaml.safe_load(resolve_config("tiny").read_text())
    data["name"] = "end2tiny"
    data["model"] = {"name": "end2", "params": {**data["model"]["params"]}}
    data["loss_weights"] = {"message": 1.0, "image": 0.7, "student": 1.0, "align": 0.1}
    data["steps"] = 30
    data["log_every"] = 10
    data["checkpoint_every"] = 30
    cfg = tmp_path / "end2tiny.yaml"
    cfg.write_text(yaml.safe_dump(data))
    st = train(cfg, tmp_path / "out")
    rows = [yaml.safe_load(ln) for ln in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    losses = [r["student_loss"] for r in rows if r["kind"] == "train"]
    assert losses[-1] < losses[0]
    m = End2(checkpoint=str(st))
    m.setup(torch.device("cpu"))
    assert m.nbits == 8
    x = _x(2, 48)
    msg = torch.randint(0, 2, (2, 8), generator=torch.Generator().manual_seed(0)).float()
    m2 = End2(checkpoint=str(st))
    m2.setup(torch.device("cpu"))
    assert torch.equal(m.embed(x, msg), m2.embed(x, msg))
    assert torch.equal(m.extract(x), m2.extract(x))
    with pytest.raises(WmbenchError, match="not a hidden checkpoint"):
        from wmbench.methods.hidden import Hidden

        Hidden(checkpoint=str(st))
