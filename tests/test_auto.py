"""``moec compile --strategy auto --explain``: candidates, predictions, measurements, the winner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _compile(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "moec", "compile", "qwen3-30b-a3b", "-o", str(tmp_path / "p.msp"),
           "--tokens", "16", "--strategy", "auto", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def test_auto_explain_lists_candidates_and_the_measured_winner(tmp_path: Path) -> None:
    r = _compile(tmp_path, "--explain", "--search-budget", "4")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("strategy auto: 18 candidates on routing synth:zipf=1.0,seed=0")
    rows = [ln for ln in lines if ln[:1] in " *" and ("measured" in ln or "pruned" in ln)]
    assert sum(ln.startswith("*") for ln in rows) == 1
    winner = next(ln for ln in rows if ln.startswith("*")).split()[1]
    measured = [ln for ln in rows if ln.rstrip().endswith("measured")]
    assert 1 <= len(measured) <= 4  # the budget
    best = min(float(ln.split()[-2]) for ln in measured)
    assert float(next(ln for ln in rows if ln.startswith("*")).split()[-2]) == best
    assert any(ln.startswith(f"winner {winner}: ") for ln in lines)
    written = (tmp_path / "p.msp").read_text()
    assert f"strategy {winner.split('{')[0]}" in written
    again = _compile(tmp_path, "--explain", "--search-budget", "4")
    assert again.stdout == r.stdout  # deterministic


def test_auto_rejects_options(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "moec", "compile", "qwen3-30b-a3b", "-o", str(tmp_path / "p.msp"),
         "--tokens", "16", "--strategy", "auto{slots=2}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert "strategy auto takes no options" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "p.msp").exists()
