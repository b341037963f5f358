"""What a killed write or the README's commands leave in a checkout is ignored by git (issue 14)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from moec.ir import files

ROOT = Path(__file__).resolve().parents[1]


def _temp_name(tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The name of the temporary an interrupted ``atomic_write`` of ``name`` leaves behind."""
    seen: list[str] = []
    real = os.replace

    def record(src: str, dst: str) -> None:
        seen.append(os.path.basename(src))
        real(src, dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", record)
        files.atomic_write(tmp_path / name, "x")
    assert seen, "atomic_write wrote without a temporary"
    return seen[0]


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".gitignore").is_file(), reason="not a git checkout"
)
def test_temporaries_and_readme_outputs_are_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [_temp_name(tmp_path, n, monkeypatch) for n in ("k.msp", "w.msp.weights.onnx")]
    names += ["qwen3.onnx", "trace.json", "trace.npz", "latency.png", "prog.msp", "results/a"]
    r = subprocess.run(
        ["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *names],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    unmatched = [line for line in r.stdout.splitlines() if line.startswith("::")]
    assert r.stdout and not unmatched, r.stdout + r.stderr
