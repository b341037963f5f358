"""The Python API: the README's example runs, and nothing outside the CLI imports the CLI."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from moec import api

ROOT = Path(__file__).resolve().parents[1]
CLI = "moec.compiler.cli"
#: Only the entry point may be imported from the CLI: by tests (to drive it) and ``python -m moec``.
ENTRY = "moec.compiler.cli.main"
THIS = Path(__file__).resolve()  # names the CLI on purpose, to test the checker


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None, "README's Python API section has no python example"
    return match.group(1)


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md", "exec"), {})
    assert (tmp_path / "tiny.msp").is_file()
    assert (tmp_path / "tiny.msp.weights.onnx").is_file()
    out = capsys.readouterr().out
    assert "outputs ['" in out and "('fsedp', " in out


def test_run_passes_and_load_model() -> None:
    module, lifted, name = api.load_model("tiny_moe")
    assert name == "tiny_moe" and module.moe_ops()
    assert api.run_passes(module, "") is module
    after = api.run_passes(module, "annotate-importance")
    layer = after.moe_ops()[0].layer
    assert layer.annotations.importance is not None


def cli_references(path: Path) -> list[tuple[int, str]]:
    """Imports of ``moec.compiler.cli...`` and string constants naming it (``importorskip``,
    ``python -m ...``) in one file, with their lines."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            names = names[:1] if node.module.startswith(CLI) else names
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names = [w for w in node.value.split() if w.startswith(CLI)]
        found += [(node.lineno, n) for n in names if n == CLI or n.startswith(CLI + ".")]
    return found


def test_nothing_outside_the_cli_imports_the_cli() -> None:
    bad = []
    for folder in ("ir", "compiler", "backends", "models", "moec", "scripts", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if rel.parts[:2] == ("compiler", "cli") or "_scratch" in rel.parts or path == THIS:
                continue
            entry_ok = rel.parts[0] == "tests" or rel == Path("moec/__main__.py")
            for line, name in cli_references(path):
                if not (entry_ok and name == ENTRY):
                    bad.append(f"{rel}:{line}: {name}")
    assert not bad, "modules outside compiler/cli/ use the CLI:\n" + "\n".join(bad)


def test_the_checker_sees_imports(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text(
        "from moec.compiler.cli.cmd_compile import run\nimport moec.compiler.cli.main\n"
        "from moec.compiler import cli\nx = 'python -m moec.compiler.cli.main bench'\n"
    )
    assert [n for _, n in cli_references(f)] == [
        "moec.compiler.cli.cmd_compile", "moec.compiler.cli.main", "moec.compiler.cli",
        "moec.compiler.cli.main",
    ]  # fmt: skip
