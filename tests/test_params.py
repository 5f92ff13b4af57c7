"""Plugin params contract: every registered plugin declares its params once (a ``Params`` model) or takes none;
errors name the plugin and the key path; ``validate`` reports what the run would; labels, fingerprints and the
docs follow the models."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from wmbench.api import Attack, Method, WmbenchError, params_fingerprint
from wmbench.cli import app
from wmbench.params import PluginParams, plugins_markdown
from wmbench.registry import attacks, methods
from wmbench.suite import load_suite

REPO = Path(__file__).resolve().parents[1]
PLUGINS = [("method", n) for n in methods().names()] + [("attack", n) for n in attacks().names()]
#: class metadata every command reads from the class; an instance must never overwrite it
META = ("unit", "strength_range", "default_strengths", "differentiable", "goal", "family", "needs_method",
        "needs_cover", "integer_strength", "description", "differentiable_extract")  # fmt: skip


def _cls(kind: str, name: str) -> type[Any]:
    return (methods() if kind == "method" else attacks()).get(name)


def _base_params(cls: type[Any]) -> dict[str, Any]:
    """Params that construct the plugin cheaply (a tiny net, a sequence's steps), else none."""
    if cls.name == "sequence":
        return {"steps": [{"name": "jpeg"}]}
    tiny = getattr(cls, "tiny_params", None)
    return dict(tiny()) if tiny is not None else {}


def _bounded_int_field(model: type[PluginParams]) -> tuple[str, int] | None:
    """A strict integer field with an upper bound: (name, the bound)."""
    for name, f in model.model_fields.items():
        le = next((m.le for m in f.metadata if getattr(m, "le", None) is not None), None)
        if le is not None and f.annotation in (int, int | None):
            return name, int(le)
    return None


@pytest.mark.parametrize(("kind", "name"), PLUGINS)
def test_declares_params_or_takes_none(kind: str, name: str) -> None:
    cls = _cls(kind, name)
    if cls.Params is None:
        with pytest.raises(WmbenchError, match=rf"{kind} '{name}' takes no params, got \['x'\]"):
            cls(x=1)
    else:
        assert issubclass(cls.Params, PluginParams) and cls.Params.model_config.get("extra") == "forbid"
        assert all(f.description for f in cls.Params.model_fields.values()), "every param says what it is"


@pytest.mark.parametrize(("kind", "name"), PLUGINS)
def test_defaults_construct_and_metadata_stays_on_the_class(kind: str, name: str) -> None:
    cls = _cls(kind, name)
    obj = cls(**_base_params(cls))
    assert isinstance(obj, Method if kind == "method" else Attack)
    if name != "sequence":  # a chain takes its swept step's unit and range: the one instance-level exception
        assert not set(vars(obj)) & set(META), f"{name} overwrites class metadata on the instance"


@pytest.mark.parametrize(("kind", "name"), [p for p in PLUGINS if _cls(*p).Params is not None])
def test_unknown_key_gets_did_you_mean(kind: str, name: str) -> None:
    cls = _cls(kind, name)
    key = next(iter(cls.Params.model_fields))
    with pytest.raises(WmbenchError) as e:
        cls(**_base_params(cls), **{key + "_": 1})
    assert str(e.value) == f"{kind} '{name}': params.{key}_: unknown key (did you mean '{key}'?)"


BOUNDED = [p for p in PLUGINS if _cls(*p).Params is not None and _bounded_int_field(_cls(*p).Params)]


@pytest.mark.parametrize(("kind", "name"), BOUNDED)
def test_out_of_range_is_refused_with_the_key_path(kind: str, name: str) -> None:
    cls = _cls(kind, name)
    key, le = _bounded_int_field(cls.Params)  # type: ignore[misc]
    with pytest.raises(WmbenchError) as e:
        cls(**{**_base_params(cls), key: le + 1})
    assert str(e.value) == f"{kind} '{name}': params.{key}: Input should be less than or equal to {le}"
    with pytest.raises(WmbenchError, match=rf"params\.{key}: Input should be a valid integer"):
        cls(**{**_base_params(cls), key: True})


@pytest.mark.parametrize("name", ["dwtdct", "hidden", "specguard"])
def test_absurd_nbits_is_refused_before_any_allocation(name: str) -> None:
    t0 = time.perf_counter()
    with pytest.raises(WmbenchError, match=r"params\.nbits: Input should be less than or equal to 4096"):
        methods().get(name)(init="random", nbits=1_000_000_000) if name != "dwtdct" else methods().get(name)(
            nbits=1_000_000_000
        )
    assert time.perf_counter() - t0 < 1


def test_several_problems_in_one_message() -> None:
    with pytest.raises(WmbenchError) as e:
        attacks().get("pgd_remove")(norm="l3", stpes=5)
    assert str(e.value) == (
        "attack 'pgd_remove': params.norm: Input should be 'linf' or 'l2'; "
        "params.stpes: unknown key (did you mean 'steps'?)"
    )


def test_labels_and_fingerprints_are_unchanged() -> None:
    """Pinned before the models existed: caches and results keyed by them stay valid."""
    pgd = attacks().get("pgd_remove")(
        steps=15, eot=2, eot_attacks=["gaussian_noise", "jpeg"], random_start=True
    )
    assert (
        pgd.label() == "pgd_remove[steps=15,eot=2,eot_attacks=['gaussian_noise', 'jpeg'],random_start=True]"
    )
    assert (
        params_fingerprint("pgd_remove", attacks().get("pgd_remove")(step_size=1).params)
        == "748f7f780652d094"
    )
    assert attacks().get("diffusion_regen")(pipeline="a/b").label() == "diffusion_regen[model=a/b]"
    pins = {
        ("dwtdct", ()): "b369936665eff8f8",
        ("dwtdct", (("scales", (0, 20, 0)), ("block", 6))): "b3f91adc359ba5d2",
        ("hidden", (("strength", 1.5), ("psnr_target", 38))): "db12454faff2e6b1",
        ("end2", (("swap_every", 0), ("momentum", 0.9))): "f5c3c206151e3c91",
        # changed on purpose (2026-12-02): the default noise now judges JPEG with jpeg_st, so what is embedded changed
        ("ismark", (("noise_per_step", 2), ("psnr_floor", 36))): "7e3c0d15b972ee78",
        ("advmark", (("steps", 10), ("lr", 0.01), ("mu", 1))): "8e1a11de6102e4af",
    }
    for (name, kv), fp in pins.items():
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in kv}
        assert params_fingerprint(name, methods().get(name)(**params).params) == fp, name


