"""Inputs that used to end in a Python traceback now end in one line and exit 2 (issue 14).

A ``com.microsoft.MoE`` with a rank-2 fc1, an MoE of hidden size 0, an unreleased opset, a target
or sweep TOML that is not UTF-8, a synthetic trace too big to allocate, and ONNX Runtime's own
failures (its native log and C++ source paths stay out of moec's message).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from moec.backends.ort.runtime import error_text
from moec.compiler.cli.main import main
from moec.ir.moe import MoESpec
from moec.models.builder import OnnxBuilder
from moec.models.moe_blocks import fused_moe

T, D = 6, 16


def _one_layer() -> onnx.ModelProto:
    b = OnnxBuilder("one", seed=0)
    x = b.input("x", TensorProto.FLOAT, [T, D])
    y = fused_moe(b, x, MoESpec(experts=4, top_k=2, hidden=D, ffn=32), "moe")
    b.output(y, TensorProto.FLOAT, [T, D])
    m = b.model()
    m.ir_version = 10
    return m


def _rank2() -> onnx.ModelProto:
    m = _one_layer()
    for init in m.graph.initializer:
        if init.name == "moe.fc1":
            a = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array(a.reshape(a.shape[0], -1), init.name))
    return m


def _hidden0() -> onnx.ModelProto:
    m = _one_layer()
    shapes = {"moe.router": (0, 4), "moe.fc1": (4, 64, 0), "moe.fc2": (4, 0, 32)}
    for init in m.graph.initializer:
        zero = np.zeros(shapes[init.name], np.float32)
        init.CopyFrom(numpy_helper.from_array(zero, init.name))
    for vi in (m.graph.input[0], m.graph.output[0]):
        vi.type.tensor_type.shape.dim[1].dim_value = 0
    return m


def _opset99() -> onnx.ModelProto:
    m = _one_layer()
    for imp in m.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = 99
    return m


BAD_MODELS = {
    "rank2": (_rank2, "fc1 weight 'moe.fc1' has shape [4, 1024], expected rank 3"),
    "hidden0": (_hidden0, "sizes must be >= 1, found experts 4, hidden 0"),
    "opset99": (_opset99, "opset 99 of the ONNX domain is not a released opset"),
}
COMMANDS = [
    ["inspect", "{m}"],
    ["compile", "{m}", "-o", "out.msp"],
    ["check", "{m}"],
    ["export", "{m}", "-o", "out.onnx"],
    ["bench", "--model", "{m}", "--tokens", "6", "--strategies", "ep"],
]


def _one_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("moec: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
@pytest.mark.parametrize("kind", sorted(BAD_MODELS))
def test_bad_moe_models(
    kind: str, argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    build, message = BAD_MODELS[kind]
    onnx.save(build(), tmp_path / "m.onnx")
    monkeypatch.chdir(tmp_path)
    err = _one_error([a.replace("{m}", "m.onnx") for a in argv], capsys)
    assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize(
    "argv",
    [
        ["targets", "show", "bad.toml"],
        ["compile", "tiny_moe", "--target", "bad.toml", "-o", "out.msp"],
        ["bench", "--model", "tiny_moe", "--target", "bad.toml", "--tokens", "16"],
        ["sweep", "bad.toml", "--local", "-o", "res"],
    ],
    ids=lambda a: a[0],
)
def test_target_toml_not_utf8(
    argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    (tmp_path / "bad.toml").write_bytes(b'name = "x\xff\xfe"\nbase = "fsedp-2x2"\n')
    monkeypatch.chdir(tmp_path)
    err = _one_error(argv, capsys)
    assert "not UTF-8" in err and "bad.toml" in err


def test_huge_synthetic_trace_is_refused_before_allocation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["trace", "synth", "--model", "qwen3-30b-a3b", "--tokens", "1000000000"]
    err = _one_error([*args, "-o", str(tmp_path / "t.json")], capsys)
    assert "GiB of memory" in err and not (tmp_path / "t.json").exists()


ORT_OPSET_MESSAGE = (
    "[ONNXRuntimeError] : 1 : FAIL : Load model from m.onnx failed:/onnxruntime_src/onnxruntime/"
    "core/graph/model_load_utils.h:46 void onnxruntime::model_load_utils::ValidateOpsetForDomain("
    "const std::unordered_map<std::__cxx11::basic_string<char>, int>&, const onnxruntime::"
    "logging::Logger&, bool, const std::string&, int) ONNX Runtime only *guarantees* support.\n"
)


def test_ort_error_text_has_no_cxx_parts() -> None:
    text = error_text(RuntimeError(ORT_OPSET_MESSAGE))
    assert text == "Load model from m.onnx failed: ONNX Runtime only *guarantees* support."


def test_ort_failure_is_quiet_and_one_line(tmp_path: Path) -> None:
    """ORT refusing to run a node logs natively to stderr unless moec turns its log off."""
    onnx.save(_hidden0(), tmp_path / "h.onnx")
    script = (
        "import sys, numpy as np, onnx\n"
        "from moec.backends.ort.check import run_ort\n"
        "from moec.ir.errors import MoecError\n"
        "try:\n"
        f"    run_ort(onnx.load({str(tmp_path / 'h.onnx')!r}), {{'x': np.zeros(({T}, 0), np.float32)}})\n"
        "except MoecError as err:\n"
        "    print(err)\n"
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.stderr == ""
    assert proc.stdout.startswith("ONNX Runtime failed to run the model: ")
    assert "hidden_size must be positive" in proc.stdout and ".h:" not in proc.stdout
