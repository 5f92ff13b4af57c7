"""`wmbench calibrate` flags a decoder whose clean bits are biased and passes a fair one."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from torch import Tensor
from typer.testing import CliRunner

from wmbench.api import Method
from wmbench.calibrate import analyse, builtin_crops
from wmbench.cli import app
from wmbench.registry import methods

cli = CliRunner()


class HashDecoder(Method):
    """Reads each clean image as coins seeded by a hash of its pixels, each 1 with probability ``p_one``."""

    name = "test_fair_decoder"
    nbits = 32
    p_one = 0.5

    def embed(self, x: Tensor, msg: Tensor) -> Tensor:
        return x

    def extract(self, y: Tensor) -> Tensor:
        out = []
        for img in y:
            digest = hashlib.sha256((img * 255).round().to(torch.uint8).numpy().tobytes()).digest()
            u = np.random.default_rng(int.from_bytes(digest[:8], "little")).random(self.nbits)
            out.append(torch.from_numpy(self.p_one - u).float())  # logit > 0 with probability p_one
        return torch.stack(out)


class BiasedDecoder(HashDecoder):
    name = "test_biased_decoder"
    p_one = 0.6


@pytest.fixture(scope="module", autouse=True)
def _register():
    for cls in (HashDecoder, BiasedDecoder):
        if cls.name not in methods():
            methods().register(cls.name, cls)


def _calibrate(name: str, *extra: str) -> dict:
    res = cli.invoke(app, ["calibrate", name, "--count", "1000", "--size", "32", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_calibrate_passes_a_fair_decoder():
    r = _calibrate("test_fair_decoder")
    assert r["fair_coins"] is True and r["n_clean"] == 1000 and r["nbits"] == 32
    assert r["det_threshold"] == 26 and r["target_fpr"] == 0.001  # analytic: P(Bin(32, 1/2) >= 26) <= 1e-3
    lo, hi = r["fpr_ci"]
    assert lo <= r["analytic_fpr"] <= hi
    assert r["gof"]["p_value"] > 0.01 and sum(r["matches"]["observed"]) == 1000
    one = next(x for x in r["levels"] if x["fpr"] == 0.1)
    assert one["key"]["ci"][0] <= one["analytic_fpr"] <= one["key"]["ci"][1]


def test_calibrate_flags_a_biased_decoder():
    r = _calibrate("test_biased_decoder", "--target-fpr", "0.01")
    assert r["fair_coins"] is False and "NOT fair coins" in r["verdict"]
    assert r["bits"]["balance_p"] < 1e-6 and r["bits"]["mean_p_one"] == pytest.approx(0.6, abs=0.02)
    worst = next(x for x in r["levels"] if x["fpr"] == 0.01)["worst_key"]
    assert worst["ci"][0] > 0.01  # the all-ones-like key fires above the nominal 1 %, beyond doubt


def test_analyse_flags_correlated_bits_and_finds_the_empirical_threshold():
    r = np.random.default_rng(0)
    bits = r.integers(0, 2, (3000, 30))
    same = r.random(3000) < 0.1  # a tenth of the images read one repeated coin: balanced but correlated
    bits[same] = r.integers(0, 2, (int(same.sum()), 1))
    res = analyse(bits - 0.5, target_fpr=0.01)
    assert (
        res["fair_coins"] is False and res["bits"]["variance_ratio"] > 1.5 and res["bits"]["balance_p"] > 0.01
    )
    m = (bits == np.array([int(c) for c in res["key"]])).sum(1)
    t = res["empirical_threshold"]
    assert (m >= t).mean() <= 0.01 < (m >= t - 1).mean()


def test_builtin_crops_are_deterministic_distinct_and_not_flat():
    a, b = builtin_crops(300, 32, seed=5), builtin_crops(300, 32, seed=5)
    assert a.ids == b.ids and torch.equal(a.images, b.images)
    assert len(set(a.ids)) == 300 and a.images.shape == (300, 3, 32, 32) and a.images.dtype == torch.uint8
    assert any(i.endswith("/flip") for i in a.ids) and len({i.split("@")[0] for i in a.ids}) == 17
    assert (a.images.float().std(dim=(1, 2, 3)) / 255 >= 0.03).all()
    assert builtin_crops(300, 32, seed=6).ids != a.ids
