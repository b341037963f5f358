"""GeGLU ``com.microsoft.MoE``/``QMoE`` nodes (onnxruntime-genai's Gemma-4 builds) and their router.

ONNX Runtime 1.32's CPU kernel refuses ``activation_type='geglu'``, so ``moec check`` runs the
model with each such node written out in standard ops from ORT's own schema
(``moec.backends.ort.geglu``). These tests pin that: the substitute against a numpy formula
written here from the schema text, the lifted layer against the substitute, the Gemma-4 builds
(fp32, int8, int4; ``tests/fixtures/genai/gemma4_*``) through ``moec check``, and the router's
second RMSNorm folded into the router (fp32) or kept as ``router_in_scale`` (int builds, whose
MatMulNBits router quantizes its input).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from frontend_models import T, single_layer, x_feed
from ort_capture import max_rel_error

from moec.backends.ort import geglu
from moec.backends.ort.check import run_ort, session
from moec.check import check_model
from moec.compiler.frontend import load_module
from moec.compiler.frontend.lift import lift_model
from moec.ir.errors import ModelError
from moec.ir.moe import evaluate
from moec.models.moe_blocks import MoESpec, fused_moe, fused_qmoe

GENAI = Path(__file__).resolve().parent / "fixtures" / "genai"
D, F, E = 16, 24, 6


def _geglu(model: onnx.ModelProto, fusion: int = 1) -> onnx.ModelProto:
    node = next(n for n in model.graph.node if n.op_type in ("MoE", "QMoE"))
    for a in node.attribute:
        if a.name == "activation_type":
            a.s = b"geglu"
        if a.name == "swiglu_fusion":
            a.i = fusion
    return model


def _model(quant: int = 0, block: int | None = None, bias: bool = True) -> onnx.ModelProto:
    s = MoESpec(E, 2, D, F, expert_bias=bias)
    if quant:
        return _geglu(single_layer(lambda b, x, sp, n: fused_qmoe(b, x, sp, n, bits=quant,
                                                                  block=block), s))  # fmt: skip
    return _geglu(single_layer(fused_moe, s))


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(session(model).run(None, feeds)[0])


def _schema_formula(model: onnx.ModelProto, x: np.ndarray, fusion: int) -> np.ndarray:
    """ORT's MoE schema text, in numpy: softmax, top-k, renormalized; fc1 rows (gate, up)
    interleaved (fusion 1) or halves (2); GELU(g, approximate='tanh') * l; fc2."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    node = next(n for n in model.graph.node if n.op_type == "MoE")
    router = next(n for n in model.graph.node if n.op_type == "MatMul")
    logits = x @ inits[router.input[1]]
    fc1, b1, fc2, b2 = (inits[node.input[i]] for i in (2, 3, 4, 5))
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        top = np.argsort(-p[t], kind="stable")[:2]
        w = p[t, top] / p[t, top].sum()
        for e, g_w in zip(top, w, strict=True):
            h = fc1[e] @ x[t] + b1[e]
            g, lin = (h[0::2], h[1::2]) if fusion == 1 else (h[:F], h[F:])
            gelu = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))
            out[t] += g_w * (fc2[e] @ (gelu * lin) + b2[e])
    return out


def test_ort_cpu_refuses_geglu_so_check_runs_the_substitute() -> None:
    """Fails once ONNX Runtime's CPU kernel takes geglu: then moec check should run ORT's own
    kernel, and the substitute (backends/ort/geglu.py) should go."""
    model = _model()
    with pytest.raises(Exception, match=geglu.CPU_REFUSAL):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [n.op_type for n in geglu.substitute(model).graph.node if n.domain] == []
    assert _run(model, x_feed(D)).shape == (T, D)  # session() fell back to the substitute


@pytest.mark.parametrize("fusion", [1, 2])
def test_substitute_is_the_schema_formula_and_the_lift_matches_it(fusion: int) -> None:
    model = _geglu(_model(), fusion)
    x = x_feed(D)["x"]
    want = _run(model, {"x": x})
    assert max_rel_error(_schema_formula(model, x, fusion), want) < 1e-5
    _, res = lift_model(model, where="m.onnx")
    layer = res.lifted[0].layer
    assert (layer.activation, layer.gated) == ("gelu_tanh", True)
    assert max_rel_error(evaluate(layer, x), want) < 1e-5
    # The check can fail: a SiLU-gated reading of the same weights is far off.
    assert max_rel_error(evaluate(dataclasses.replace(layer, activation="silu"), x), want) > 1e-2


@pytest.mark.parametrize(("bits", "block"), [(4, None), (4, 8), (8, 8)])
def test_quantized_geglu_lift_matches_the_substitute(bits: int, block: int | None) -> None:
    """8-bit block-wise: activations quantized per block where the row is whole blocks (d = 16,
    F = 24 with block 8: both), in the substitute as in the lifted layer."""
    model = _model(bits, block)
    x = x_feed(D)["x"]
    want = _run(model, {"x": x})
    _, res = lift_model(model, where="m.onnx")
    layer = res.lifted[0].layer
    assert layer.annotations.precision == f"int{bits}"
    assert max_rel_error(evaluate(layer, x), want) < 1e-5
    if bits == 8:
        assert layer.act_quant_block == 8
        float_acts = dataclasses.replace(layer, act_quant_block=None)
        assert max_rel_error(evaluate(float_acts, x), want) > 1e-4


