"""Every shipped model under every strategy compiles to the committed golden program text, and
the tiny models run to the committed expansion and report.

A refactor must leave the compiler's output byte-identical; an intended change regenerates the
goldens with ``python tests/golden/regen.py`` and says why in its commit.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from golden.regen import HERE, cases, compile_one, run_cases, run_one


@pytest.mark.parametrize(
    ("name", "model", "strategy", "extra"), cases(), ids=[c[0] for c in cases()]
)
def test_compile_matches_golden(
    tmp_path: Path, name: str, model: str, strategy: str, extra: tuple[str, ...]
) -> None:
    text = compile_one(model, strategy, extra, tmp_path, name)
    expected = (HERE / "msp" / name).read_text()
    assert text == expected, f"{name} differs from tests/golden/msp/{name}"


@pytest.mark.parametrize(
    ("stem", "model", "strategy", "ideal"), run_cases(), ids=[c[0] for c in run_cases()]
)
def test_run_matches_golden(
    tmp_path: Path, stem: str, model: str, strategy: str, ideal: bool
) -> None:
    """The runtime expansion and the run's JSON report (timing and SRAM) are unchanged too, on
    the ideal machine and on the calibrated model."""
    expanded, report = run_one(model, strategy, tmp_path, stem, ideal)
    assert expanded == (HERE / "run" / f"{stem}.expanded.msp").read_text(), stem
    assert report == (HERE / "run" / f"{stem}.json").read_text(), stem
