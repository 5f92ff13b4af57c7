"""The generic trainer (``wmbench.train``) on the tiny ``hidden`` config, and the ``hidden`` method's weights policy.

Every run here takes a second or two: the tiny config trains an 8-channel net for 12 steps on 32² crops.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from wmbench.methods.hidden import Hidden

from wmbench.api import SkipCell, WmbenchError, quantize_8bit
from wmbench.train import evaluate, load_train_config, resolve_config, train

TINY = resolve_config("tiny")


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(tmp_path: Path, name: str = "cfg.yaml", **changes: Any) -> Path:
    """The tiny config with top-level keys replaced, written to tmp_path."""
    data = yaml.safe_load(TINY.read_text())
    data.update(changes)
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def _rows(out: Path, kind: str = "train") -> list[dict[str, Any]]:
    rows = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "elapsed_s"} for r in rows if r["kind"] == kind]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged tiny config, trained once, uninterrupted."""
    torch.set_num_threads(1)
    return train("tiny", tmp_path_factory.mktemp("tiny") / "out")


def test_loss_decreases(tmp_path: Path) -> None:
    cfg = _config(
        tmp_path,
        steps=40,
        log_every=10,
        checkpoint_every=40,
        warmup={"steps": 0, "ramp_steps": 0},
        noise={"layers": []},
        eval={"size": 32, "count": 4},
    )
    train(cfg, tmp_path / "out")
    rows = _rows(tmp_path / "out")
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert rows[-1]["loss"] < 0.9 * rows[0]["loss"], rows
    assert rows[-1]["message_loss"] < rows[0]["message_loss"], rows


def test_outputs_and_card(tiny_run: Path) -> None:
    out = tiny_run.parent
    assert tiny_run == out / "tiny.safetensors"
    card = json.loads((out / "tiny.json").read_text())
    assert card["method"] == "hidden" and card["nbits"] == 8 and card["steps"] == 12 and card["complete"]
    assert card["config"] == "wmbench/configs/tiny.yaml" and card["train_image_size"] == 32
    assert card["eval"]["split"] == "eval" and card["eval"]["count"] == 4
    for k in ("architecture", "wall_time_s", "device", "command", "data", "file_sha256"):
        assert k in card
    assert [r["step"] for r in _rows(out)] == [2, 4, 6, 8, 10, 12]
    assert [r["step"] for r in _rows(out, "eval")] == [4, 8, 12]


def test_reloaded_checkpoint_gives_identical_outputs(tiny_run: Path) -> None:
    """Weights-only file + metadata -> same nets as the trainer's final state, bit for bit."""
    m = Hidden(checkpoint=str(tiny_run))  # architecture comes from the file's metadata
    m.setup(torch.device("cpu"))
    assert m.nbits == 8 and m.arch["width"] == 8
    ref = Hidden(init="random", **m.arch)
    ref.setup(torch.device("cpu"))
    ref.begin_training(lr=1e-3, gen=torch.Generator())
    state = torch.load(tiny_run.parent / "checkpoint.pt", weights_only=True)
    ref.load_training_state(state["model"])
    x = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    msg = torch.randint(0, 2, (3, 8), generator=torch.Generator().manual_seed(1)).float()
    y, y_ref = m.embed(x, msg), ref.embed(x, msg)
    assert torch.equal(y, y_ref)
    assert torch.equal(m.extract(quantize_8bit(y)), ref.extract(quantize_8bit(y)))
    # and the card's clean metrics are reproduced exactly by the reloaded file
    card = json.loads((tiny_run.parent / "tiny.json").read_text())
    _, cfg = load_train_config("tiny")
    from wmbench.data import load_image_set

    imgs = load_image_set("builtin", size=cfg.eval.size, count=cfg.eval.count, split="eval").images
    ev = evaluate(m, imgs, cfg.eval.batch_size)
    assert ev["bit_acc"] == card["eval"]["bit_acc"] and ev["psnr"] == card["eval"]["psnr"]


