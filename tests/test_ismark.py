"""ISMark: OPT embedding (objective, independence, determinism, PSNR floor), params, weights, decoder enhancing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import save_file
from wmbench.methods.hidden import Hidden
from wmbench.methods.ismark import ISMark

from wmbench.api import SkipCell, WmbenchError
from wmbench.train import resolve_config, train

#: a tiny random-init own decoder (hidden's tiny architecture) and a cheap, fully deterministic noise set
TINY: dict[str, Any] = {
    "init": "random",
    "nbits": 8,
    "width": 8,
    "dec_depth": 2,
    "period": 8,
    "dec_channels": 4,
    "noise": ["identity", {"name": "resize", "strength": 0.75}, {"name": "jpeg", "strength": 50}],
    "lr": 3e-3,
    "message_loss": "bce",
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _make(**kw: Any) -> ISMark:
    m = ISMark(**{**TINY, **kw})
    m.setup(torch.device("cpu"))
    return m


def _x(n: int = 2, s: int = 32, seed: int = 1) -> torch.Tensor:
    """8-bit covers, as the runner passes.  -> n 3 s s"""
    return torch.round(torch.rand(n, 3, s, s, generator=torch.Generator().manual_seed(seed)) * 255) / 255


def _msg(n: int, k: int = 8, seed: int = 2) -> torch.Tensor:
    return torch.randint(0, 2, (n, k), generator=torch.Generator().manual_seed(seed)).float()


def test_opt_lowers_its_objective_and_more_steps_lower_it_more() -> None:
    m = _make()
    x, msg = _x(), _msg(2)
    objs = [m.objective(m.opt_embed(x, msg, steps=k)[0], x, msg) for k in (0, 5, 30)]
    assert torch.equal(m.opt_embed(x, msg, steps=0)[0], x)
    assert (objs[1] < objs[0]).all(), objs
    assert (objs[2] < objs[1]).all(), objs


def test_embedding_is_per_image_independent() -> None:
    m = _make(steps=10)
    x, msg = _x(3), _msg(3)
    y_batch = m.embed(x, msg)
    y_one = m.embed(x[1:2], msg[1:2])
    # batched convolutions may sum in another order; a float difference can move a pixel across a rounding
    # boundary, so allow a few 1/255 steps but demand agreement almost everywhere
    diff = (y_batch[1:2] - y_one).abs()
    assert float(diff.max()) <= 2 / 255 + 1e-6
    assert float((diff > 0).float().mean()) < 1e-3


def test_deterministic_shape_range_and_8bit() -> None:
    m = _make(steps=5)
    x, msg = _x(2, 40), _msg(2)
    y1, y2 = m.embed(x, msg), m.embed(x, msg)
    y3 = _make(steps=5).embed(x, msg)
    assert torch.equal(y1, y2) and torch.equal(y1, y3)
    assert y1.shape == x.shape and y1.min() >= 0 and y1.max() <= 1
    assert torch.equal(torch.round(y1 * 255) / 255, y1), "the output is on the 8-bit grid"
    assert not torch.equal(y1, x)
    assert m.extract(y1).shape == (2, 8)
    # a different seed draws other noise (the ``noise`` here is deterministic, so use gaussian noise)
    n = [{"name": "gaussian_noise", "strength": 0.05}]
    assert not torch.equal(
        _make(steps=5, noise=n).embed(x, msg), _make(steps=5, noise=n, seed=1).embed(x, msg)
    )


def test_noise_per_step_subsets_and_default_noise() -> None:
    m = _make(steps=3, noise=None, noise_per_step=2)
    assert len(m.layers) == 8 and m.params["noise_per_step"] == 2
    assert [lay.name for lay in m.layers][0] == "identity"
    y = m.embed(_x(1), _msg(1))
    assert y.shape == (1, 3, 32, 32)


def test_psnr_floor_is_honoured() -> None:
    x, msg = _x(2, 32), _msg(2)
    free = _make(steps=40, lr=2e-2).embed(x, msg)
    psnr = -10 * torch.log10(((free - x) ** 2).flatten(1).mean(1))
    assert (psnr < 40).all(), psnr  # without the floor this lr goes well below it
    floored = _make(steps=40, lr=2e-2, psnr_floor=42.0).embed(x, msg)
    psnr_f = -10 * torch.log10(((floored - x) ** 2).flatten(1).mean(1))
    assert (psnr_f >= 42.0).all(), psnr_f
    assert (psnr_f < 45.0).all(), psnr_f  # it still uses the budget


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"steps": 0}, r"params\.steps: Input should be greater than or equal to 1"),
        ({"lr": -1.0}, r"params\.lr: Input should be greater than 0"),
        ({"lambda_d": "x"}, r"params\.lambda_d: Input should be a valid number"),
        ({"message_loss": "l1"}, r"params\.message_loss: Input should be 'mse' or 'bce'"),
        ({"noise": []}, r"params\.noise: List should have at least 1 item"),
        ({"noise": [{"name": "jpg"}]}, r"noise\[0\]\.name: unknown attack 'jpg'.*'jpeg'"),
        ({"noise": [{"name": "jpeg", "strenght": 50}]}, r"noise\[0\]: unknown keys \['strenght'\]"),
        ({"noise": [{"name": "jpeg", "strength": 50, "range": [50, 90]}]}, "give one of strength, range"),
        ({"noise": [{"name": "gaussian_blur", "strength": -1}]}, r"noise\[0\]: strength -1"),
        ({"noise": ["pgd_remove"]}, "needs a method"),
        ({"noise_per_step": 9}, r"params\.noise_per_step: 9 exceeds"),
        ({"psnr_floor": 0}, r"params\.psnr_floor: Input should be greater than 0"),
        ({"init": "zeros"}, r"params\.init: Input should be 'random'"),
        ({"width": 0}, r"params\.width: Input should be greater than or equal to 1"),
        ({"decoder_params": {"checkpoint": "x"}}, "decoder_params is for a wrapped decoder"),
    ],
)
def test_bad_params_name_the_param(params: dict[str, Any], match: str) -> None:
    with pytest.raises(WmbenchError, match=match):
        ISMark(**{**TINY, **params})


def test_bad_decoder_params() -> None:
    with pytest.raises(WmbenchError, match="decoder: unknown method 'hiden'.*'hidden'"):
        ISMark(decoder="hiden")
    with pytest.raises(WmbenchError, match="no differentiable extract"):
        ISMark(decoder="dwtdct")
    with pytest.raises(WmbenchError, match=r"decoder_params \(decoder 'hidden'\).*no_such"):
        ISMark(decoder="hidden", decoder_params={"no_such": 1})
    with pytest.raises(WmbenchError, match=r"params \['checkpoint'\] configure ismark's own decoder"):
        ISMark(decoder="hidden", checkpoint="x.safetensors")
    with pytest.raises(WmbenchError, match="params.checkpoint not found"):
        ISMark(decoder="ismark", checkpoint="/no/such.safetensors")


def test_missing_weights_skip_the_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SkipCell, match="no_such_hidden"):
        ISMark(decoder="hidden", decoder_params={"weights": "no_such_hidden"}).setup(torch.device("cpu"))
    with pytest.raises(SkipCell, match="no_such_enhanced.safetensors is not installed.*ismark_enhance"):
        ISMark(decoder="ismark", weights="no_such_enhanced").setup(torch.device("cpu"))
    # the default decoder: the shipped enhanced one, else hidden; with neither installed, one message names both
    import wmbench.methods.ismark as ismark_mod

    import wmbench.checkpoints as ck

    monkeypatch.setattr(ismark_mod, "WEIGHTS_PACKAGE", "wmbench.configs")
    monkeypatch.setattr(ck, "WEIGHTS_PACKAGE", "wmbench.configs")
    m = ISMark()
    assert m.params["decoder"] == "hidden"
    with pytest.raises(SkipCell, match=r"ismark\.safetensors is not installed.*'hidden' has no weights"):
        m.setup(torch.device("cpu"))


def test_wrapped_hidden_decoder_is_the_extractor(tmp_path: Path) -> None:
    h = Hidden(**Hidden.tiny_params())
    h.setup(torch.device("cpu"))
    m = ISMark(decoder="hidden", decoder_params=Hidden.tiny_params(), steps=2)
    m.setup(torch.device("cpu"))
    x = _x(2, 32)
    assert m.nbits == 8 and m.differentiable_extract
    assert torch.equal(m.extract(x), h.extract(x))
    assert m.weights_hash() == h.weights_hash() != ""
    other = ISMark(decoder="hidden", decoder_params=Hidden.tiny_params(), steps=3)
    other.setup(torch.device("cpu"))
    assert m.fingerprint() != other.fingerprint(), "the OPT params are part of the cache key"


def _hidden_ckpt(path: Path) -> Hidden:
    """A tiny random-init hidden checkpoint written as `wmbench train` writes one."""
    h = Hidden(**Hidden.tiny_params(), seed=7)
    h.setup(torch.device("cpu"))
    save_file(
        h.export_weights(),
        str(path),
        metadata={"wmbench_method": "hidden", "params": json.dumps(h.architecture()), "steps": "0"},
    )
    return h


def test_own_decoder_starts_from_a_hidden_checkpoint(tmp_path: Path) -> None:
    h = _hidden_ckpt(tmp_path / "h.safetensors")
    m = ISMark(checkpoint=str(tmp_path / "h.safetensors"))
    assert m.params["decoder"] == "ismark" and m.nbits == 8
    m.setup(torch.device("cpu"))
    x = _x(2, 32)
    torch.testing.assert_close(m.extract(x), h.extract(x))
    with pytest.raises(WmbenchError, match="nbits=30 disagrees with the checkpoint"):
        ISMark(checkpoint=str(tmp_path / "h.safetensors"), nbits=30)


def test_decoder_enhancing_updates_only_the_decoder_on_detached_distortions() -> None:
    m = _make(train_opt_steps=2, sub_iters=3)
    m.begin_training(lr=1e-2, gen=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in m.dec.state_dict().items()}  # type: ignore[union-attr]
    seen: list[tuple[bool, bool]] = []

    def distortion(wm: torch.Tensor, cover: torch.Tensor) -> torch.Tensor:
        seen.append((wm.requires_grad, torch.is_grad_enabled()))
        assert torch.equal(torch.round(wm * 255) / 255, wm), "the decoder trains on the saved 8-bit image"
        return wm

    stats = m.train_step(_x(2, 32), distortion)
    assert seen == [(False, False)] * 3
    assert {"loss", "message_loss", "bit_acc", "opt_bit_acc", "psnr"} <= set(stats)
    after = m.dec.state_dict()  # type: ignore[union-attr]
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(WmbenchError, match="decoder enhancing trains ismark's own decoder"):
        w = ISMark(decoder="hidden", decoder_params=Hidden.tiny_params())
        w.setup(torch.device("cpu"))
        w.begin_training(lr=1e-3, gen=torch.Generator())


def test_tiny_enhancing_config_trains_from_a_hidden_checkpoint(tmp_path: Path) -> None:
    _hidden_ckpt(tmp_path / "h.safetensors")
    cfg = yaml.safe_load(resolve_config("ismark_tiny").read_text())
    for k in ("nbits", "width", "dec_depth", "period", "dec_channels"):
        cfg["model"]["params"].pop(k)  # taken from the checkpoint
    cfg["model"]["init_from"] = "h.safetensors"  # relative to the config's folder
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    out = train(tmp_path / "cfg.yaml", tmp_path / "run")
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["method"] == "ismark" and card["nbits"] == 8 and card["complete"]
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert {"opt_bit_acc", "message_loss"} <= set(rows[-1])
    m = ISMark(checkpoint=str(out), steps=2)
    m.setup(torch.device("cpu"))
    y = m.embed(_x(1, 32), _msg(1))
    assert y.shape == (1, 3, 32, 32)
    assert m.weights_hash() != ""


def test_packaged_enhance_config_validates() -> None:
    from wmbench.train import load_train_config

    _, cfg = load_train_config("ismark_enhance")
    assert cfg.model.name == "ismark" and cfg.model.params["sub_iters"] == 80


def test_cpu_enhance_config_pins_the_noise_that_trained_the_shipped_decoder() -> None:
    """The default OPT noise now judges JPEG with jpeg_st; the shipped decoder was trained with kornia's jpeg_diff,
    so its config names that set and `wmbench train ismark_enhance_cpu` still reproduces it."""
    from wmbench.methods.ismark import DEFAULT_NOISE, DEFAULT_NOISE_V1

    cfg = yaml.safe_load(resolve_config("ismark_enhance_cpu").read_text())
    pinned = [{"name": n} if isinstance(n, str) else n for n in cfg["model"]["params"]["noise"]]
    assert pinned == [dict(d) for d in DEFAULT_NOISE_V1]
    assert DEFAULT_NOISE[-1]["name"] == "jpeg_st" and DEFAULT_NOISE[:-1] == DEFAULT_NOISE_V1[:-1]
    assert [lay.name for lay in ISMark(**{**ISMark.tiny_params()}).layers][-1] == "jpeg_st"
