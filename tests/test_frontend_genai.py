"""ONNX Runtime GenAI builder output: recognized, and ``moec check`` passes on seeded inputs.

The fixtures (``tests/fixtures/genai/``, made by its ``make_fixtures.py``) are builder output
for tiny LFM2-MoE (int8 and int4 QMoE, a sigmoid router written out in elementary ops) and
gpt-oss (fp32 MoE with SwiGLU and a sliding-window layer; int8/int4 QMoE with a MatMulNBits
router). Their inputs carry the generation
signature (attention mask, past key/values, ``kv_cache_dim``), which the seeded inputs learn from
``genai_config.json`` (:mod:`moec.ir.llm_inputs`).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from moec.check import check_model
from moec.compiler.frontend import load_module
from moec.compiler.frontend.fused import dequantize
from moec.ir.llm_inputs import llm_signature

ROOT = Path(__file__).resolve().parents[1]
GENAI = ROOT / "tests" / "fixtures" / "genai"
FIXTURES = ("lfm2_moe_int8", "lfm2_moe_int4", "gpt_oss_fp32", "gpt_oss_int8", "gpt_oss_int4")


@pytest.mark.parametrize("name", FIXTURES)
def test_builder_output_passes_check_on_seeded_inputs(name: str) -> None:
    report = check_model(str(GENAI / name / "model.onnx"))
    assert report.passed, report
    assert report.max_rel_err < 1e-5


@pytest.mark.parametrize(
    ("name", "layers", "scoring", "activation"),
    [
        ("lfm2_moe_int8", 1, "sigmoid", "silu"),
        ("lfm2_moe_int4", 1, "sigmoid", "silu"),
        ("gpt_oss_fp32", 2, "softmax", "swiglu"),
        ("gpt_oss_int8", 2, "softmax", "swiglu"),
        ("gpt_oss_int4", 2, "softmax", "swiglu"),
        ("qwen3_5_moe_fp32", 2, "softmax", "silu"),
    ],
)
def test_builder_output_is_lifted(name: str, layers: int, scoring: str, activation: str) -> None:
    module, _ = load_module(str(GENAI / name / "model.onnx"))
    found = [op.layer for op in module.moe_ops()]
    assert len(found) == layers
    assert {(lay.scoring, lay.activation) for lay in found} == {(scoring, activation)}


def test_qwen3_5_shared_expert_joined_by_gated_add_is_in_the_op() -> None:
    """Its builder joins a sigmoid-gated shared MLP with com.microsoft.GatedAdd. ONNX Runtime
    1.32 cannot run this model (RotaryEmbedding refuses 3-D M-RoPE position ids), so the check
    is per layer: the lifted op against ORT on the MoE node, the MLP and GatedAdd alone."""
    from onnx import TensorProto, helper
    from ort_capture import max_rel_error

    from moec.ir.moe import evaluate

    path = GENAI / "qwen3_5_moe_fp32" / "model.onnx"
    _, result = load_module(str(path), load_weights=False)
    layers = [lf.layer for lf in result.lifted]
    assert [(lay.num_shared, lay.shared_ffn, lay.has("sh_router")) for lay in layers] == [
        (1, 24, True)
    ] * 2
    _, result = load_module(str(path))
    lf = result.lifted[0]
    g = result.model.graph
    wanted = {lf.output}
    nodes: list[onnx.NodeProto] = []
    by_out = {o: n for n in g.node for o in n.output}
    while wanted:  # the layer's nodes back to its input
        name = wanted.pop()
        n = by_out.get(name)
        if n is None or name == lf.input or n in nodes:
            continue
        nodes.append(n)
        wanted |= {i for i in n.input if i}
    inits = [t for t in g.initializer if any(t.name in n.input for n in nodes)]
    sub = helper.make_model(
        helper.make_graph(
            sorted(nodes, key=list(g.node).index), "layer",
            [helper.make_tensor_value_info(lf.input, TensorProto.FLOAT, [1, 8, 32])],
            [helper.make_tensor_value_info(lf.output, TensorProto.FLOAT, None)], inits,
        ),
        opset_imports=list(result.model.opset_import),
    )  # fmt: skip
    sub.ir_version = 10
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((1, 8, 32)).astype(np.float32)
    sess = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    (want,) = sess.run(None, {lf.input: x})
    assert max_rel_error(evaluate(lf.layer, x), want) <= 1e-5


def test_signature_from_the_config_next_to_the_model() -> None:
    path = GENAI / "gpt_oss_fp32" / "model.onnx"
    model = onnx.load(str(path), load_external_data=False)
    shapes = {
        i.name: [d.dim_value or d.dim_param for d in i.type.tensor_type.shape.dim]
        for i in model.graph.input
    }
    sig = llm_signature(path, shapes)
    # head_size 16 and the sliding window 16 come from genai_config.json; batch 1 with a past.
    assert sig.dims == {
        "batch_size": 1, "kv_cache_dim": 16, "past_sequence_length": 16, "past_sliding_length": 16,
    }  # fmt: skip
    assert sig.ones == {"attention_mask"}
    resolved = sig.resolve({**sig.dims, "sequence_length": 8, "total_sequence_length": 8}, {})
    assert resolved["total_sequence_length"] == 24
    given = {"total_sequence_length": 30}
    assert sig.resolve({**resolved, **given}, given)["total_sequence_length"] == 30
    shape = {"attention_mask": (1, 24), "position_ids": (1, 8)}
    dtypes = {k: np.dtype(np.int64) for k in shape}
    fixed = type(sig)(sig.dims, sig.ones, frozenset({"position_ids"})).fixed_inputs(
        shape, dtypes, 16
    )
    assert fixed["attention_mask"].tolist() == [[1] * 24]
    assert fixed["position_ids"].tolist() == [list(range(16, 24))]


def test_without_the_config_kv_dim_must_be_given(tmp_path: Path) -> None:
    for f in ("model.onnx", "model.onnx.data"):
        shutil.copy(GENAI / "lfm2_moe_int8" / f, tmp_path / f)
    # kv_cache_dim then takes the default size, and ONNX Runtime names the head size it wants;
    # moec check then checks each MoE layer alone, and its note says why.
    alone = check_model(str(tmp_path / "model.onnx"))
    assert alone.per_layer and re.search("past_key.*expected 16", alone.note), alone.note
    report = check_model(str(tmp_path / "model.onnx"), dims={"kv_cache_dim": 16})
    assert report.passed and not report.per_layer


def test_bad_config_is_a_located_error(tmp_path: Path) -> None:
    for f in ("model.onnx", "model.onnx.data"):
        shutil.copy(GENAI / "lfm2_moe_int8" / f, tmp_path / f)
    (tmp_path / "genai_config.json").write_text("{not json")
    run = subprocess.run(
        [sys.executable, "-m", "moec", "check", str(tmp_path / "model.onnx")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2
    assert "genai_config.json" in run.stderr and "Traceback" not in run.stderr


def test_dequantize_a_row_shorter_than_a_block() -> None:
    # 4-bit weights of rows 16 long with block 32: one partial block per row (ORT's layout).
    rng = np.random.default_rng(0)
    vals = rng.integers(0, 16, size=(2, 3, 16)).astype(np.uint8)
    packed = (vals[..., 0::2] | (vals[..., 1::2] << 4)).astype(np.uint8)
    scales = rng.random((2, 3, 1)).astype(np.float32)
    got = dequantize(packed, scales, None, 4, 32)
    assert np.allclose(got, (vals.astype(np.float32) - 8) * scales)
