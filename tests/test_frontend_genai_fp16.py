"""onnxruntime-genai builder output in fp16: lifted, and ``moec check`` passes on CPU.

The fixtures (``tests/fixtures/genai/{gpt_oss,lfm2_moe}_fp16``, made by its
``make_fixtures.py``) are ``-p fp16 -e cpu`` builds. Three things had to hold for them:

* their attention mask is reformatted for a prompt or one new token, not several after a past,
  so the seeded inputs fall back to a prompt (``moec.check.seeded_ort_run``) and say so;
* the builder declares every ``Constant`` as a scalar in ``value_info``; a dense stage that
  reads one as an input is typed by the array it is fed (``backends/interp/stages.py``);
* LFM2-MoE's router casts between fp16 and float between its stages (``fused_router.py``);
  its fp16 product is materialized and cast up explicitly, a rounding ORT keeps and the lifted
  layer models (``router_logits_fp16``).

ONNX Runtime 1.32's CPU EP has no fp16 kernel for ``com.microsoft.MoE``: it runs the node (and
its router) in float32 with the fp16 weights cast up, and rounds the output to fp16 once, which
is what the lifted op computes (checked layer by layer below, to one fp16 unit).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from moec.backends.ort.check import FP16_TOL, compare
from moec.check import check_model
from moec.compiler.frontend import load_module
from moec.compiler.lower.slots import layer_precision
from moec.ir.llm_inputs import LLMSignature
from moec.ir.moe import evaluate

GENAI = Path(__file__).resolve().parent / "fixtures" / "genai"
FP16 = {"gpt_oss_fp16": (2, "softmax", "swiglu"), "lfm2_moe_fp16": (1, "sigmoid", "silu")}


@pytest.mark.parametrize("name", sorted(FP16))
def test_fp16_builds_are_lifted_at_fp16(name: str) -> None:
    module, _ = load_module(str(GENAI / name / "model.onnx"))
    layers = [op.layer for op in module.moe_ops()]
    count, scoring, activation = FP16[name]
    assert len(layers) == count
    for layer in layers:
        assert (layer.scoring, layer.activation) == (scoring, activation)
        assert layer.annotations.router_precision == "fp16"
        # LFM2 casts its fp16 product up explicitly (rounded); gpt-oss hands it to the node
        assert layer.router_logits_fp16 == (name == "lfm2_moe_fp16")
        assert layer.weights["w_down"].type.dtype == "f16"
        assert layer_precision(layer, None) == "fp16"  # charged at fp16 by the lowering


@pytest.mark.parametrize("name", sorted(FP16))
@pytest.mark.parametrize("strategy", ["ep", "fsedp"])
def test_fp16_builds_pass_check_on_a_prompt(name: str, strategy: str) -> None:
    report = check_model(str(GENAI / name / "model.onnx"), strategy=strategy)
    assert report.passed, report
    assert "checked a prompt (no past, 8 new tokens)" in report.note
    assert "invalid expand shape" in report.note
    # within the fp16 tolerance, with room: a fp16 unit or two at the outputs' scale
    assert report.max_rel_err < FP16_TOL / 2
    assert {o.tol for o in report.outputs} == {FP16_TOL}


def test_one_new_token_after_a_past_also_passes() -> None:
    report = check_model(str(GENAI / "gpt_oss_fp16" / "model.onnx"), dims={"sequence_length": 1})
    assert report.passed, report
    assert report.note == ""  # ORT takes this step as seeded: no fallback


@pytest.mark.parametrize("name", sorted(FP16))
def test_each_fp16_layer_is_within_one_fp16_unit_of_ort(name: str) -> None:
    """The lifted op (float32 on fp16 weights, output rounded to fp16) against ORT on the
    subgraph from the layer's input to its output."""
    import onnxruntime as ort
    from onnx.utils import Extractor

    path = str(GENAI / name / "model.onnx")
    _, result = load_module(path)
    extractor = Extractor(onnx.load(path))
    rng = np.random.default_rng(0)
    for lf in result.lifted:
        sub = extractor.extract_model([lf.input], [lf.output])
        sub.ir_version = 10
        sess = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
        x = rng.standard_normal((1, 64, lf.layer.hidden)).astype(np.float16)
        want = sess.run(None, {lf.input: x})[0]
        assert want.dtype == np.float16
        got = evaluate(lf.layer, x.astype(np.float32)).astype(np.float16)
        unit = np.spacing(np.abs(want)).astype(np.float32)
        diff = np.abs(got.astype(np.float32) - want.astype(np.float32))
        assert (diff <= unit).all(), float((diff / unit).max())
        assert (diff == 0).mean() > 0.99
        if lf.layer.router_logits_fp16:  # ablation: without the rounding ORT keeps, units off
            lf.layer.router_logits_fp16 = False
            off = evaluate(lf.layer, x.astype(np.float32)).astype(np.float16)
            assert (np.abs(off.astype(np.float32) - want.astype(np.float32)) > unit).any()


def test_fp16_outputs_take_the_fp16_tolerance_and_float_outputs_do_not() -> None:
    want16 = np.array([1.0, -2.0, 0.5], np.float16)
    got = want16.astype(np.float32) + np.float32(2e-3)  # 1e-3 relative to max |want| = 2
    assert compare({"y": got}, {"y": want16}, 1e-4).passed
    assert not compare({"y": got}, {"y": want16.astype(np.float32)}, 1e-4).passed
    far = want16.astype(np.float32) + np.float32(2 * 2 * FP16_TOL)
    assert not compare({"y": far}, {"y": want16}, 1e-4).passed


def test_other_generation_steps() -> None:
    sig = LLMSignature({"past_sequence_length": 16, "batch_size": 1})
    dims = {"past_sequence_length": 16, "sequence_length": 8, "total_sequence_length": 24}
    steps = sig.other_steps(dims, {})
    assert [what for what, _ in steps] == [
        "a prompt (no past, 8 new tokens)",
        "one new token after a past of 16",
    ]
    assert steps[0][1]["past_sequence_length"] == 0
    assert steps[0][1]["total_sequence_length"] == 8
    assert steps[1][1]["sequence_length"] == 1
    assert steps[1][1]["total_sequence_length"] == 17
    # sizes the user gave stay: nothing left to vary
    assert sig.other_steps(dims, {"past_sequence_length": 16, "sequence_length": 8}) == []
    assert LLMSignature().other_steps({"sequence_length": 8}, {}) == []


@pytest.mark.parametrize("name", sorted(FP16))
def test_inspect_shows_the_fp16_layers(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``moec inspect`` (no external data loaded) lists the layers, experts at 2 bytes."""
    import json

    from moec.compiler.cli.main import main

    assert main(["inspect", str(GENAI / name / "model.onnx"), "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["moe_layers"]
    count, scoring, activation = FP16[name]
    assert [(lay["scoring"], lay["activation"]) for lay in layers] == [
        (scoring, activation)
    ] * count
    for lay in layers:
        assert lay["weight_bytes_per_expert"] == 3 * lay["hidden"] * lay["ffn"] * 2


def test_trace_dump_seeds_the_step_ort_takes() -> None:
    from moec.check import dump_trace

    trace = dump_trace(str(GENAI / "gpt_oss_fp16" / "model.onnx"))
    assert [lay.ids.shape for lay in trace.layers] == [(8, 2)] * 2  # a prompt of 8 tokens
    assert trace.provenance["dims"]["past_sequence_length"] == 0