def test_compressai_range_is_the_class_one() -> None:
    cheng = attacks().get("compressai")(model="cheng2020-anchor")
    assert "strength_range" not in vars(cheng) and cheng.max_quality == 6 and cheng.from_relative(0.0) == 6


def test_weights_takes_a_stem_not_a_path() -> None:
    with pytest.raises(
        WmbenchError, match=r"method 'hidden': params\.weights: '/a/path\.safetensors' is not the stem"
    ):
        methods().get("hidden")(weights="/a/path.safetensors")


def _suite(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text("name: t\nimages: {count: 2, size: 32}\n" + body)
    return p


def _validate(path: Path) -> str:
    r = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "400"})
    assert r.exit_code == 2, r.output
    return " ".join(r.output.split())


def _run_message(fn: Any) -> str:
    with pytest.raises(WmbenchError) as e:
        fn()
    return " ".join(str(e.value).split())


@pytest.mark.parametrize(
    ("body", "run"),
    [
        (  # a strength the model-loading attack refuses before loading anything
            "methods: [{name: dwtdct}]\nattacks: [{name: compressai, params: {model: cheng2020-anchor}, strengths: [7]}]\n",
            lambda: (
                attacks()
                .get("compressai")(model="cheng2020-anchor")
                .apply(torch.rand(1, 3, 16, 16), 7.0, gen=torch.Generator())
            ),
        ),
        (
            "methods: [{name: dwtdct}]\nattacks: [{name: pgd_remove, strengths: [-1]}]\n",
            lambda: (
                attacks().get("pgd_remove")().apply(torch.rand(1, 3, 16, 16), -1.0, gen=torch.Generator())
            ),
        ),
        (
            "methods: [{name: dwtdct}]\nattacks: [{name: crop, strengths: [1.5]}]\n",
            lambda: attacks().get("crop")().apply(torch.rand(1, 3, 16, 16), 1.5, gen=torch.Generator()),
        ),
        (  # a missing file
            "methods: [{name: torchscript, params: {embedder: /no/emb.pt, extractor: /no/ext.pt, nbits: 8}}]\n",
            lambda: methods().get("torchscript")(embedder="/no/emb.pt", extractor="/no/ext.pt", nbits=8),
        ),
        (  # a weights file given as a path
            "methods: [{name: hidden, params: {weights: /a/path.safetensors}}]\n",
            lambda: methods().get("hidden")(weights="/a/path.safetensors"),
        ),
        (  # a missing checkpoint
            "methods: [{name: specguard, params: {checkpoint: /no/sg.safetensors}}]\n",
            lambda: methods().get("specguard")(checkpoint="/no/sg.safetensors"),
        ),
        (
            "methods: [{name: ismark, params: {steps: 0}}]\n",
            lambda: methods().get("ismark")(steps=0),
        ),
    ],
)
def test_validate_reports_the_runs_own_message(tmp_path: Path, body: str, run: Any) -> None:
    """Strengths reach the run as floats (7.0); the message is the run's, word for word."""
    assert _run_message(run) in _validate(_suite(tmp_path, body))


def test_suite_error_names_file_entry_and_key(tmp_path: Path) -> None:
    p = _suite(tmp_path, "methods: [{name: ismark, params: {stpes: 5}}]\n")
    with pytest.raises(WmbenchError) as e:
        load_suite(p)
    assert "methods[0].params: method 'ismark': params.stpes: unknown key (did you mean 'steps'?)" in str(
        e.value
    )


def test_params_command_prints_the_model() -> None:
    r = CliRunner().invoke(app, ["params", "pgd_remove"])
    assert r.exit_code == 0, r.output
    assert "norm\t'linf' | 'l2'\t\"linf\"" in r.output and "eot_attacks" in r.output
    r = CliRunner().invoke(app, ["params", "crop"])
    assert r.exit_code == 0 and "takes no params" in r.output
    r = CliRunner().invoke(app, ["params", "jpg"])
    assert r.exit_code == 2 and "Did you mean 'jpeg'" in " ".join(r.output.split())


def test_docs_match_the_models() -> None:
    """Built-ins only: plugins registered by other tests (or installed packages) do not change the page."""
    import wmtest_plugins

    wmtest_plugins.register()
    doc = (REPO / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert doc == plugins_markdown(), "regenerate: python -m wmbench.params > docs/plugins.md"
