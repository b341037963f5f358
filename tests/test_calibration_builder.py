"""Calibration (``compiler/calibration.py``) on onnxruntime-genai builder output.

Calibration seeds inputs by token count alone, which a decoder's past key/value cache does not
accept (ORT: "Input 'past_key' dimension 3 should match the packed KV head dimension"): that
is a located one-line error naming the workaround, a routing trace, and the workaround works.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from moec.compiler.cli.main import main

MODEL = str(Path(__file__).parent / "fixtures" / "genai" / "lfm2_moe_int8" / "model.onnx")


def test_calibration_failure_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", MODEL, "--approx", "annotate-importance"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and err.count("\n") == 1
    assert "calibration: ONNX Runtime failed on the dense ops before" in err
    assert "give the pass a routing trace instead (trace=FILE" in err


def test_a_dumped_trace_calibrates_instead(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = str(tmp_path / "trace.json")
    assert main(["trace", "dump", MODEL, "-o", trace]) == 0
    pipeline = f"annotate-importance{{trace={trace}}},assign-precision{{budget=0.01,trace={trace}}}"
    assert main(["check", MODEL, "--approx", pipeline, "--tol", "1e-3"]) == 0
    assert "passed" in capsys.readouterr().out
