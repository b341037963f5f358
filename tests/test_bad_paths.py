"""Bad file arguments to every command that reads or writes a file (issue 14).

Each case runs ``moec`` in-process in a folder holding a model, a compiled program (with its
weights companion), a trace, a target, a sweep spec and a text file, and asserts: exit code 2,
one message on stderr starting ``moec: error:`` (a parse error adds its source line), nothing on it that looks like a traceback, every
file in the folder byte-identical afterwards and no file added (no partial or temporary output).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from moec.compiler.cli.main import main

TARGET_TOML = """\
name = "mine"
base = "fsedp-2x2"
"""

ROOT = Path(__file__).resolve().parents[1]

SPEC_TOML = """\
[sweep]
name = "t"

[fixed]
models = "tiny_moe"
targets = "fsedp-2x2"
strategies = "ep"

[axes]
tokens = [16]
"""


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    assert main(["models", "build", "tiny_moe", "-o", str(root / "m.onnx")]) == 0
    assert main(["compile", str(root / "m.onnx"), "-o", str(root / "p.msp")]) == 0
    args = ["trace", "synth", "--experts", "8", "--top-k", "2", "--layers", "2"]
    assert main([*args, "--tokens", "16", "-o", str(root / "t.json")]) == 0
    (root / "my.toml").write_text(TARGET_TOML)
    (root / "spec.toml").write_text(SPEC_TOML)
    (root / "text.txt").write_text("hello world\n" * 8)
    (root / "notes.txt").write_text("not a model\n")
    (root / "sub").mkdir()
    shutil.copy(ROOT / "models" / "tiny_moe_lm.onnx", root / "lm.onnx")
    spec = ["sweep", str(root / "spec.toml"), "--local", "-o", str(root / "res")]
    assert main(spec) == 0
    return root


@pytest.fixture
def work(pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "w"
    shutil.copytree(pristine, folder)
    monkeypatch.chdir(folder)
    yield folder
    for path in folder.rglob("*"):  # let pytest remove what a case made read-only
        if path.is_symlink():
            continue
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def _snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = "link to " + os.readlink(path)
        else:
            out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _expect_error(argv: list[str], folder: Path, capsys: pytest.CaptureFixture[str]) -> str:
    before = _snapshot(folder)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (argv, err)
    lines = err.strip().splitlines()
    # one message; a parse error may add the source line and a caret under it, indented
    assert lines and lines[0].startswith("moec: error: "), (argv, err)
    assert all(line.startswith("  ") for line in lines[1:]), (argv, err)
    assert "Traceback" not in err and "Error:" not in err.removeprefix("moec: error:"), err
    assert _snapshot(folder) == before, argv
    return lines[0]


# The same output as an input (or an input's weights companion) is refused, input untouched.
SAME_AS_INPUT = [
    ["compile", "m.onnx", "-o", "m.onnx"],
    ["compile", "p.msp.weights.onnx", "-o", "p.msp"],
    ["compile", "m.onnx", "--target", "my.toml", "-o", "my.toml"],
    ["compile", "m.onnx", "--routing", "t.json", "-o", "t.json"],
    ["run", "p.msp", "--trace-out", "p.msp"],
    ["run", "p.msp", "--dump-expanded", "p.msp"],
    ["run", "p.msp", "--dump-expanded", "p.msp.weights.onnx"],
    ["run", "p.msp", "--trace-out", "x.json", "--dump-expanded", "x.json"],
    ["export", "m.onnx", "-o", "m.onnx"],
    ["export", "m.onnx", "-o", "./sub/../m.onnx"],
    ["trace", "synth", "--model", "m.onnx", "--tokens", "8", "-o", "m.onnx"],
    ["trace", "dump", "m.onnx", "-o", "m.onnx"],
    ["trace", "dump", "m.onnx", "--inputs", "t.json", "-o", "t.json"],
    ["trace", "dump", "m.onnx", "--target", "my.toml", "-o", "my.toml"],
    ["trace", "dump", "lm.onnx", "--decode", "2", "--text", "t.json", "-o", "t.json"],
    ["trace", "dump", "lm.onnx", "--decode", "2", "-o", "lm.onnx"],
    [
        "trace",
        "synth",
        "--model",
        "m.onnx",
        "--target",
        "my.toml",
        "--tokens",
        "8",
        "-o",
        "my.toml",
    ],
    ["run", "p.msp", "--routing", "t.json", "--trace-out", "t.json"],
    ["run", "p.msp", "--target", "my.toml", "--dump-expanded", "my.toml"],
    ["sweep", "plot", "res", "--x", "tokens", "--y", "latency_s", "-o", "res/sweep.sqlite"],
    ["bench", "--model", "m.onnx", "--tokens", "16", "--strategies", "ep", "--plot", "m.onnx"],
]


@pytest.mark.parametrize("argv", SAME_AS_INPUT, ids=lambda a: " ".join(a))
def test_output_same_as_input_is_refused(
    argv: list[str], work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _expect_error(argv, work, capsys)
    assert "same file" in line


def test_output_same_as_input_through_a_link(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.symlink("m.onnx", work / "alias.onnx")
    _expect_error(["compile", "m.onnx", "-o", "alias.onnx"], work, capsys)


# Outputs that cannot be written: a missing folder, a folder that is a file, an existing folder.
WRITERS = [
    ["compile", "m.onnx", "-o", "{out}.msp"],
    ["run", "p.msp", "--trace-out", "{out}.json"],
    ["run", "p.msp", "--dump-expanded", "{out}.msp"],
    ["export", "m.onnx", "-o", "{out}.onnx"],
    ["models", "build", "tiny_moe", "-o", "{out}.onnx"],
    [
        "trace",
        "synth",
        "--experts",
        "4",
        "--top-k",
        "1",
        "--layers",
        "1",
        "--tokens",
        "4",
        "-o",
        "{out}.json",
    ],  # fmt: skip
    ["trace", "dump", "m.onnx", "-o", "{out}.json"],
    ["trace", "dump", "lm.onnx", "--decode", "2", "--batch", "2", "-o", "{out}.json"],
    ["sweep", "plot", "res", "--x", "tokens", "--y", "latency_s", "-o", "{out}.png"],
    [
        "bench",
        "--model",
        "tiny_moe",
        "--tokens",
        "16",
        "--strategies",
        "ep",
        "--plot",
        "{out}.png",
    ],  # fmt: skip
]
BAD_OUTPUTS = {
    "missing-folder": "nope/out",
    "under-a-file": "notes.txt/out",
    "existing-folder": "sub/d",
}


@pytest.mark.parametrize("case", sorted(BAD_OUTPUTS))
@pytest.mark.parametrize("argv", WRITERS, ids=lambda a: " ".join(a[:2]) + " " + a[-2])
def test_unwritable_output(
    argv: list[str], case: str, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = BAD_OUTPUTS[case]
    filled = [a.replace("{out}", out) for a in argv]
    if case == "existing-folder":
        (work / filled[-1]).mkdir()
    _expect_error(filled, work, capsys)


@pytest.mark.parametrize("out", ["notes.txt", "notes.txt/res", "sub/../notes.txt"])
def test_sweep_results_folder_that_is_a_file(
    out: str, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _expect_error(["sweep", "spec.toml", "--local", "-o", out], work, capsys)
    assert "notes.txt: is a file, not a results folder" in line, line


def test_sweep_results_folder_that_is_a_dangling_link(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.symlink("nowhere", work / "lnk")
    line = _expect_error(["sweep", "spec.toml", "--local", "-o", "lnk"], work, capsys)
    assert "lnk: is a link to a missing path" in line and "Errno" not in line, line


def test_sweep_journal_that_is_a_folder(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (work / "res2" / "sweep.sqlite").mkdir(parents=True)
    line = _expect_error(["sweep", "spec.toml", "--local", "-o", "res2"], work, capsys)
    assert "sweep.sqlite: is a folder, not a sweep journal" in line, line


def test_sweep_journal_that_is_not_a_database(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (work / "res2").mkdir()
    (work / "res2" / "sweep.sqlite").write_text("not a database\n")
    line = _expect_error(["sweep", "spec.toml", "--local", "-o", "res2"], work, capsys)
    assert "cannot open the sweep journal" in line, line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("out", ["sub", "sub/res"])
def test_sweep_results_in_a_read_only_folder(
    out: str, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    os.chmod(work / "sub", 0o555)
    line = _expect_error(["sweep", "spec.toml", "--local", "-o", out], work, capsys)
    assert "Errno" not in line, line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
@pytest.mark.parametrize("argv", WRITERS, ids=lambda a: " ".join(a[:2]) + " " + a[-2])
def test_read_only_folder(argv: list[str], work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    os.chmod(work / "sub", 0o555)
    _expect_error([a.replace("{out}", "sub/out") for a in argv], work, capsys)


# Inputs that are missing, of the wrong kind (a folder, or a text file), or unreadable.
READERS = [
    ["compile", "{in}", "-o", "out.msp"],
    ["export", "{in}", "-o", "out.onnx"],
    ["inspect", "{in}"],
    ["check", "{in}"],
    ["run", "{in}"],
    ["trace", "stats", "{in}"],
    ["trace", "dump", "{in}", "-o", "out.json"],
    ["targets", "show", "{in}"],
    ["sweep", "{in}", "--local", "-o", "res"],
    ["sweep", "plot", "{in}", "--x", "tokens", "--y", "latency_s", "-o", "out.png"],
    ["eval", "m.onnx", "--text", "{in}"],
    ["compile", "m.onnx", "--routing", "{in}", "-o", "out.msp"],
    ["compile", "m.onnx", "--target", "{in}", "-o", "out.msp"],
    ["check", "m.onnx", "--inputs", "{in}"],
    ["run", "p.msp", "--inputs", "{in}"],
    ["run", "p.msp", "--routing", "{in}"],
    ["run", "p.msp", "--target", "{in}"],
    ["trace", "dump", "m.onnx", "--inputs", "{in}", "-o", "out.json"],
    ["trace", "dump", "lm.onnx", "--decode", "2", "--text", "{in}", "-o", "out.json"],
    ["trace", "synth", "--model", "{in}", "--tokens", "8", "-o", "out.json"],
    ["trace", "synth", "--model", "m.onnx", "--target", "{in}", "--tokens", "8", "-o", "o.json"],
    ["eval", "lm.onnx", "--text", "text.txt", "--program", "{in}"],
    ["bench", "--model", "{in}", "--tokens", "16", "--strategies", "ep"],
    ["bench", "--model", "m.onnx", "--routing", "{in}", "--tokens", "16", "--strategies", "ep"],
    ["bench", "--model", "m.onnx", "--target", "{in}", "--tokens", "16", "--strategies", "ep"],
]
BAD_INPUTS = {"missing": "gone.onnx", "folder": "sub", "text": "notes.txt"}


def _reader_id(argv: list[str]) -> str:
    return " ".join(argv[: argv.index("{in}")])


def _flag(argv: list[str]) -> str:
    """The option that takes the file (or the command, for a positional file)."""
    before = argv[argv.index("{in}") - 1]
    return before if before.startswith("--") else " ".join(a for a in argv[:2] if a != "{in}")


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("argv", READERS, ids=_reader_id)
def test_bad_input(
    argv: list[str], case: str, work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = BAD_INPUTS[case]
    if _flag(argv) in ("targets show", "--target"):
        name = name.replace(".onnx", ".toml")
    if _flag(argv) == "--text" and case == "text":
        pytest.skip("any file is a text to score")
    _expect_error([a.replace("{in}", name) for a in argv], work, capsys)


# The readable file each reader takes, made unreadable by the test.
UNREADABLE = {
    "targets show": "my.toml", "--target": "my.toml", "--routing": "t.json",
    "--text": "text.txt", "--inputs": "text.txt", "--program": "p.msp", "run": "p.msp",
    "trace stats": "t.json", "sweep": "spec.toml", "sweep plot": "res/sweep.sqlite",
}  # fmt: skip


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads unreadable files")
@pytest.mark.parametrize("argv", READERS, ids=_reader_id)
def test_unreadable_input(argv: list[str], work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flag = _flag(argv)
    name = UNREADABLE.get(flag, "m.onnx")
    os.chmod(work / name, 0)
    given = "res" if flag == "sweep plot" else name
    _expect_error([a.replace("{in}", given) for a in argv], work, capsys)
