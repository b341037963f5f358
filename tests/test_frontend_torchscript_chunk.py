"""TorchScript's ``chunk`` of a fused gate-up projection: two Slices whose bounds come from a Shape.

The TorchScript exporter writes ``gate, up = (x @ W).chunk(2, dim=-1)`` as two ``Slice`` nodes
with ``start``/``end`` computed from ``Shape(x @ W)`` (``(n + 1) / 2``), where the dynamo
exporter writes one ``Split``. GraniteMoE-SWA's and MiniMax-M3's shared MLPs (and their routed
experts' stacked gate_up) are cut that way; the dense-FFN matcher reads both forms.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from moec.compiler.frontend.hf_layer import match_dense_ffn
from moec.compiler.frontend.hf_routing import Walk
from moec.compiler.frontend.loader import infer_shapes
from moec.compiler.frontend.patterns import GraphView

T, D, F = 4, 8, 6


def _chunked_mlp(swap: bool) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """``down(silu(g) * u)`` with ``g, u = (x @ W).chunk(2)`` (``swap``: silu of the 2nd half)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((D, 2 * F)).astype(np.float32)
    down = rng.standard_normal((F, D)).astype(np.float32)

    def c(name: str, v: object) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(v), name)

    inits = [c("W", w), c("Wd", down), c("axis", np.array([1], np.int64)),
             c("one", np.array([1], np.int64)), c("two", np.array([2], np.int64)),
             c("zero", np.array([0], np.int64))]  # fmt: skip
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Shape", ["h"], ["shape"]),
        helper.make_node("Gather", ["shape", "axis"], ["n"], axis=0),
        helper.make_node("Add", ["n", "one"], ["n1"]),
        helper.make_node("Div", ["n1", "two"], ["half"]),
        helper.make_node("Mul", ["half", "one"], ["end0"]),
        helper.make_node("Mul", ["half", "two"], ["end1"]),
        helper.make_node("Slice", ["h", "zero", "end0", "axis"], ["first"]),
        helper.make_node("Slice", ["h", "end0", "end1", "axis"], ["second"]),
    ]
    g, u = ("second", "first") if swap else ("first", "second")
    nodes += [
        helper.make_node("Sigmoid", [g], ["sig"]),
        helper.make_node("Mul", [g, "sig"], ["act"]),
        helper.make_node("Mul", ["act", u], ["prod"]),
        helper.make_node("MatMul", ["prod", "Wd"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "chunk", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [T, D])], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    halves = (w[:, :F], w[:, F:])
    return model, halves[1 if swap else 0], halves[0 if swap else 1]


@pytest.mark.parametrize("swap", [False, True])
def test_sliced_gate_up_is_read_as_the_fused_projection(swap: bool) -> None:
    model, gate, up = _chunked_mlp(swap)
    view = GraphView(infer_shapes(model).graph, "m.onnx")
    ffn = match_dense_ffn(Walk(view), "y")
    assert ffn is not None and ffn.x == "x" and ffn.activation == "silu"
    assert ffn.gate is not None
    np.testing.assert_array_equal(ffn.gate, gate)
    np.testing.assert_array_equal(ffn.up, up)


def test_slices_that_do_not_halve_the_projection_are_not_an_mlp() -> None:
    model, _, _ = _chunked_mlp(False)
    two = next(t for t in model.graph.initializer if t.name == "two")
    two.CopyFrom(numpy_helper.from_array(np.array([3], np.int64), "two"))  # thirds, not halves
    view = GraphView(infer_shapes(model).graph, "m.onnx")
    assert match_dense_ffn(Walk(view), "y") is None
