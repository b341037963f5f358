"""The CLI imports only the subcommand that runs (issue 19: onnx and onnxruntime cost about a
second to import, most of a one-layer ``moec run``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from moec.compiler.cli.main import SUMMARIES, build_parser, command_names, main


def _helps(parser: object) -> dict[str, str]:
    sub = next(a for a in parser._actions if a.dest == "command")  # type: ignore[attr-defined]
    return {c.dest: c.help for c in sub._choices_actions}


def test_summaries_are_the_help_each_command_registers() -> None:
    assert set(SUMMARIES) == set(command_names())
    assert _helps(build_parser(full=True)) == SUMMARIES


def _modules_after(argv: list[str], cwd: Path) -> set[str]:
    code = (
        "import sys\n"
        "from moec.compiler.cli.main import main\n"
        f"code = main({argv!r})\n"
        "print(code, 'onnx' in sys.modules, 'onnxruntime' in sys.modules)\n"
    )
    out = (
        subprocess.run(
            [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, check=True
        )
        .stdout.splitlines()[-1]
        .split()
    )
    assert out[0] == "0", out
    return {
        name
        for name, loaded in zip(("onnx", "onnxruntime"), out[1:], strict=True)
        if loaded == "True"
    }


def test_run_and_inspect_of_a_shape_only_program_do_not_import_onnx(tmp_path: Path) -> None:
    out = str(tmp_path / "q.msp")
    assert main(["-q", "compile", "yuan2-m32", "--tokens", "16", "-o", out]) == 0
    assert _modules_after(["-q", "run", "q.msp"], tmp_path) == set()
    assert _modules_after(["inspect", "q.msp"], tmp_path) == set()


def test_a_bench_imports_neither_rich_nor_the_package_metadata(tmp_path: Path) -> None:
    """``moec bench --json`` prints JSON: rich (tables) and importlib.metadata (``--version``)
    are imported only when asked for, a tenth of a command's start-up between them; it parses
    no program text, so neither Lark nor the ``.msp`` parser is imported."""
    argv = ["-q", "bench", "--model", "yuan2-m32", "--target", "fsedp-2x2", "--tokens", "16",
            "--strategies", "ep", "--layers", "1", "--json"]  # fmt: skip
    code = (
        "import sys\n"
        "from moec.compiler.cli.main import main\n"
        f"code = main({argv!r})\n"
        "print(code, 'rich' in sys.modules, 'importlib.metadata' in sys.modules,\n"
        "      'lark' in sys.modules, 'moec.ir.stream.parser' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[-1].split() == ["0", "False", "False", "False", "False"]
    version = subprocess.run(
        [sys.executable, "-m", "moec", "--version"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert version[0] == "moec" and version[1].count(".") >= 1  # read when asked for


def test_the_parser_is_there_on_first_use() -> None:
    """:mod:`moec.ir.stream` imports its parser when one of its two names is first asked for."""
    import moec.ir.stream as stream
    from moec.ir.stream import parse_program
    from moec.ir.stream.parser import load_program

    assert stream.load_program is load_program
    assert parse_program.__module__ == "moec.ir.stream.parser"
    try:
        stream.no_such_name  # noqa: B018 - the attribute lookup is the test
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("an unknown name of moec.ir.stream was found")