def test_geglu_with_fc3_is_a_located_refusal() -> None:
    model = _model()
    node = next(n for n in model.graph.node if n.op_type == "MoE")
    node.input.extend([node.input[2], ""])
    with pytest.raises(ModelError, match="geglu.*swiglu_fusion=1 or 2 and no fc3"):
        lift_model(model, where="m.onnx")


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_gemma4_builds_pass_check(precision: str) -> None:
    report = check_model(str(GENAI / f"gemma4_{precision}" / "model.onnx"))
    assert report.passed and report.max_rel_err < 1e-5, report


def test_gemma4_router_norm_folded_or_kept() -> None:
    """fp32: c = w_router * scale / w_pre_ff_2 folded into router_w; int4/int8: the MatMulNBits
    router quantizes x * c per block, so c stays a separate router_in_scale."""
    for precision, kept in (("fp32", False), ("int8", True), ("int4", True)):
        module, _ = load_module(str(GENAI / f"gemma4_{precision}" / "model.onnx"))
        layers = [op.layer for op in module.moe_ops()]
        assert len(layers) == 2
        for layer in layers:
            assert (layer.activation, layer.normalize_topk) == ("gelu_tanh", True)
            assert layer.has("router_in_scale") == kept
            assert (layer.router_act_quant_block == 32) == kept


def _layer_from_residual(precision: str, index: int, tmp: Path) -> tuple[Path, str]:
    """Layer ``index`` of a Gemma-4 build alone: from the residual both norms read to the
    MoE node's output (the router's norm and the experts' norm inside)."""
    _, res = load_module(str(GENAI / f"gemma4_{precision}" / "model.onnx"))
    lf = res.lifted[index]
    norm = next(n for n in res.model.graph.node if lf.input in n.output)
    sub = onnx.utils.Extractor(res.model).extract_model([norm.input[0]], [lf.output])
    sub.ir_version = 10
    path = tmp / f"gemma4_{precision}_layer{index}.onnx"
    onnx.save(sub, str(path))
    return path, norm.input[0]


@pytest.mark.parametrize("strategy", ["ep", "tp", "fsedp"])
def test_gemma4_int8_layers_pass_check_alone(strategy: str, tmp_path: Path) -> None:
    """ORT cannot run the builder's int8 Gemma-4 at all (its tied int8 embedding table comes out
    [64, 16] for hidden 32), so each MoE layer is checked alone (``moec check`` does this itself:
    tests/test_check_per_layer.py)."""
    for index in (0, 1):
        path, _ = _layer_from_residual("int8", index, tmp_path)
        report = check_model(str(path), strategy=strategy)
        assert report.passed and report.max_rel_err < 1e-5, report


def test_gemma4_int4_router_in_scale_is_what_makes_it_exact(tmp_path: Path) -> None:
    """Folding c into router_w instead (quantizing x rather than x * c) moves the layer."""
    path, h_name = _layer_from_residual("int4", 0, tmp_path)
    model = onnx.load(str(path))
    _, res = lift_model(model, where="m.onnx")
    lf = res.lifted[0]
    h = np.random.default_rng(3).standard_normal((1, 8, 32)).astype(np.float32)
    got = run_ort(model, {h_name: h}, [lf.input, lf.output])
    x = got[lf.input].reshape(-1, 32)
    want = got[lf.output].reshape(-1, 32)
    layer = lf.layer
    assert max_rel_error(evaluate(layer, x), want) < 1e-5
    c = layer.array("router_in_scale")
    weights = dict(layer.weights)
    del weights["router_in_scale"]
    folded = dataclasses.replace(layer, weights=weights)
    folded.weights["router_w"] = dataclasses.replace(
        layer.weights["router_w"], data=layer.array("router_w") * c[None, :]
    )
    assert max_rel_error(evaluate(folded, x), want) > 1e-4


def test_zero_in_the_experts_norm_weight_is_a_located_refusal(tmp_path: Path) -> None:
    path, _ = _layer_from_residual("fp32", 0, tmp_path)
    model = onnx.load(str(path))
    name = next(
        n.input[1] for n in model.graph.node
        if n.op_type == "SimplifiedLayerNormalization" and "pre_feedforward_layernorm_2" in n.name
    )  # fmt: skip
    init = next(t for t in model.graph.initializer if t.name == name)
    w = onnx.numpy_helper.to_array(init).copy()
    w[3] = 0.0
    init.CopyFrom(onnx.numpy_helper.from_array(w, name))
    with pytest.raises(ModelError, match=r"norm weight is 0 at channels \[3\]"):
        lift_model(model, where="m.onnx")
