"""Hand-written per-expert loop MoE blocks (``torch.where`` / one-hot masks, ``index_add_``)
exported by the TorchScript and dynamo exporters: recognition, numerics, located mismatches.

The fixtures in ``tests/fixtures/torch_loop`` come from ``make_fixtures.py`` there (two MoE
blocks, 4 experts, top-2, hidden 32, FFN 24, input ``x`` [1, 32, 32]): the textbook
``torch.where`` loop, Mixtral's one-hot loop, a fused gate/up expert, and the non-gated
``w2(gelu(w1 x))`` expert with biases.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from ort_capture import capture, max_rel_error

from moec.check import check_model
from moec.compiler.frontend.lift import lift_model, load_module
from moec.compiler.frontend.loader import load_onnx
from moec.ir.errors import ModelError
from moec.ir.moe import evaluate

FIXTURES = Path(__file__).parent / "fixtures" / "torch_loop"
# variant -> (activation, gated, scoring, renormalized, biases)
VARIANTS = {
    "where": ("silu", True, "softmax", True, False),
    "onehot": ("silu", True, "softmax", True, False),
    "fused": ("gelu_tanh", True, "sigmoid", False, False),
    "mlp": ("gelu", False, "softmax", True, True),
}
FILES = [f"{v}.{e}" for v in VARIANTS for e in ("torchscript", "dynamo")]


def _x(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 32, 32)).astype(np.float32)


@pytest.mark.parametrize("name", FILES)
def test_loop_blocks_are_lifted(name: str) -> None:
    module, result = load_module(FIXTURES / f"{name}.onnx")
    activation, gated, scoring, normalize, biases = VARIANTS[name.split(".")[0]]
    assert len(result.lifted) == 2
    for lf in result.lifted:
        layer = lf.layer
        assert (layer.num_experts, layer.top_k, layer.hidden, layer.ffn) == (4, 2, 32, 24)
        assert (layer.activation, layer.gated) == (activation, gated)
        assert layer.has("b_up") == biases and layer.has("b_down") == biases
        assert (layer.scoring, layer.normalize_topk) == (scoring, normalize)
        assert layer.annotations.source == "torchscript.loop"
    kinds = {op.kind for op in module.ops}
    assert not {"TopK", "NonZero", "OneHot", "Equal", "ScatterElements", "ScatterND"} & kinds


@pytest.mark.parametrize("name", FILES)
def test_loop_layer_numerics_match_onnxruntime(name: str) -> None:
    _, result = load_module(FIXTURES / f"{name}.onnx")
    names = [n for lf in result.lifted for n in (lf.input, lf.output)]
    values = capture(result.model, {"x": _x(1)}, names)
    for lf in result.lifted:
        got = evaluate(lf.layer, values[lf.input])
        assert got.shape == values[lf.output].shape
        assert max_rel_error(got, values[lf.output]) <= 1e-4, lf.layer.name


@pytest.mark.parametrize("name", ["where.torchscript", "onehot.dynamo"])
def test_loop_model_passes_moec_check(name: str) -> None:
    report = check_model(str(FIXTURES / f"{name}.onnx"), strategy="fsedp")
    assert report.passed and report.max_rel_err <= 1e-4


def _lift_error(model: onnx.ModelProto) -> str:
    with pytest.raises(ModelError) as info:
        lift_model(model, where="mutated.onnx")
    return str(info.value)


def test_an_expert_compared_twice_is_a_mismatch() -> None:
    """Expert 3's loop body selecting expert 2's tokens: located at the Equal node."""
    model = load_onnx(FIXTURES / "where.torchscript.onnx")
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    equals = [n for n in model.graph.node if n.op_type == "Equal"]
    value = consts[equals[3].input[1]].attribute[0].t
    value.CopyFrom(onnx.numpy_helper.from_array(np.array(2, dtype=np.int64), value.name))
    msg = _lift_error(model)
    assert "expected the expert ids compared with one id in 0..3" in msg
    assert equals[3].name in msg


def test_rows_that_are_not_the_tokens_are_a_mismatch() -> None:
    """x[None, tok] with the token axis moved (Unsqueeze at 1): the probe rejects it."""
    model = load_onnx(FIXTURES / "onehot.torchscript.onnx")
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    first = next(
        n for n in model.graph.node
        if n.op_type == "Unsqueeze" and any(c.op_type == "Gather" and c.input[0] == n.output[0]
                                            for c in model.graph.node)
    )  # fmt: skip
    axes = consts[first.input[1]].attribute[0].t
    axes.CopyFrom(onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), axes.name))
    msg = _lift_error(model)
    assert "not x[tokens] on a probe" in msg or "gathered from the layer input" in msg
