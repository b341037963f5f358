"""com.microsoft.MoE / QMoE: the lifted canonical layer matches ONNX Runtime on the original."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from frontend_models import layer_errors, single_layer, x_feed

from moec.compiler.frontend.fused import dequantize
from moec.compiler.frontend.lift import lift_model
from moec.models.moe_blocks import MoESpec, fused_moe, fused_qmoe, quantize

D, F, E = 16, 24, 6


def spec(**kw: object) -> MoESpec:
    base: dict[str, object] = {"experts": E, "top_k": 2, "hidden": D, "ffn": F}
    base.update(kw)
    return MoESpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize("activation", ["relu", "gelu", "silu", "identity"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_moe_plain_activations(activation: str, normalize: bool, bias: bool) -> None:
    s = spec(
        activation=activation,
        gated=False,
        normalize_topk=normalize,
        expert_bias=bias,
        router_bias=bias,
    )
    model = single_layer(fused_moe, s)
    errors = layer_errors(model, x_feed(D))
    assert len(errors) == 1 and errors[0] <= 1e-4


@pytest.mark.parametrize(
    "swiglu", [(1.0, 0.0, None), (1.702, 1.0, None), (1.702, 1.0, 0.7), (0.5, 0.25, 2.0)]
)
@pytest.mark.parametrize("bias", [True, False])
def test_moe_swiglu_interleaved(swiglu: tuple[float, float, float | None], bias: bool) -> None:
    model = single_layer(
        lambda b, x, s, n: fused_moe(b, x, s, n, swiglu=swiglu), spec(expert_bias=bias)
    )
    assert layer_errors(model, x_feed(D))[0] <= 1e-4
    _, res = lift_model(model)
    layer = res.lifted[0].layer
    if swiglu == (1.0, 0.0, None):
        assert layer.activation == "silu" and layer.gated  # SwiGLU(1, 0) is exactly gated silu
    else:
        assert layer.activation == "swiglu"
        alpha, beta, limit = swiglu
        assert layer.swiglu_alpha == pytest.approx(alpha) and layer.swiglu_beta == pytest.approx(
            beta
        )
        assert layer.swiglu_limit == (None if limit is None else pytest.approx(limit))


def test_gelu_maps_to_tanh_approximation() -> None:
    _, res = lift_model(single_layer(fused_moe, spec(activation="gelu", gated=False)))
    assert res.lifted[0].layer.activation == "gelu_tanh"


def _refuse(model: onnx.ModelProto, **changes: object) -> onnx.ModelProto:
    node = next(n for n in model.graph.node if n.op_type in ("MoE", "QMoE"))
    for key, value in changes.items():
        node.attribute.append(onnx.helper.make_attribute(key, value))
    return model


def test_swiglu_fusion_2_is_concatenated_halves() -> None:
    """ORT's CPU kernel refuses swiglu_fusion=2; check the mapping against fusion=1 instead."""
    inter = single_layer(fused_moe, spec())
    _, ri = lift_model(inter)
    concat = onnx.ModelProto()
    concat.CopyFrom(inter)
    node = next(n for n in concat.graph.node if n.op_type == "MoE")
    fc1_t = next(t for t in concat.graph.initializer if t.name == node.input[2])
    fc1 = onnx.numpy_helper.to_array(fc1_t)
    halves = np.concatenate([fc1[:, 0::2], fc1[:, 1::2]], axis=1)
    fc1_t.CopyFrom(onnx.numpy_helper.from_array(halves, fc1_t.name))
    for a in node.attribute:
        if a.name == "swiglu_fusion":
            a.i = 2
    _, rc = lift_model(concat)
    for key in ("w_gate", "w_up", "w_down", "router_w"):
        np.testing.assert_array_equal(ri.lifted[0].layer.array(key), rc.lifted[0].layer.array(key))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("zero_points", [False, True])
@pytest.mark.parametrize("gated", [False, True])
def test_qmoe_rowwise(bits: int, zero_points: bool, gated: bool) -> None:
    s = spec(gated=gated, activation="silu", expert_bias=gated)

    def block(b, x, s, n):  # type: ignore[no-untyped-def]
        return fused_qmoe(b, x, s, n, bits=bits, zero_points=zero_points)

    model = single_layer(block, s)
    assert layer_errors(model, x_feed(D))[0] <= 1e-4
    _, res = lift_model(model)
    assert res.lifted[0].layer.annotations.precision == f"int{bits}"


@pytest.mark.parametrize("zero_points", [False, True])
def test_qmoe_blockwise_4bit(zero_points: bool) -> None:
    s = spec(experts=4, hidden=32, ffn=32)
    model = single_layer(
        lambda b, x, s, n: fused_qmoe(b, x, s, n, bits=4, block=16, zero_points=zero_points), s
    )
    assert layer_errors(model, x_feed(32))[0] <= 1e-4
    _, res = lift_model(model)
    assert res.lifted[0].layer.annotations.quant_block == 16


def test_qmoe_blockwise_8bit_runs_int8_activations() -> None:
    """ORT quantizes activations to int8 for block-wise 8-bit experts: close, not exact."""
    s = spec(experts=4, hidden=32, ffn=32)
    model = single_layer(lambda b, x, s, n: fused_qmoe(b, x, s, n, bits=8, block=16), s)
    assert layer_errors(model, x_feed(32))[0] <= 5e-2


def test_dequantize_round_trip_is_close() -> None:
    w = np.random.default_rng(3).standard_normal((2, 6, 32)).astype(np.float32)
    for bits, tol in ((8, 0.02), (4, 0.3)):
        q, sc, zp = quantize(w, bits, 16, True)
        back = dequantize(q, sc, zp, bits, 16)
        assert back.shape == w.shape
        assert np.abs(back - w).max() <= tol * np.abs(w).max()


@pytest.mark.parametrize(
    ("attr", "value", "message"),
    [
        ("swiglu_limit_after_activation", 1, "swiglu_limit_after_activation=1 is not supported"),
    ],
)
def test_unsupported_variants_are_errors(attr: str, value: int, message: str) -> None:
    from moec.ir.errors import ModelError

    model = _refuse(single_layer(fused_moe, spec()), **{attr: value})
    with pytest.raises(ModelError, match=message):
        lift_model(model, where="m.onnx")


@pytest.mark.parametrize("normalize", [0, 1])
def test_use_sparse_mixer_lifts_what_ort_cpu_computes(normalize: int) -> None:
    """ORT's CPU MoE ignores use_sparse_mixer=1 (softmax top-k): lifted as that, with a note."""
    model = _refuse(
        single_layer(fused_moe, spec(normalize_topk=bool(normalize))), use_sparse_mixer=1
    )
    assert layer_errors(model, x_feed(D))[0] <= 1e-4
    _, res = lift_model(model)
    layer = res.lifted[0].layer
    assert layer.scoring == "softmax"
    assert layer.annotations.routing_note == "ort_cpu_ignores_use_sparse_mixer"
