"""``moec eval --program``: perplexity from the interpreter's numerics equals ONNX Runtime's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moec.compiler.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
LM = str(ROOT / "models" / "tiny_moe_lm.onnx")
TEXT = str(ROOT / "models" / "tiny_moe_lm.heldout.txt")


def _eval(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, float]:
    assert main(["eval", LM, "--text", TEXT, "--max-bytes", "512", "--json", *extra]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_interpreter_perplexity_matches_onnxruntime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prog = tmp_path / "lm.msp"
    assert main(["compile", LM, "--dims", "batch=4", "seq=128", "-o", str(prog)]) == 0
    capsys.readouterr()
    ort = _eval(capsys)
    interp = _eval(capsys, "--program", str(prog))
    assert interp["engine"] == "interpreter" and ort["engine"] == "onnxruntime"
    assert interp["tokens"] == ort["tokens"] == 511
    assert interp["perplexity"] == pytest.approx(ort["perplexity"], rel=1e-5)
    assert interp["perplexity"] < interp["unigram_perplexity"]


def test_program_with_wrong_shape_is_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prog = tmp_path / "lm.msp"
    assert main(["compile", LM, "--dims", "batch=1", "seq=100", "-o", str(prog)]) == 0
    capsys.readouterr()
    assert main(["eval", LM, "--text", TEXT, "--program", str(prog)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a multiple of the context 128" in err
