"""The folder layout stays readable: no Python file in ir/, compiler/, backends/, models/ over
600 lines (issue 11: one file per concept, each small enough to read in one sitting)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("ir", "compiler", "backends", "models")
MAX_LINES = 600


def long_files(root: Path, limit: int = MAX_LINES) -> list[str]:
    """``path: N lines`` for every Python file under ``root``'s architecture folders over
    ``limit`` lines."""
    out = []
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            n = len(path.read_text().splitlines())
            if n > limit:
                out.append(f"{path.relative_to(root)}: {n} lines")
    return out


def test_no_file_over_the_limit() -> None:
    assert not long_files(ROOT), f"split these files (over {MAX_LINES} lines): {long_files(ROOT)}"


def test_the_check_sees_a_long_file(tmp_path: Path) -> None:
    (tmp_path / "ir").mkdir()
    (tmp_path / "ir" / "short.py").write_text("x = 1\n" * MAX_LINES)
    (tmp_path / "ir" / "long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    assert long_files(tmp_path) == [f"ir/long.py: {MAX_LINES + 1} lines"]
