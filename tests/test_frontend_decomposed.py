"""moec's decomposed standard-op MoE form: recognized by dataflow, exact against ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from frontend_models import layer_errors, single_layer, x_feed

from moec.compiler.frontend.lift import lift_model
from moec.ir.errors import ModelError
from moec.models import tiny
from moec.models.moe_blocks import MoESpec, decomposed_moe

D, F = 16, 24


def spec(**kw: object) -> MoESpec:
    base: dict[str, object] = {"experts": 8, "top_k": 2, "hidden": D, "ffn": F}
    base.update(kw)
    return MoESpec(**base)  # type: ignore[arg-type]


VARIANTS = {
    "softmax-renorm": spec(),
    "softmax-no-renorm-biases": spec(normalize_topk=False, router_bias=True, expert_bias=True),
    "relu-plain": spec(activation="relu", gated=False),
    "gelu-gated": spec(activation="gelu"),
    "shared-gated": spec(num_shared=2, shared_ffn=2 * F, shared_gate=True),
    "sigmoid-bias-groups-max": spec(scoring="sigmoid", score_bias=True, n_group=4, topk_group=2),
    "sigmoid-groups-top2": spec(scoring="sigmoid", n_group=2, topk_group=1, group_score="top2_sum", top_k=3),
    "softmax-groups-scaled": spec(n_group=4, topk_group=3, routed_scaling=2.5, normalize_topk=False),
    "deepseek-v3-like": spec(
        experts=16, top_k=4, scoring="sigmoid", score_bias=True, n_group=4, topk_group=2,
        group_score="top2_sum", routed_scaling=2.5, num_shared=1, shared_ffn=F,
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_matches_ort(name: str) -> None:
    s = VARIANTS[name]
    model = single_layer(decomposed_moe, s)
    errors = layer_errors(model, x_feed(D))
    assert len(errors) == 1 and errors[0] <= 1e-4
    _, res = lift_model(model)
    layer = res.lifted[0].layer
    assert (layer.num_experts, layer.top_k, layer.hidden, layer.ffn) == (s.experts, s.top_k, D, F)
    assert layer.scoring == s.scoring and layer.normalize_topk == s.normalize_topk
    assert (layer.n_group, layer.topk_group) == (s.n_group, s.topk_group)
    assert layer.routed_scaling == pytest.approx(s.routed_scaling)
    assert layer.has("score_bias") == s.score_bias and layer.has("sh_router") == s.shared_gate
    assert layer.num_shared == s.num_shared and layer.gated == s.gated
    assert layer.spec() == s  # one definition of the hyperparameters, round-tripped


@pytest.mark.parametrize(
    "build", [tiny.tiny_moe_decomposed, tiny.tiny_moe_shared, tiny.tiny_deepseek, tiny.tiny_moe]
)
def test_tiny_models_layer_by_layer(build) -> None:  # type: ignore[no-untyped-def]
    model = build(0)
    tokens = np.random.default_rng(5).integers(0, tiny.VOCAB, size=20).astype(np.int64)
    errors = layer_errors(model, {"tokens": tokens})
    assert len(errors) == 2 and max(errors) <= 1e-4


def test_recognition_ignores_node_names() -> None:
    model = single_layer(decomposed_moe, VARIANTS["deepseek-v3-like"])
    for i, node in enumerate(model.graph.node):
        node.name = f"n{(i * 7919) % 1000}"
    assert len(lift_model(model)[1].lifted) == 1


def test_half_recognized_topk_is_an_error() -> None:
    """A router TopK whose indices feed something unknown names the node and what was expected."""
    model = single_layer(decomposed_moe, spec())
    scatter = next(n for n in model.graph.node if n.op_type == "ScatterElements")
    scatter.op_type = "ScatterND"
    with pytest.raises(
        ModelError,
        match=r"m\.onnx: node moe\.topk: TopK .*expected TopK indices to feed GatherElements and ScatterElements",
    ):
        lift_model(model, where="m.onnx")


def test_lone_topk_is_an_error() -> None:
    b = onnx.helper
    g = b.make_graph(
        [b.make_node("TopK", ["x", "k"], ["v", "i"], name="sampler")], "g",
        [b.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 8])],
        [b.make_tensor_value_info("v", onnx.TensorProto.FLOAT, [4, 2])],
        [onnx.numpy_helper.from_array(np.array([2], np.int64), "k")],
    )  # fmt: skip
    model = b.make_model(g, opset_imports=[b.make_opsetid("", 18)])
    with pytest.raises(
        ModelError, match="node sampler: TopK node is not part of a recognized MoE layer"
    ):
        lift_model(model, where="m.onnx")


def test_topk_of_attention_scores_is_an_ordinary_op() -> None:
    """DeepSeek-V3.2's sparse-attention indexer: TopK over q @ k^T (two computed tensors, no
    weight projection) is not a router; a lone TopK of an input stays an error (above)."""
    b = onnx.helper
    g = b.make_graph(
        [b.make_node("Transpose", ["k"], ["kt"], perm=[1, 0]),
         b.make_node("MatMul", ["q", "kt"], ["s"]),
         b.make_node("TopK", ["s", "n"], ["v", "i"], name="indexer")], "g",
        [b.make_tensor_value_info("q", onnx.TensorProto.FLOAT, [4, 8]),
         b.make_tensor_value_info("k", onnx.TensorProto.FLOAT, [6, 8])],
        [b.make_tensor_value_info("i", onnx.TensorProto.INT64, [4, 2])],
        [onnx.numpy_helper.from_array(np.array([2], np.int64), "n")],
    )  # fmt: skip
    module, res = lift_model(b.make_model(g, opset_imports=[b.make_opsetid("", 18)]))
    assert not res.lifted and [op.kind for op in module.ops][-1] == "TopK"
