"""Dense stages (``backends/interp/stages.py``) and the sizes that seed them.

A stage's inputs are typed by the arrays fed to them, not by the graph's ``value_info``:
onnxruntime-genai's fp16 builder declares every ``Constant`` as a scalar (``shape {}``), and a
stage after an MoE node that reads such a constant (a reshape target) as an input failed in
ONNX Runtime ("shape input must be 1D tensor"). A past cache may be empty (``--dims
past_sequence_length=0``); MoE layers that would get no tokens are a located error.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from moec.backends.interp.stages import run_staged
from moec.check import check_model
from moec.compile import parse_dims
from moec.ir.errors import MoecError


def _model_with_a_scalar_declared_shape() -> onnx.ModelProto:
    """x -> Moe (stage 0 | 1) -> Reshape(., c): c a Constant [2] declared with shape {}."""
    nodes = [
        helper.make_node("Constant", [], ["c"], value=helper.make_tensor("v", TensorProto.INT64, [2], [-1, 2])),
        helper.make_node("Identity", ["x"], ["h"]),
        helper.make_node("Moe", ["h"], ["y"], domain="test"),
        helper.make_node("Reshape", ["y", "c"], ["out"]),
    ]  # fmt: skip
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        value_info=[helper.make_tensor_value_info("c", TensorProto.INT64, [])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def test_a_stage_input_is_typed_by_its_array_not_a_wrong_value_info() -> None:
    x = np.arange(4, dtype=np.float32)
    out = run_staged(
        _model_with_a_scalar_declared_shape(), {"x": x}, lambda n: n.domain == "test",
        lambda node, v: v * 2,
    )  # fmt: skip
    assert np.array_equal(out["out"], (x * 2).reshape(2, 2))


def test_a_size_may_be_zero_but_not_negative() -> None:
    assert parse_dims(["past_sequence_length=0"]) == {"past_sequence_length": 0}
    with pytest.raises(MoecError, match="VALUE an integer >= 0, found 'seq=-1'"):
        parse_dims(["seq=-1"])


def test_moe_layers_without_tokens_are_a_located_error() -> None:
    with pytest.raises(MoecError, match="MoE layers get no tokens with these dimension sizes"):
        check_model("tiny_moe", dims={"T": 0})


def test_one_stage_of_the_whole_graph_is_ort_on_the_whole_graph() -> None:
    """An fp16 build rebuilt as one stage gives ORT's own outputs bit for bit: its inputs keep
    their symbolic sizes (concrete ones let ORT fold the mask's shape subgraph and place its
    fp16/float32 casts elsewhere: 7.8e-4 off on this model before)."""
    from pathlib import Path

    from moec.backends.ort.check import run_ort
    from moec.check import model_inputs
    from moec.compiler.frontend import load_module

    path = str(Path(__file__).parent / "fixtures" / "genai" / "gpt_oss_fp16" / "model.onnx")
    module, lifted = load_module(path)
    prompt = {"past_sequence_length": 0, "past_sliding_length": 0, "sequence_length": 16}
    feeds, _ = model_inputs(module, lifted, dims=prompt, model_path=path)
    want = run_ort(lifted.model, feeds)
    got = run_staged(lifted.model, feeds, lambda n: False, lambda node, v: v)
    assert want.keys() == got.keys()
    for name, w in want.items():
        assert got[name].dtype == w.dtype == np.float16
        assert np.array_equal(got[name], w), name
