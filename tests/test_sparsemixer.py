"""Sparsemixer routing (Phi-3.5-MoE): the numpy reference, and the HF export's recognition.

The reference (``moec.ir.moe.sparsemixer``) is checked on a hand-computed case and, when torch
and transformers are installed, against transformers' own ``sparsemixer`` on random logits.
The recognizer evaluates the exported subgraph on probe logits: a graph that has the same
shape but computes something else is a located error.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from moec.compiler.frontend.lift import lift_model
from moec.compiler.frontend.loader import load_onnx
from moec.ir.errors import ModelError
from moec.ir.moe import sparsemixer

FIXTURE = Path(__file__).parent / "fixtures" / "hf" / "phimoe.onnx"


def test_hand_computed_case() -> None:
    # Expert 1 is within the jitter band of expert 0 ((2 - 1.99) / 2 < 2 * 0.01): the first gate
    # is the softmax over experts 0 and 1. The second pick (expert 1) has nobody in its band
    # (expert 0 is removed), so its gate is 1.
    ids, gates = sparsemixer(np.array([[2.0, 1.99, 0.0, -1.0]], np.float32), 0.01)
    assert ids.tolist() == [[0, 1]]
    assert gates[0, 0] == pytest.approx(1 / (1 + math.exp(-0.01)), rel=1e-6)
    assert gates[0, 1] == pytest.approx(1.0)
    # A wide gap: each pick alone in its band, both gates 1.
    ids, gates = sparsemixer(np.array([[0.0, 5.0, 1.0]], np.float32), 0.01)
    assert ids.tolist() == [[1, 2]] and gates.tolist() == [[1.0, 1.0]]


def test_matches_transformers() -> None:
    torch = pytest.importorskip("torch")
    phimoe = pytest.importorskip("transformers.models.phimoe.modeling_phimoe")
    rng = np.random.default_rng(0)
    for scale in (0.01, 1.0, 5.0):
        L = (rng.standard_normal((256, 16)) * scale).astype(np.float32)
        L[:20, 3] = L[:20, 0]  # ties: the lower index wins, as torch.max
        L[20:40, 5] = L[20:40, 0] * np.float32(0.995)
        want_g, want_i = phimoe.sparsemixer(torch.from_numpy(L), 0.01, False)
        ids, gates = sparsemixer(L, 0.01)
        assert np.array_equal(ids, want_i.numpy())
        assert np.abs(gates - want_g.numpy()).max() <= 1e-6


def test_export_is_lifted_with_its_epsilon() -> None:
    _, res = lift_model(load_onnx(FIXTURE))
    assert len(res.lifted) == 2
    for lf in res.lifted:
        assert lf.layer.scoring == "sparsemixer" and lf.layer.top_k == 2
        assert lf.layer.sparsemixer_eps == pytest.approx(0.01)
        assert not lf.layer.normalize_topk


def test_a_different_threshold_test_is_a_located_mismatch() -> None:
    model = load_onnx(FIXTURE)
    greater = next(n for n in model.graph.node if n.op_type == "Greater")
    greater.op_type = "Less"  # masks the experts *near* the max instead of the far ones
    with pytest.raises(ModelError, match="does not compute sparsemixer") as err:
        lift_model(model, where="phimoe.onnx")
    assert "phimoe.onnx: node" in str(err.value)


def test_an_argmax_that_is_not_a_router_stays_an_ordinary_op() -> None:
    from onnx import TensorProto, helper

    w = onnx.numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["l"]),
         helper.make_node("ArgMax", ["l"], ["y"], axis=-1, keepdims=1)],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [2, 1])], [w],
    )  # fmt: skip
    module, res = lift_model(helper.make_model(graph))
    assert not res.lifted and [op.kind for op in module.ops] == ["MatMul", "ArgMax"]


@pytest.mark.parametrize("shared", [0, 1])
def test_moec_decomposed_form_matches_onnxruntime(shared: int) -> None:
    """moec's own builder writes the sparsemixer as the export does (the Phi-3.5-MoE preset)."""
    from frontend_models import layer_errors, single_layer, x_feed

    from moec.ir.moe import MoESpec
    from moec.models.moe_blocks import decomposed_moe

    spec = MoESpec(8, 2, 16, 24, scoring="sparsemixer", normalize_topk=False,
                   num_shared=shared, shared_ffn=24 * shared)  # fmt: skip
    model = single_layer(decomposed_moe, spec)
    assert layer_errors(model, x_feed(16))[0] <= 1e-4
    _, res = lift_model(model)
    layer = res.lifted[0].layer
    assert (layer.scoring, layer.num_shared) == ("sparsemixer", shared)
    assert layer.sparsemixer_eps == pytest.approx(0.01)  # read back from the f32 threshold