def test_resume_after_kill_is_exact(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed at step 7 (last checkpoint: 4), resumed: same weights and log as the uninterrupted run."""
    out = tmp_path / "out"
    real, calls = Hidden.train_step, [0]

    def dying(self: Hidden, *a: Any, **k: Any) -> dict[str, float]:
        calls[0] += 1
        if calls[0] == 7:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(Hidden, "train_step", dying)
    with pytest.raises(KeyboardInterrupt):
        train("tiny", out)
    monkeypatch.setattr(Hidden, "train_step", real)
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 4
    with pytest.raises(WmbenchError, match="resume"):
        train("tiny", out)  # an existing run is never silently overwritten
    train("tiny", out, resume=True)
    a, b = load_file(str(tiny_run)), load_file(str(out / "tiny.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(out) == _rows(tiny_run.parent) and _rows(out, "eval") == _rows(tiny_run.parent, "eval")
    card = json.loads((out / "tiny.json").read_text())
    assert len(card["commands"]) == 2


def test_max_steps_then_resume(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    train("tiny", out, max_steps=5)
    card = json.loads((out / "tiny.json").read_text())
    assert card["steps"] == 5 and not card["complete"]
    train("tiny", out, resume=True)
    a, b = load_file(str(tiny_run)), load_file(str(out / "tiny.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_quality_target_steers_the_image_weight_and_resumes_exactly(tmp_path: Path) -> None:
    qt = {"psnr": 60.0, "rate": 0.005}  # unreachable: the weight must rise every step after the warm-up
    cfg = _config(tmp_path, steps=10, log_every=1, checkpoint_every=5, quality_target=qt)
    train(cfg, tmp_path / "a")
    rows = _rows(tmp_path / "a")
    w = [r["w_image"] for r in rows]
    warm = yaml.safe_load(TINY.read_text())["warmup"]
    after = w[warm["steps"] + warm["ramp_steps"] :]
    assert len(after) >= 2 and all(b > a for a, b in zip(after, after[1:], strict=False)), w
    train(cfg, tmp_path / "b", max_steps=5)
    train(cfg, tmp_path / "b", resume=True)
    assert _rows(tmp_path / "b") == rows


def test_resume_refuses_a_changed_config(tmp_path: Path) -> None:
    out = tmp_path / "out"
    train(_config(tmp_path, steps=2, checkpoint_every=2), out)
    train(_config(tmp_path, steps=4, checkpoint_every=2), out, resume=True)  # training longer is fine
    assert json.loads((out / "tiny.json").read_text())["steps"] == 4
    with pytest.raises(WmbenchError, match="different config"):
        train(_config(tmp_path, steps=6, lr=1e-2), out, resume=True)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"stepz": 3}, r"stepz: unknown key \(did you mean 'steps'\?\)"),
        (
            {"noise": {"layers": [{"name": "jpeg", "strenght": 50}]}},
            r"noise\.layers\[0\]\.strenght: unknown key",
        ),
        ({"data": {"source": "builtin", "size": 32, "crop": 64}}, r"data: .*crop 64 is larger than size 32"),
        ({"warmup": {"steps": -1}}, r"warmup\.steps: "),
        (
            {"noise": {"layers": [{"name": "jepg"}]}},
            r"noise\.layers\[0\]\.name: unknown attack 'jepg'.*'jpeg'",
        ),
        ({"noise": {"layers": [{"name": "jpeg", "strength": 500}]}}, r"noise\.layers\[0\]: strength 500"),
        ({"loss_weights": {"imag": 1.0}}, r"loss_weights\.imag: unknown loss .*did you mean 'image'"),
        ({"model": {"name": "hiden"}}, r"model\.name: unknown method 'hiden'"),
        ({"model": {"name": "dwtdct"}}, r"model\.name: method 'dwtdct' is not trainable"),
        ({"model": {"name": "hidden", "params": {"seed": 3}}}, r"model\.params\.seed: set by the trainer"),
        ({"model": {"kind": "attack", "name": "jpeg"}}, r"model\.name: attack 'jpeg' is not trainable"),
        ({"model": {"kind": "attack", "name": "hidden"}}, r"model\.name: unknown attack 'hidden'"),
        ({"quality_target": {"psnr": 30, "loss": "imag"}}, r"quality_target\.loss\.imag: unknown loss"),
    ],
)
def test_config_errors_name_file_and_key(tmp_path: Path, change: dict[str, Any], where: str) -> None:
    p = _config(tmp_path, **change)
    with pytest.raises(WmbenchError, match=where) as e:
        load_train_config(p)
    assert str(p) in str(e.value)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(WmbenchError, match="not found.*tiny"):
        resolve_config("no_such_config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(WmbenchError, match="bad.yaml: a training config must be a mapping"):
        load_train_config(bad)
    assert resolve_config("wmbench/configs/tiny.yaml") == TINY


# ------------------------------------------------------------------------------------------------ hidden method
def test_hidden_without_weights_skips_with_instructions() -> None:
    m = Hidden(weights="no_such_weights")
    with pytest.raises(SkipCell, match="wmbench train hidden"):
        m.setup(torch.device("cpu"))
    with pytest.raises(WmbenchError, match="not found"):
        Hidden(checkpoint="/no/such/file.safetensors")
    with pytest.raises(WmbenchError, match="init"):
        Hidden(init="zeros")


def test_hidden_checkpoint_params_must_agree(tiny_run: Path) -> None:
    assert Hidden(checkpoint=str(tiny_run), width=8).nbits == 8
    with pytest.raises(WmbenchError, match="disagrees"):
        Hidden(checkpoint=str(tiny_run), nbits=30)


@pytest.mark.parametrize("work_size", [None, 32])
def test_hidden_runs_at_any_size(work_size: int | None) -> None:
    m = Hidden(**{**Hidden.tiny_params(), "work_size": work_size})
    m.setup(torch.device("cpu"))
    for h, w in [(32, 32), (128, 128), (100, 76), (17, 9)]:
        x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h))
        y = m.embed(x, torch.ones(2, 8))
        assert y.shape == x.shape and m.extract(y).shape == (2, 8)


def test_hidden_discriminator_option_trains() -> None:
    m = Hidden(**Hidden.tiny_params(), discriminator=True)
    m.setup(torch.device("cpu"))
    m.begin_training(lr=1e-3, gen=torch.Generator().manual_seed(0))
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in m.training_state()["nets"]["disc"].items()}
    stats = m.train_step(x, lambda wm, cover: wm)
    assert {"adversarial_loss", "disc_loss", "message_loss", "image_loss"} <= stats.keys()
    after = m.training_state()["nets"]["disc"]
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert not any(k.startswith("disc") for k in m.export_weights()), "the adversary is training-only"


def test_training_hooks_schedule_scales_groups_and_needs_begin_training() -> None:
    from wmbench.api import TrainingHooks

    class Model(TrainingHooks):
        name = "m"
        loss_weights = {"message": 1.0, "image": 0.5}

    m = Model()
    with pytest.raises(WmbenchError, match="call begin_training"):
        m.set_schedule(lr=1e-3, loss_weights={})
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [a], "lr_scale": 10.0}, {"params": [b]}], lr=1.0)
    m._train = {"opt": opt, "opt_d": None, "w": {}}
    m.set_schedule(lr=2e-4, loss_weights={"image": 3.0})
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([2e-3, 2e-4])
    assert m._train["w"] == {"message": 1.0, "image": 3.0}
