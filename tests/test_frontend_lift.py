"""Lifting builds the graph IR; the residual model and ONNX export stay faithful to the original."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from ort_capture import max_rel_error, session

from moec.compiler.frontend.export import export_onnx
from moec.compiler.frontend.lift import lift_model
from moec.compiler.frontend.residual import MOEC_DOMAIN, residual_model
from moec.ir.errors import ModelError
from moec.models import tiny


def _tokens(seed: int = 2) -> dict[str, np.ndarray]:
    return {"tokens": np.random.default_rng(seed).integers(0, tiny.VOCAB, size=24).astype(np.int64)}


def test_module_has_one_moe_op_per_layer_and_keeps_dense_ops() -> None:
    model = tiny.tiny_moe_decomposed(0)
    module, res = lift_model(model, where="tiny")
    moe = module.moe_ops()
    assert [op.name for op in moe] == ["moe0", "moe1"]
    assert [op.layer.annotations.onnx_node for op in moe] == [
        "layer1.moe.topk",
        "layer2.moe.topk",
    ]
    kinds = [op.kind for op in module.ops]
    assert "TopK" not in kinds and "Softmax" not in kinds and kinds.count("LayerNormalization") == 4
    x, y = moe[0].inputs[0], moe[0].outputs[0]
    assert x is not None and x.name == res.lifted[0].input and y.name == res.lifted[0].output
    assert x.type is not None and y.type is not None and x.type.shape == y.type.shape
    norm = next(op for op in module.ops if op.kind == "LayerNormalization")
    assert norm.attrs["epsilon"] == pytest.approx(1e-5) and norm.attrs["axis"] == -1
    module.verify()
    assert module.print() == lift_model(tiny.tiny_moe_decomposed(0))[0].print()  # deterministic


def test_fused_and_decomposed_lift_to_the_same_structure() -> None:
    a = lift_model(tiny.tiny_moe(0))[0].moe_ops()[0].layer
    b = lift_model(tiny.tiny_moe_decomposed(0))[0].moe_ops()[0].layer
    for field in ("num_experts", "top_k", "hidden", "ffn", "activation", "gated", "normalize_topk"):
        assert getattr(a, field) == getattr(b, field)


@pytest.mark.parametrize("build", [tiny.tiny_moe, tiny.tiny_moe_decomposed, tiny.tiny_deepseek])
def test_residual_model(build) -> None:  # type: ignore[no-untyped-def]
    model = build(0)
    _, res = lift_model(model)
    r = residual_model(model, res.lifted)
    onnx.checker.check_model(r)
    moe_nodes = [n for n in r.graph.node if n.domain == MOEC_DOMAIN]
    assert [n.attribute[0].s.decode() for n in moe_nodes] == ["moe0", "moe1"]
    assert [(n.input[0], n.output[0]) for n in moe_nodes] == [
        (lf.input, lf.output) for lf in res.lifted
    ]
    names = {t.name for t in r.graph.initializer}
    assert "lm_head" in names and "embed" in names
    assert not any(".moe." in n for n in names)  # expert and router weights are gone
    assert not any(n.op_type in ("TopK", "MoE") and n.domain != MOEC_DOMAIN for n in r.graph.node)


@pytest.mark.parametrize(
    "build",
    [tiny.tiny_moe, tiny.tiny_moe_decomposed, tiny.tiny_moe_shared, lambda s: tiny.tiny_qmoe(s, 4)],
)
def test_export_round_trip_matches_original(build) -> None:  # type: ignore[no-untyped-def]
    """original -> IR -> com.microsoft.MoE export -> ORT equals ORT on the original."""
    model = build(0)
    module, _ = lift_model(model)
    exported = export_onnx(module)
    onnx.checker.check_model(exported)
    assert sum(n.op_type == "MoE" and n.domain == "com.microsoft" for n in exported.graph.node) == 2
    want = session(model).run(None, _tokens())[0]
    got = session(exported).run(None, _tokens())[0]
    assert max_rel_error(got, want) <= 1e-4


def test_export_refuses_inexpressible_layers() -> None:
    module, _ = lift_model(tiny.tiny_deepseek(0))
    with pytest.raises(
        ModelError, match="moe0: cannot export as com.microsoft.MoE: the layer has sigmoid scoring"
    ):
        export_onnx(module)
