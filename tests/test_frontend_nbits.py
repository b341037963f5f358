"""MatMulNBits routers (onnxruntime-genai int4/int8 builds): dequantized and computed as ORT does.

The builder quantizes the router like every other linear layer (``com.microsoft.MatMulNBits``,
``accuracy_level=4``). ORT's CPU kernel then quantizes the router's input to int8 per block,
which moves the logits by ~1e-3: the lifted layer models it (``router_act_quant_block``), and
these tests compare single MatMulNBits nodes and the builder's gpt-oss fixtures with ORT.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from moec.compiler.frontend import load_module
from moec.compiler.frontend.nbits import nbits_product
from moec.compiler.frontend.patterns import GraphView
from moec.ir.moe import MoELayer, quantize_activations, router_logits

GENAI = Path(__file__).resolve().parent / "fixtures" / "genai"
K, N, BLOCK = 64, 8, 32


def _matmul_nbits(bits: int, level: int, zero_points: bool, seed: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    blocks = K // BLOCK
    q = rng.integers(0, 2**bits, size=(N, blocks, BLOCK)).astype(np.uint8)
    if bits == 4:
        q = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
    inits = [
        numpy_helper.from_array(q, "w"),
        numpy_helper.from_array(rng.uniform(0.01, 0.1, N * blocks).astype(np.float32), "s"),
    ]
    inputs = ["x", "w", "s"]
    if zero_points:
        zp = rng.integers(0, 2**bits, size=(N, blocks)).astype(np.uint8)
        if bits == 4:
            zp = (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)
        inits.append(numpy_helper.from_array(zp, "zp"))
        inputs.append("zp")
    node = helper.make_node(
        "MatMulNBits", inputs, ["y"], domain="com.microsoft", name="router",
        K=K, N=N, bits=bits, block_size=BLOCK, accuracy_level=level,
    )  # fmt: skip
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, N])], inits,
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10
    return model


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("zero_points", [False, True])
@pytest.mark.parametrize("level", [0, 4])
def test_matmul_nbits_product_is_what_ort_computes(
    bits: int, level: int, zero_points: bool
) -> None:
    model = _matmul_nbits(bits, level, zero_points, seed=bits + level + zero_points)
    x = np.random.default_rng(7).standard_normal((5, K)).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = sess.run(None, {"x": x})
    view = GraphView(model.graph)
    prod = nbits_product(view, model.graph.node[0])
    assert not isinstance(prod, str) and prod.w is not None
    assert prod.act_quant_block == (BLOCK if level == 4 else None)
    a = x if prod.act_quant_block is None else quantize_activations(x, prod.act_quant_block)
    got = a @ prod.w
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    if level == 4:  # the activation quantization is visible: float inputs would not match
        assert np.abs(x @ prod.w - want).max() > 1e-4 * np.abs(want).max()


def test_act_order_is_a_located_refusal() -> None:
    model = _matmul_nbits(4, 0, False, seed=0)
    node = model.graph.node[0]
    node.input.extend(["", "g_idx"])
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(K, np.int32), "g_idx"))
    why = nbits_product(GraphView(model.graph), node)
    assert isinstance(why, str) and "router MatMulNBits router" in why and "g_idx" in why


@pytest.mark.parametrize("bits", [4, 8])
def test_gpt_oss_quantized_router_is_lifted_with_its_precision(bits: int) -> None:
    module, _ = load_module(str(GENAI / f"gpt_oss_int{bits}" / "model.onnx"))
    layers = [op.layer for op in module.moe_ops()]
    assert len(layers) == 2
    for layer in layers:
        assert layer.annotations.source == "com.microsoft.QMoE"
        assert layer.annotations.precision == f"int{bits}"
        assert layer.annotations.router_precision == f"int{bits}"
        assert layer.router_act_quant_block == 32
        assert layer.has("router_b") and layer.swiglu_limit == 7.0
    x = np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32)
    float_logits = x @ layers[0].array("router_w").T + layers[0].array("router_b")
    assert not np.allclose(router_logits(layers[0], x), float_logits, rtol=0, atol=1e-6)


def _layer_alone(path: Path, index: int, float_shared: bool = False) -> tuple[float, MoELayer]:
    """The lifted layer ``index`` of ``path`` against ORT on its own nodes (from the layer input
    to its output: router, QMoE, shared MLP, GatedAdd): max relative error and the layer.
    ``float_shared``: evaluate the shared MLP without its modelled input quantization."""
    from ort_capture import max_rel_error

    from moec.ir.moe import evaluate

    _, result = load_module(str(path))
    lf = result.lifted[index]
    sub = onnx.utils.Extractor(result.model).extract_model([lf.input], [lf.output])
    sub.ir_version = 10
    x = np.random.default_rng(0).standard_normal((1, 8, 32)).astype(np.float32)
    sess = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = sess.run(None, {lf.input: x})
    layer = lf.layer
    if float_shared:
        layer = dataclasses.replace(layer, shared_act_quant_block=None)
    return max_rel_error(evaluate(layer, x), want), layer


@pytest.mark.parametrize("bits", [4, 8])
def test_qwen3_5_quantized_builds_take_the_shared_expert_in(bits: int) -> None:
    """ORT cannot run the whole model (RotaryEmbedding refuses the 3-D M-RoPE position ids), so
    each MoE layer is checked alone. Router, shared MLP and shared gate are MatMulNBits at
    accuracy_level 4: the shared expert is taken in with its per-block int8 inputs modelled."""
    path = GENAI / f"qwen3_5_moe_int{bits}" / "model.onnx"
    for index in (0, 1):
        err, layer = _layer_alone(path, index)
        assert err <= 1e-5
        assert layer.annotations.dense_shared is None
        assert (layer.num_shared, layer.shared_ffn, layer.has("sh_router")) == (1, 24, True)
        assert layer.shared_act_quant_block == 32 and layer.router_act_quant_block == 32
        err_float, _ = _layer_alone(path, index, float_shared=True)
        assert err_float > 1e-4  # the modelled quantization is what makes it exact


@pytest.mark.parametrize("strategy", ["ep", "tp", "fsedp"])
def test_qwen3_5_int8_layer_passes_check_through_the_interpreter(
    strategy: str, tmp_path: Path
) -> None:
    """The extracted layer compiled and interpreted (every strategy slices the shared FFN of 24
    its own way) against ORT: the shared down input's per-block quantization spans the row."""
    from moec.check import check_model

    _, result = load_module(str(GENAI / "qwen3_5_moe_int8" / "model.onnx"))
    lf = result.lifted[1]
    sub = onnx.utils.Extractor(result.model).extract_model([lf.input], [lf.output])
    sub.ir_version = 10
    onnx.save(sub, str(tmp_path / "layer.onnx"))
    report = check_model(str(tmp_path / "layer.onnx"), strategy=strategy)
    assert report.passed and report.max_rel_err < 1e-5, report


