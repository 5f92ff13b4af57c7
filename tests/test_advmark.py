"""AdvMark: stage 2 never returns an image under its PSNR floor; stage 1 updates the decoder only on its condition."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from wmbench.methods.advmark import AdvMark, floor_residual

from wmbench.api import WmbenchError
from wmbench.train import resolve_config, train

pytestmark = pytest.mark.usefixtures("one_thread")


def _x(n: int = 3, s: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, s, s, generator=torch.Generator().manual_seed(2))


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return -10 * torch.log10((a - b).pow(2).flatten(1).mean(1))


def _msg(n: int = 3, k: int = 8) -> torch.Tensor:
    return torch.randint(0, 2, (n, k), generator=torch.Generator().manual_seed(3)).float()


@pytest.mark.parametrize("floor", [20.0, 35.0, 45.0])
def test_stage2_never_returns_an_image_under_its_floor(floor: float) -> None:
    # a random-init encoder leaves PSNR far below these floors: the floor must still hold
    m = AdvMark(**{**AdvMark.tiny_params(), "strength": 4.0, "psnr_floor": floor, "steps": 5, "lr": 0.05})
    m.setup(torch.device("cpu"))
    x = _x()
    y = m.embed(x, _msg())
    assert torch.equal(y, torch.round(y * 255) / 255), "stage 2 returns 8-bit images"
    assert (_psnr(x, y) >= floor - 1e-4).all(), _psnr(x, y)


def test_floor_residual_scales_only_what_is_needed() -> None:
    x = torch.round(_x() * 255) / 255
    far = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    near = torch.round((x + 1 / 255).clamp(0, 1) * 255) / 255
    out = floor_residual(x, torch.cat([far[:1], near[1:]]), 30.0)
    assert _psnr(x[:1], out[:1]) >= 30 and _psnr(x[:1], out[:1]) < 31, "scaled just under the floor"
    assert torch.equal(out[1:], near[1:]), "images above the floor are untouched"


def test_stage2_lowers_the_message_loss_under_its_noise() -> None:
    m = AdvMark(**{**AdvMark.tiny_params(), "psnr_floor": 10.0, "steps": 0})
    m.setup(torch.device("cpu"))
    x, msg = _x(), _msg()
    first = m.embed(x, msg)
    m2 = AdvMark(**{**AdvMark.tiny_params(), "psnr_floor": 10.0, "steps": 30, "lr": 0.01})
    m2.setup(torch.device("cpu"))
    second = m2.embed(x, msg)

    def loss(y: torch.Tensor) -> float:
        return float(torch.nn.functional.binary_cross_entropy_with_logits(m.extract(y), msg))

    assert loss(second) < loss(first)


def test_stage1_updates_the_decoder_only_under_its_condition() -> None:
    for below, changes in ((0.0, False), (1.01, True)):
        m = AdvMark(**{**AdvMark.tiny_params(), "dec_update_below": below, "adv_steps": 2})
        m.setup(torch.device("cpu"))
        m.begin_training(lr=1e-2, gen=torch.Generator().manual_seed(0))
        dec0 = {k: v.clone() for k, v in m.dec.state_dict().items()}  # type: ignore[union-attr]
        enc0 = {k: v.clone() for k, v in m.enc.state_dict().items()}  # type: ignore[union-attr]
        stats = m.train_step(_x(4), lambda wm, cover: wm)
        assert stats["decoder_updated"] == float(changes)
        dec_changed = any(not torch.equal(dec0[k], v) for k, v in m.dec.state_dict().items())  # type: ignore[union-attr]
        assert dec_changed == changes
        assert any(not torch.equal(enc0[k], v) for k, v in m.enc.state_dict().items())  # type: ignore[union-attr]


def test_stage1_trains_from_a_hidden_checkpoint(tmp_path: Path) -> None:
    hidden = train("tiny", tmp_path / "hidden")
    data = yaml.safe_load(resolve_config("tiny").read_text())
    data.update(
        name="advtiny",
        model={"name": "advmark", "init_from": str(hidden), "params": {"adv_steps": 2, "steps": 2}},
        loss_weights={"message": 1.0, "adversarial_message": 1.0, "image": 0.7},
        warmup={"steps": 0, "ramp_steps": 0},
        steps=4,
        noise={"quantize": True, "layers": []},
    )
    cfg = tmp_path / "advtiny.yaml"
    cfg.write_text(yaml.safe_dump(data))
    st = train(cfg, tmp_path / "adv")
    m = AdvMark(checkpoint=str(st), steps=2)
    m.setup(torch.device("cpu"))
    y = m.embed(_x(2, 48), _msg(2))
    assert y.shape == (2, 3, 48, 48) and m.extract(y).shape == (2, 8)


def test_bad_params() -> None:
    with pytest.raises(WmbenchError, match="mu"):
        AdvMark(**{**AdvMark.tiny_params(), "mu": 2})
    with pytest.raises(WmbenchError, match="psnr_floor"):
        AdvMark(**{**AdvMark.tiny_params(), "psnr_floor": -1})
    m = AdvMark(**{**AdvMark.tiny_params(), "noise": [{"name": "jpgg"}]})
    m.setup(torch.device("cpu"))
    with pytest.raises(WmbenchError, match=r"noise\[0\]\.name: unknown attack 'jpgg'"):
        m.embed(_x(1), _msg(1))


def test_decoder_condition_fires_only_when_its_accuracy_is_low():
    from wmbench.methods.advmark import decoder_update_due

    # clean: the batch's clean accuracy decides; a robust-looking batch with low clean accuracy fires
    assert decoder_update_due("clean", 0.99, clean_acc=0.95, adv_acc=1.0)
    assert not decoder_update_due("clean", 0.99, clean_acc=1.0, adv_acc=0.5)
    # adversarial: the accuracy left after the loop's PGD decides, whatever the clean accuracy
    assert decoder_update_due("adversarial", 0.9, clean_acc=1.0, adv_acc=0.6)
    assert not decoder_update_due("adversarial", 0.9, clean_acc=0.8, adv_acc=0.95)
    with pytest.raises(WmbenchError, match="dec_condition"):
        AdvMark(dec_condition="sometimes")


def test_fingerprint_follows_the_stage2_noise_layers_weights(tmp_path: Path) -> None:
    """Stage 2 optimises against its noise layers, so retraining the ``regen_local`` file it uses (same path, new
    weights) must change the method's fingerprint (the watermark cache key); without stage 2 it must not."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from wmbench.attacks.regen_local import RegenLocal

    shipped = RegenLocal().ckpt_path
    if shipped is None:
        pytest.skip("no shipped regen_local weights")
    codec = tmp_path / "codec.safetensors"
    shutil.copyfile(shipped, codec)

    def fp(stage2: bool = True) -> str:
        layer = {"name": "regen_local", "strength": 0.5, "params": {"checkpoint": str(codec)}}
        m = AdvMark(**{**AdvMark.tiny_params(), "noise": [layer], "stage2": stage2})
        m.setup(torch.device("cpu"))
        return m.fingerprint()

    before, before_s1 = fp(), fp(stage2=False)
    assert fp() == before
    with safe_open(str(codec), framework="pt") as f:
        meta = dict(f.metadata() or {})
    tensors = {k: (v + 1e-3 if v.is_floating_point() else v) for k, v in load_file(str(codec)).items()}
    save_file(tensors, str(codec), metadata=meta)  # "retrained" in place
    assert fp() != before
    assert fp(stage2=False) == before_s1
