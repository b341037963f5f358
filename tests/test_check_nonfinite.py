"""`moec check` never passes on Inf/NaN (issue 14): it fails, saying which output and where."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from moec.backends.ort.check import compare
from moec.compiler.cli.main import main
from moec.ir.errors import CheckFailed
from moec.ir.moe import MoESpec
from moec.models.builder import OnnxBuilder
from moec.models.moe_blocks import fused_moe

T, D = 6, 16


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    b = OnnxBuilder("one_layer", seed=0)
    x = b.input("x", TensorProto.FLOAT, [T, D])
    y = fused_moe(b, x, MoESpec(experts=4, top_k=2, hidden=D, ffn=32), "moe")
    b.output(y, TensorProto.FLOAT, [T, D])
    m = b.model()
    m.ir_version = 10
    path = tmp_path_factory.mktemp("nonfinite") / "one.onnx"
    onnx.save(m, path)
    return path


def _inputs(folder: Path, value: float) -> Path:
    x = np.random.default_rng(0).standard_normal((T, D)).astype(np.float32)
    x[3, 5] = value
    path = folder / f"x_{value}.npz"
    np.savez(path, x=x)
    return path


@pytest.mark.parametrize("value", [np.inf, np.nan])
@pytest.mark.parametrize("approx", [[], ["--approx", "caee-prune"]], ids=["exact", "approx"])
def test_check_fails_on_non_finite(
    model: Path, tmp_path: Path, value: float, approx: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    inputs = _inputs(tmp_path, value)
    code = main(["check", str(model), "--inputs", str(inputs), *approx])
    cap = capsys.readouterr()
    assert code == 1, cap
    assert "passed" not in cap.out
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1, cap.err
    assert "output " in lines[0] and "non-finite" in lines[0] and "at index [3, " in lines[0]
    assert "Warning" not in cap.err


def test_finite_inputs_still_pass(model: Path, tmp_path: Path) -> None:
    assert main(["check", str(model), "--inputs", str(_inputs(tmp_path, 0.5))]) == 0


def test_compare_names_the_side_and_first_index() -> None:
    want = {"y": np.array([[1.0, 2.0], [np.inf, 4.0]], np.float32)}
    with pytest.raises(CheckFailed, match=r"output y: .*ONNX Runtime at index \[1, 0\]"):
        compare({"y": want["y"].copy()}, want)
    got = {"y": np.array([[1.0, np.nan], [3.0, 4.0]], np.float32)}
    with pytest.raises(CheckFailed, match=r"from the interpreter at index \[0, 1\]"):
        compare(got, {"y": np.ones((2, 2), np.float32)})


def test_no_runtime_warning_reaches_stderr(model: Path, tmp_path: Path) -> None:
    """In a real process (pytest would capture the warnings of an in-process run)."""
    import subprocess
    import sys

    inputs = _inputs(tmp_path, np.inf)
    argv = [sys.executable, "-m", "moec.compiler.cli.main", "check", str(model), "--inputs"]
    proc = subprocess.run([*argv, str(inputs)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("moec: error: output ") and proc.stderr.count("\n") == 1