def test_mxfp4_checkpoint_tensors_decode_as_the_builder_reads_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """make_fixtures.py's MXFP4 writer against onnxruntime-genai's own decoder (the genai extra):
    values on the e2m1 grid times a power of two come back exactly, others to the nearest."""
    torch = pytest.importorskip("torch")
    loader = pytest.importorskip("onnxruntime_genai.models.loaders.gptoss")
    monkeypatch.syspath_prepend(str(GENAI))
    from make_fixtures import E2M1, mxfp4_quantize

    rng = np.random.default_rng(3)
    grid = np.array([s * m for m in E2M1 for s in (1, -1)], np.float32)
    exact = rng.choice(grid, size=(2, 4, 64)) * np.float32(2.0**-3)
    exact[:, :, 0] = 6 * 2.0**-3  # every block reaches the top of the grid: scale 2**-3
    w = torch.from_numpy(exact.astype(np.float32))
    blocks, scales = mxfp4_quantize(w)
    assert tuple(blocks.shape) == (2, 4, 2, 16) and tuple(scales.shape) == (2, 4, 2)
    mx = loader.GptOssMXFP4Loader("unused")
    names = {}  # the decode path reads four tensors by name
    for proj in ("gate_up_proj", "down_proj"):
        names[f"model.layers.0.mlp.experts.{proj}_blocks"] = blocks
        names[f"model.layers.0.mlp.experts.{proj}_scales"] = scales
    mx.load_tensor = names.__getitem__  # type: ignore[method-assign]
    gate_up, _ = mx.prepare_experts(0, decode=True)
    assert np.array_equal(gate_up.numpy(), exact)
    noisy = torch.from_numpy(rng.standard_normal((2, 4, 64)).astype(np.float32))
    b2, s2 = mxfp4_quantize(noisy)
    names.update({k: (b2 if k.endswith("blocks") else s2) for k in names})
    back, _ = mx.prepare_experts(0, decode=True)
    step = torch.pow(2.0, s2.float() - 127).repeat_interleave(32, dim=-1)
    assert torch.all(
        (back - noisy).abs() <= step + 1e-7
    )  # nearest: half the widest e2m1 gap (2) times the scale
