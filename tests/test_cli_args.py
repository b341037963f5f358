"""Argument spellings the README promises (issue 14): --dims before MODEL, --passes none,
`models list` naming the shipped files and the `paper` group."""

from __future__ import annotations

from pathlib import Path

import pytest

from moec.compiler.cli.main import attach_dims, main


def test_dims_do_not_swallow_the_model() -> None:
    assert attach_dims(["compile", "--dims", "T=16", "b=2", "m.onnx", "-o", "x"]) == [
        "compile", "--dims=T=16", "--dims=b=2", "m.onnx", "-o", "x",
    ]  # fmt: skip


def test_dims_before_model_compiles_like_after(tmp_path: Path) -> None:
    a, b = tmp_path / "a.msp", tmp_path / "b.msp"
    assert main(["compile", "--dims", "T=16", "tiny_moe", "-o", str(a)]) == 0
    assert main(["compile", "tiny_moe", "--dims", "T=16", "-o", str(b)]) == 0
    assert a.read_text().replace("a.msp", "b.msp") == b.read_text()


def test_passes_none_is_the_exact_program(tmp_path: Path) -> None:
    a, b = tmp_path / "a.msp", tmp_path / "b.msp"
    assert main(["compile", "tiny_moe", "--passes", "none", "-o", str(a)]) == 0
    assert main(["compile", "tiny_moe", "-o", str(b)]) == 0
    assert a.read_text().replace("a.msp", "b.msp") == b.read_text()


def test_models_list_shows_files_and_groups(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("models/tiny_moe_lm.onnx", "models/tiny_moe_lm_fg.onnx", "qwen3-30b-a3b"):
        assert name in out
    assert any(line.startswith("paper ") and "qwen3-30b-a3b" in line for line in out.splitlines())


@pytest.mark.parametrize("command", ["run", "bench"])
def test_residency_choices_are_the_interpreters_policies(command: str, capsys) -> None:
    from moec.backends.interp.residency import POLICIES

    with pytest.raises(SystemExit):
        main([command, "--residency", "nosuch"])
    err = capsys.readouterr().err
    choices = err.split("choose from ", 1)[1].split(")", 1)[0]
    assert choices.replace("'", "").split(", ") == list(POLICIES)
