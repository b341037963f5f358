"""Long commands show progress on stderr, never on stdout; --quiet turns it off (issue 14)."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from moec import progress
from moec.compiler.cli.main import main
from moec.progress import Progress


def test_status_lines_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "QUIET", False)
    stream = io.StringIO()
    with Progress("work", 4, unit="steps", stream=stream, interval=0.02) as bar:
        for i in range(4):
            bar.advance(status=f"step {i}")
            time.sleep(0.05)
    lines = stream.getvalue().splitlines()
    assert lines and all(line.startswith("moec work: ") for line in lines)
    assert any("/4 steps (" in line and ": step " in line for line in lines)


def test_no_lines_when_quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "QUIET", True)
    stream = io.StringIO()
    with Progress("work", 2, stream=stream, interval=0.01) as bar:
        time.sleep(0.05)
        bar.advance()
    assert stream.getvalue() == ""


@pytest.mark.parametrize("quiet", [False, True])
def test_trace_synth_reports_progress_on_stderr(
    quiet: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setattr(progress, "INTERVAL_S", 0.01)
    monkeypatch.setattr(progress, "QUIET", False)
    out = tmp_path / "t.npz"
    argv = ["trace", "synth", "--model", "qwen3-30b-a3b", "--tokens", "2048", "-o", str(out)]
    assert main(["--quiet", *argv] if quiet else argv) == 0
    assert progress.QUIET is False  # --quiet lasts one command
    cap = capsys.readouterr()
    assert cap.out.startswith("wrote ") and cap.out.count("\n") == 1
    status = [line for line in cap.err.splitlines() if line.startswith("moec trace synth: ")]
    assert (status == []) if quiet else any("/48 layers" in line for line in status)


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("label", "command", "unit_total"),
    [
        ("compile", "compile models/tiny_moe.onnx -o {tmp}/p.msp", 5),
        ("compile", "compile models/tiny_moe.onnx --strategy auto -o {tmp}/p.msp", 5),
        ("trace dump", "trace dump models/tiny_moe.onnx -o {tmp}/t.json", 4),
        (
            "trace dump",
            "trace dump models/tiny_moe_lm.onnx --decode 3 --batch 2 -o {tmp}/d.json",
            3,
        ),
    ],
    ids=["compile", "compile-auto", "trace-dump", "trace-dump-decode"],
)
def test_compile_and_trace_dump_count_their_stages(
    label: str, command: str, unit_total: int, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """compile counts its stages (frontend, passes, lowering or search, companion, writing);
    trace dump counts loading, the ONNX Runtime run and each MoE layer, or each decode step."""
    monkeypatch.setattr(progress, "QUIET", False)
    seen: list[tuple[str, int, int | None]] = []
    advance = Progress.advance

    def recording(self: Progress, n: int = 1, status: str = "") -> None:
        advance(self, n, status)
        seen.append((self.label, self.done, self.total))

    monkeypatch.setattr(Progress, "advance", recording)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in command.split()]
    argv = [str(ROOT / a) if a.startswith("models/") else a for a in argv]
    assert main(argv) == 0
    counted = [(done, total) for who, done, total in seen if who == label and total is not None]
    assert counted, seen
    assert counted[-1] == (unit_total, unit_total), seen
    dones = [done for done, _ in counted]
    assert dones == sorted(dones) and len(set(dones)) == unit_total + (0 in dones)
