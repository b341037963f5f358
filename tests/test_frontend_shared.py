"""Shared experts: inside the canonical op in every family that has them, or said to be dense.

Every committed fixture whose family has a shared MLP must have it inside the lifted layer
(``tests/test_frontend_hf.py`` checks sizes; here the general rule: no fixture leaves a gated
MLP of the layer's input summed with its output as ordinary ops). A shared MLP the frontend
cannot take in (here: beside a ``com.microsoft.MoE`` node) is marked and ``moec inspect`` says so.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from frontend_models import layer_errors, single_layer, x_feed
from onnx import TensorProto

from moec.compiler.frontend import load_module
from moec.compiler.frontend.lift import lift_model
from moec.models.builder import OnnxBuilder
from moec.models.moe_blocks import MoESpec, fused_moe

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = sorted((ROOT / "tests" / "fixtures").glob("*/*.onnx")) + sorted(
    (ROOT / "tests" / "fixtures").glob("*/*/model.onnx")
)
# Fixtures whose family has a shared MLP (tests/fixtures/*/README.md; a builder fixture is
# named by its folder).
SHARED = {
    "qwen3_5_moe_fp32",
    "qwen3_5_moe_int8",
    "qwen3_5_moe_int4",
    "nemotron_h",
    "afmoe",
    "qwen2_moe",
    "deepseek_v3",
    "ernie4_5_moe",
    "glm4_moe",
    "glm4_moe_unrolled",
    "granitemoeshared",
    "kolibri1",
    "inkling",
    "minimax_m3",
    "hy_v4",
}


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_fixture_leaves_a_shared_mlp_outside_the_op(path: Path) -> None:
    module, _ = load_module(path)
    layers = [op.layer for op in module.moe_ops()]
    assert layers
    for layer in layers:
        assert layer.annotations.dense_shared is None, (layer.name, layer.annotations)
        name = path.parent.name if path.stem == "model" else path.stem
        assert layer.has_shared == (name in SHARED), layer.name


def _moe_with_dense_shared(
    d: int = 16, fs: int = 20, act: str = "silu", gated_add: bool = False
) -> onnx.ModelProto:
    spec = MoESpec(experts=4, top_k=2, hidden=d, ffn=24)
    b = OnnxBuilder("dense_shared", seed=3)
    x = b.input("x", TensorProto.FLOAT, [12, d])
    y = fused_moe(b, x, spec, "moe")
    g = b.op("MatMul", [x, b.weight("sh_gate", (d, fs))], name="sh_gate")
    if act == "silu":
        a = b.op("Mul", [g, b.op("Sigmoid", [g], name="sh_sig")], name="sh_silu")
    else:  # an activation the shared-expert matcher does not know
        a = b.op("Tanh", [g], name="sh_tanh")
    up = b.op("MatMul", [x, b.weight("sh_up", (d, fs))], name="sh_up")
    h = b.op("Mul", [a, up], name="sh_mul")
    down = b.op("MatMul", [h, b.weight("sh_down", (fs, d))], name="sh_down")
    if gated_add:  # onnxruntime-genai's Qwen3.5-MoE: y + down * sigmoid(x @ w)
        r = b.op("MatMul", [x, b.weight("sh_router", (d, 1))], name="sh_router")
        g = b.op("Sigmoid", [r], name="sh_router_sigmoid")
        out = b.op("GatedAdd", [y, down, g], name="sum", domain="com.microsoft")
    else:
        out = b.op("Add", [y, down], name="sum")
    b.output(out, TensorProto.FLOAT, [12, d])
    return b.model()


@pytest.mark.parametrize("gated_add", [False, True])
def test_a_shared_mlp_beside_a_fused_node_is_taken_in(gated_add: bool) -> None:
    model = _moe_with_dense_shared(gated_add=gated_add)
    _, result = lift_model(model)
    (lf,) = result.lifted
    assert lf.layer.has_shared and lf.layer.has("sh_router") == gated_add
    assert lf.layer.annotations.dense_shared is None
    assert layer_errors(model, x_feed(16))[0] <= 1e-4


def test_a_shared_mlp_left_dense_is_said_by_inspect(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_moe_with_dense_shared(act="tanh"), str(path))
    run = subprocess.run(
        [sys.executable, "-m", "moec", "inspect", str(path), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (row,) = json.loads(run.stdout)["moe_layers"]
    assert row["shared_experts"] == 0 and row["shared_left_dense"].startswith("sh_down")
    table = subprocess.run(
        [sys.executable, "-m", "moec", "inspect", str(path)], capture_output=True, text=True
    ).stdout
    assert "left dense" in table


def test_any_mlp_of_the_layer_input_left_dense_is_marked() -> None:
    _, result = lift_model(_moe_with_dense_shared(act="tanh"))
    assert (result.lifted[0].layer.annotations.dense_shared or "").startswith("sh_down")


def test_a_plain_layer_is_not_marked() -> None:
    model = single_layer(fused_moe, MoESpec(experts=4, top_k=2, hidden=16, ffn=24))
    _, result = lift_model(model)
    assert result.lifted[0].layer.annotations.dense_shared is None
