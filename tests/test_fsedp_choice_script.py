"""``scripts/fsedp_choice.py``: a bad ``--rounds`` is one located line and exit 2, before any work."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_negative_rounds_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location(
        "fsedp_choice", ROOT / "scripts" / "fsedp_choice.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    argv = ["--model", "qwen3-30b-a3b", "--target", "fsedp-2x2", "--tokens", "64",
            "--strategy", "fsedp", "--rounds", "-1"]  # fmt: skip
    assert mod.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fsedp_choice: --rounds -1: not a count of rounds"]
