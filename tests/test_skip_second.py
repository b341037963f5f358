"""``skip-second``: calibrated beta, the runtime rule, gate mass conserved, top-1 kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moec.backends.interp.rules import compensate, rewrite
from moec.backends.interp.rules.skip_second import skip_mask
from moec.compiler.frontend.lift import load_module
from moec.compiler.lower.common import carry_pass_annotations
from moec.compiler.passes import parse_pipeline
from moec.compiler.passes.pipeline import PassError
from moec.compiler.passes.skip_second import median_ratio
from moec.ir.routing import LayerRouting
from moec.ir.stream import MoEDecl, RuntimePolicy, SkipRule
from moec.ir.target import load_target

TINY = Path(__file__).resolve().parents[1] / "models" / "tiny_moe.onnx"


def test_median_ratio():
    gates = np.array([[0.6, 0.4], [0.8, 0.2], [0.5, 0.5]], np.float32)
    assert median_ratio(gates) == pytest.approx(2 / 3)


def test_rule_drops_low_seconds_and_renormalizes():
    ids = np.array([[3, 1, 0], [2, 0, 1]])
    gates = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]], np.float32)
    drop = skip_mask(ids, gates, 0.5)
    assert drop.tolist() == [[False, True, True], [False, False, True]]
    new_ids, new_gates = compensate(ids, gates, drop)
    assert new_ids.tolist() == [[3, -1, -1], [2, 0, -1]]
    assert new_gates[0].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert new_gates[1].tolist() == pytest.approx([0.625, 0.375, 0.0])  # 0.2 split 5:3
    assert new_gates.sum(axis=1) == pytest.approx(gates.sum(axis=1))


def test_never_drops_the_first_even_at_beta_one():
    rng = np.random.default_rng(0)
    g = np.sort(rng.random((50, 4)), axis=1)[:, ::-1].astype(np.float32)
    drop = skip_mask(np.tile(np.arange(4), (50, 1)), g, 1.0)
    assert not drop[:, 0].any() and drop[:, 1:].all()


def test_pass_records_rule_and_runtime_applies_it():
    module, _ = load_module(TINY)
    module = parse_pipeline("skip-second").run(module)
    layer = module.moe_ops()[0].layer
    rule, beta = layer.annotations.skip_rule
    assert rule == "second" and 0 < beta < 1
    r = RuntimePolicy(layer.name, "ep")
    carry_pass_annotations(layer, r)
    assert r.skip == SkipRule("second", beta)
    decl = MoEDecl(layer.name, 8, 2, 32, 64, 4, "x", "y")
    routing = LayerRouting(
        layer.name, 8, 2, np.array([[0, 1], [2, 3], [4, 5], [6, 7]]),
        np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.99, 0.01]], np.float32), np.zeros(4, np.int64),
    )  # fmt: skip
    out = rewrite(r, decl, routing, load_target("fsedp-2x2"))
    assert out is not routing and routing.ids.min() >= 0  # the input is not modified
    assert (out.ids[:, 1] == -1).tolist() == [0.1 < beta * 0.9, False, 0.4 < beta * 0.6, True]
    assert out.gates.sum(axis=1) == pytest.approx(routing.gates.sum(axis=1))


def test_fixed_beta_and_errors():
    module, _ = load_module(TINY)
    module = parse_pipeline("skip-second{beta=0.25}").run(module)
    assert module.moe_ops()[1].layer.annotations.skip_rule == ("second", 0.25)
    with pytest.raises(
        PassError, match=r"--passes:1: pass skip-second: beta must be auto or a number"
    ):
        parse_pipeline("skip-second{beta=high}")
    with pytest.raises(PassError, match=r"beta must be in \[0, 1\]"):
        parse_pipeline("skip-second{beta=2}")
    with pytest.raises(
        PassError, match="skip-second failed: moe0: layer already has skip rule 'caee'"
    ):
        parse_pipeline("caee-prune,skip-second").run(load_module(TINY)[0])
