"""``wmbench list`` reads built-ins' constants from their source (wmbench/static_meta.py): the values must be the
imported classes' own, and listing must not import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from wmbench.api import WmbenchError
from wmbench.registry import attacks, methods
from wmbench.static_meta import plugin_meta, static_meta

ATTACK_FIELDS = (
    "family",
    "unit",
    "default_strengths",
    "strength_range",
    "differentiable",
    "stand_in_gradient",
    "training_form",
    "description",
)
METHOD_FIELDS = ("nbits", "differentiable_extract", "description")
CASES = [(attacks, n, ATTACK_FIELDS) for n in attacks().names()] + [
    (methods, n, METHOD_FIELDS) for n in methods().names()
]


@pytest.mark.parametrize(("reg", "name", "fields"), CASES, ids=[c[1] for c in CASES])
def test_static_metadata_equals_the_imported_class(reg, name, fields) -> None:
    cls = reg().get(name)
    want = {f: getattr(cls, f, "?") for f in fields}
    assert plugin_meta(reg(), name, fields) == want
    target = reg().target(name)
    if isinstance(target, str) and target.startswith("wmbench."):
        assert static_meta(target, fields) == want, "a built-in's constants are no longer literals"


def test_unreadable_classes_fall_back_to_import() -> None:
    assert static_meta("wmbench.attacks.compression:NoSuchClass", ("unit",)) is None
    assert static_meta("wmbench.attacks.compression:Jpeg", ("no_such_field",)) is None
    assert static_meta("thirdparty.mod:Cls", ("unit",)) is None  # only wmbench's own files are read


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["list", "attacks"],
        ["list", "methods"],
        ["list", "attacks", "--json"],
        ["list", "metrics"],
    ],
)
def test_help_and_list_do_not_import_torch(argv: list[str]) -> None:
    code = (
        "import sys\n"
        "from wmbench.cli import app\n"
        f"sys.argv = ['wmbench', *{argv!r}]\n"
        "try:\n    app()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout[-300:]


def test_metric_listing_is_the_metrics_own_table() -> None:
    """``list metrics`` reads wmbench.metric_meta; the registries are built from the same table."""
    from wmbench import metrics as M
    from wmbench.metric_meta import METRICS

    built = {n: ("image", m.higher_is_better, m.description) for n, m in M.IMAGE_METRICS.items()}
    built |= {n: ("bits", m.higher_is_better, m.description) for n, m in M.BIT_METRICS.items()}
    assert built == METRICS and list(built) == list(METRICS)


def test_attack_listing_says_what_gradient_forward_st_gives() -> None:
    """The gradient column: yes (the attack itself), stand-in (a differentiable forward_st, e.g. a codec with
    straight-through rounding or a frozen VAE) or straight-through (the identity)."""
    from wmbench.cli import Kind, _list_rows

    rows = {r["name"]: r for r in _list_rows(Kind.attacks)}
    assert {n: rows[n]["gradient"] for n in ("rotation", "regen_local", "sd_vae", "jpeg", "pgd_remove")} == {
        "rotation": "yes",
        "regen_local": "stand-in",
        "sd_vae": "stand-in",
        "jpeg": "straight-through",
        "pgd_remove": "none",
    }
    x = torch.full((1, 3, 16, 16), 0.5)
    for name, r in rows.items():  # "none" exactly where forward_st refuses (all of them need a method)
        cls = attacks().get(name)
        if cls.needs_method or r["gradient"] == "none":
            try:
                cls().forward_st(x, cls.default_strengths[0], gen=torch.Generator())
                refused = False
            except WmbenchError:
                refused = True
            assert refused == (r["gradient"] == "none"), name
    for name, r in rows.items():  # the claim matches the class
        cls = attacks().get(name)
        overridden = "forward_st" in {k for c in cls.__mro__[:-1] if c.__name__ != "Attack" for k in vars(c)}
        assert (r["gradient"] == "stand-in") == (cls.stand_in_gradient and not cls.differentiable), name
        if r["gradient"] == "stand-in":
            assert overridden, f"{name} claims a stand-in gradient but keeps Attack.forward_st"
