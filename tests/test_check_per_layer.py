"""``moec check`` layer by layer: when ONNX Runtime cannot run the whole model (four committed
onnxruntime-genai builds), or with ``--per-layer``, each lifted MoE layer is checked alone on the
original model's subgraph from its inputs to its output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import moec.check
from moec.backends.ort.extract import LayerExtractor
from moec.check import check_model
from moec.compile import load_model
from moec.compiler.cli.main import main
from moec.ir.errors import ModelError, ReferenceRefused

GENAI = Path(__file__).resolve().parent / "fixtures" / "genai"
TORCH_LOOP = Path(__file__).resolve().parent / "fixtures" / "torch_loop"

#: builds ONNX Runtime cannot run whole, and the operator it fails in
REFUSED = {
    "gemma4_int8": "SimplifiedLayerNormalization",
    "qwen3_5_moe_fp32": "RotaryEmbedding",
    "qwen3_5_moe_int4": "RotaryEmbedding",
    "qwen3_5_moe_int8": "RotaryEmbedding",
}


@pytest.mark.parametrize("strategy", ["ep", "tp", "fsedp"])
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_builds_ort_cannot_run_pass_layer_by_layer(name: str, strategy: str) -> None:
    report = check_model(str(GENAI / name / "model.onnx"), strategy=strategy)
    assert report.per_layer and report.passed, report
    assert report.note.startswith("ONNX Runtime could not run the whole model (failed to run")
    assert REFUSED[name] in report.note and report.note.endswith("each MoE layer was checked alone")
    assert [o.layer for o in report.outputs] == ["moe0", "moe1"]
    assert all(o.shape == (1, 8, 32) for o in report.outputs)
    assert report.max_rel_err < 1e-5


def test_the_fallback_can_fail(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The interpreter's outputs of the first layer moved by 1e-3 of their scale: that layer
    fails, the other passes, the check fails (exit 1)."""
    interpret = moec.check.interpret
    calls: list[int] = []

    def off(*args: object) -> tuple[dict[str, np.ndarray], int, int]:
        got, dropped, total = interpret(*args)  # type: ignore[arg-type]
        calls.append(1)
        if len(calls) % 2 == 0:  # the second layer of each check: as computed
            return got, dropped, total
        return {k: v + 1e-3 * np.abs(v).max() for k, v in got.items()}, dropped, total

    monkeypatch.setattr(moec.check, "interpret", off)
    path = str(GENAI / "qwen3_5_moe_int8" / "model.onnx")
    report = check_model(path)
    assert report.per_layer and not report.passed
    assert 9e-4 < report.outputs[0].max_rel_err < 1.1e-3
    assert [report.output_passed(o) for o in report.outputs] == [False, True]
    assert main(["check", path]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("note: ONNX Runtime could not run the whole model")
    assert [line.split(":")[0] for line in out[1:3]] == ["layer moe0", "layer moe1"]
    assert " FAILED " in out[1] and " passed " in out[2]
    assert out[3].startswith("FAILED: max_rel_err")


def test_whole_model_path_is_unchanged_for_models_ort_runs() -> None:
    report = check_model(str(GENAI / "gpt_oss_int4" / "model.onnx"))
    assert not report.per_layer and report.note == "" and report.passed
    assert "logits" in [o.name for o in report.outputs]
    assert all(o.layer == "" for o in report.outputs)
    assert "per_layer" not in report.to_json()


def test_per_layer_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    """``--per-layer`` on models ORT runs: a fused catalog model whose MoE op inference cannot
    type, and a Gemma-4 build whose layer starts at the residual both norms read."""
    assert main(["check", "tiny_moe", "--per-layer", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["per_layer"] is True and doc["passed"] is True
    assert doc["note"] == "each MoE layer was checked alone (--per-layer)"
    assert [o["layer"] for o in doc["outputs"]] == ["moe0", "moe1"]
    report = check_model(str(GENAI / "gemma4_fp32" / "model.onnx"), per_layer=True)
    assert report.per_layer and report.passed and report.max_rel_err < 1e-5


def test_layer_inputs_by_dataflow() -> None:
    """Gemma-4: the experts read the residual and the router norm's output of it; the layer alone
    starts at the residual (the other input is computed from it)."""
    _, lifted, _ = load_model(str(GENAI / "gemma4_int8" / "model.onnx"))
    g = lifted.model.graph
    extractor = LayerExtractor(lifted.model, [(lf.input, lf.output) for lf in lifted.lifted])
    for lf in lifted.lifted:
        norm = next(n for n in g.node if lf.input in n.output)
        assert extractor.layer_inputs(lf.nodes, lf.input) == [norm.input[0]]
        sub, inputs = extractor.subgraph(lf.nodes, lf.input, lf.output)
        assert [i.name for i in sub.graph.input] == inputs
        assert [o.name for o in sub.graph.output] == [lf.output]
        assert norm.name in [n.name for n in sub.graph.node]  # the router's norm is inside


def test_a_layer_reading_from_outside_is_a_located_refusal() -> None:
    _, lifted, _ = load_model(str(GENAI / "qwen3_5_moe_fp32" / "model.onnx"))
    lf = lifted.lifted[0]
    extractor = LayerExtractor(lifted.model)
    # layer 0's output from layer 1's input: what layer 0 reads is outside
    with pytest.raises(ModelError, match="also reads .* from outside the layer"):
        extractor.subgraph([], lifted.lifted[1].input, lf.output)


def test_ort_refusing_a_layer_is_a_located_error_with_a_hint() -> None:
    """The TorchScript export's second layer input has a dimension shape inference leaves open:
    at its default size ORT refuses the subgraph; ``--dims`` sizes it."""
    path = str(TORCH_LOOP / "mlp.torchscript.onnx")
    with pytest.raises(ReferenceRefused) as err:
        check_model(path, per_layer=True)
    text = str(err.value)
    assert text.startswith(f"{path}: MoE layer moe1: ONNX Runtime failed to run the model")
    assert "--dims unk__35=N sets it" in text and "\n" not in text
    assert check_model(path, per_layer=True, dims={"unk__35": 1}).passed
