"""An MoE whose router the frontend does not know is an error, never a silent dense import."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from moec.compiler.cli.main import main


def _argmax_routed_moe(path: Path) -> None:
    """Top-1 routing by ArgMax (no TopK), experts gathered from a stacked weight."""
    rng = np.random.default_rng(0)
    E, d, F = 4, 8, 16
    inits = [
        numpy_helper.from_array(rng.standard_normal((d, E)).astype(np.float32), "router_w"),
        numpy_helper.from_array(rng.standard_normal((E, d, F)).astype(np.float32), "w_up_stack"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "router_w"], ["logits"], name="router"),
        helper.make_node("ArgMax", ["logits"], ["ids"], axis=-1, keepdims=0, name="pick"),
        helper.make_node("Gather", ["w_up_stack", "ids"], ["w_tok"], axis=0, name="gather_experts"),
        helper.make_node("Unsqueeze", ["x", "axis1"], ["x3"], name="unsq"),
        helper.make_node("MatMul", ["x3", "w_tok"], ["h3"], name="expert_mm"),
        helper.make_node("Squeeze", ["h3", "axis1"], ["h"], name="sq"),
    ]
    inits.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    graph = helper.make_graph(
        nodes, "argmax_moe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", d])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["T", F])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, path)


def test_stacked_expert_gather_without_router_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "argmax_moe.onnx"
    _argmax_routed_moe(path)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "node gather_experts" in err and "no MoE router feeding it was recognized" in err
