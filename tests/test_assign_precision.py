"""``assign-precision``: tier and budget plans, the real quantization rewrite, option errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moec.compiler.frontend.lift import load_module
from moec.compiler.passes import parse_pipeline
from moec.compiler.passes.assign_precision import plan_budget, plan_tiers
from moec.compiler.passes.pipeline import PassError
from moec.compiler.quantize import requantize

TINY = Path(__file__).resolve().parents[1] / "models" / "tiny_moe.onnx"


def test_tiers_by_cumulative_gate_share():
    # cumulative share before each expert (hottest first): 0, .5, .7, .85, .95
    mass = [0.2, 0.05, 0.5, 0.1, 0.15]
    assert plan_tiers(mass, (0.6, 0.9)) == ["fp16", "int4", "fp16", "int8", "int8"]
    assert plan_tiers(mass, (0.6,)) == ["fp16", "int4", "fp16", "int4", "int4"]
    # the hottest expert keeps fp16 even when it alone holds more than the first tier
    assert plan_tiers([0.8, 0.2], (0.6, 0.9)) == ["fp16", "int8"]


def test_budget_plan_greedy_by_latency_per_error():
    # two experts; latency halves per step; expert 1 is cheap in error, expert 0 expensive
    latency = np.array([[4.0, 2.0, 1.0], [4.0, 2.0, 1.0]])
    error = np.array([[0.0, 0.05, 0.5], [0.0, 0.001, 0.01]])
    assert plan_budget(latency, error, 0.02) == ["fp16", "int4"]
    assert plan_budget(latency, error, 0.06) == ["int8", "int4"]
    assert plan_budget(latency, error, 0.0) == ["fp16", "fp16"]
    # reverse: least error until latency <= 50% of all-fp16 (8 -> 4)
    assert plan_budget(latency, error, 0.5, "accuracy") == ["int8", "int4"]
    with pytest.raises(ValueError, match="unreachable"):
        plan_budget(latency, error, 0.1, "accuracy")


def _layers(pipeline: str):
    module, _ = load_module(TINY)
    before = {op.name: op.layer.array("w_up").copy() for op in module.moe_ops()}
    module = parse_pipeline(pipeline).run(module)
    return module, before


def test_tiers_rewrite_quantizes_weights_for_real():
    module, before = _layers("annotate-importance,assign-precision{tiers=0.6/0.9}")
    for op in module.moe_ops():
        layer = op.layer
        plan = layer.annotations.precision
        assert set(plan) <= {"fp16", "int8", "int4"} and len(plan) == layer.num_experts
        w_up = layer.array("w_up")
        for e, p in enumerate(plan):
            rows = np.transpose(w_up[e : e + 1], (0, 2, 1))  # [1, F, d]: quantized along d
            if p == "fp16":
                assert np.array_equal(w_up[e], w_up[e].astype(np.float16).astype(np.float32))
            else:
                assert requantize(rows, {"int8": 8, "int4": 4}[p]) is not None
            assert not np.array_equal(w_up[e], before[op.name][e])
        assert len(layer.annotations.quant_error) == layer.num_experts
    text = module.print()
    assert "precision=['" in text and "quant_error=[" in text


def test_budget_keeps_the_estimated_error_within_budget():
    module, _ = _layers("annotate-importance,assign-precision{budget=0.01}")
    for op in module.moe_ops():
        a = op.layer.annotations
        total = sum(err * imp for err, imp in zip(a.quant_error, a.importance, strict=True))
        assert total <= 0.01 * (1 + 1e-4)
        assert "int8" in a.precision  # the budget buys something


@pytest.mark.parametrize(
    "pipeline,message",
    [
        ("assign-precision{tiers=0.9/0.6}", r"--passes:1: pass assign-precision: tiers must be"),
        ("assign-precision", r"give exactly one of tiers=A/B or budget=X"),
        ("assign-precision{budget=0.1,tiers=0.5}", r"give exactly one"),
        ("verify,assign-precision{budget=0.1,objective=speed}", r"--passes:8: .*objective must be"),
        ("assign-precision{tiers=abc}", r"option tiers: expected tuple"),
    ],
)
def test_option_errors_are_located(pipeline, message):
    with pytest.raises(PassError, match=message):
        parse_pipeline(pipeline)


def test_missing_importance_and_bad_block_are_pass_errors():
    module, _ = load_module(TINY)
    with pytest.raises(PassError, match="assign-precision failed: moe0: no gate_mass annotation"):
        parse_pipeline("assign-precision{tiers=0.6}").run(module)
    module, _ = load_module(TINY)
    with pytest.raises(PassError, match="block 12 does not divide"):
        parse_pipeline("annotate-importance,assign-precision{tiers=0.6,block=12}").run(module)
