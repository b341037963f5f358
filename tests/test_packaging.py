"""The install layout: top-level folders install under ``moec``; nothing installs bare."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {
    "moec": "moec",
    "ir": "moec.ir",
    "compiler": "moec.compiler",
    "backends": "moec.backends",
    "models": "moec.models",
}


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = set()
    for folder, package in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *rel)))
    assert found == listed


def test_packages_import_under_moec_and_not_bare() -> None:
    for package in FOLDERS.values():
        module = importlib.import_module(package)
        assert Path(module.__file__).resolve().is_relative_to(ROOT)
    code = "import importlib.util as u, sys; sys.path = [p for p in sys.path if p not in ('', '.')]; print(u.find_spec('ir'), u.find_spec('compiler'))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd="/", check=True
    )
    assert out.stdout.strip() == "None None"


def test_ir_imports_no_onnx() -> None:
    for path in (ROOT / "ir").rglob("*.py"):
        text = path.read_text()
        assert "import onnx" not in text and "from onnx" not in text, path


def test_compiler_and_backends_do_not_import_each_other() -> None:
    for path in (ROOT / "backends").rglob("*.py"):
        assert "moec.compiler" not in path.read_text(), path
    for path in (ROOT / "compiler").rglob("*.py"):
        if "cli" in path.parts:
            continue
        assert "moec.backends" not in path.read_text(), path
