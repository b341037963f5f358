"""``--set ideal=true`` reproduces the first-wave numbers (``scripts/ideal_points.py``).

``tests/fixtures/ideal_points.json`` was recorded by that script on the code of ``main`` before
the interpreter charged the calibrated model (every target ideal then): latency, bound, peak SRAM
and bytes of paper-grid points. The ideal machine must still give them to a relative 1e-9.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
RECORDED = json.loads((ROOT / "tests" / "fixtures" / "ideal_points.json").read_text())


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "ideal_points", ROOT / "scripts" / "ideal_points.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_a_slice_of_the_grid_is_reproduced_on_the_ideal_machine() -> None:
    ip = _script()
    now = ip.measure(("qwen3-30b-a3b",), ("fsedp-2x2",), (16,))
    assert len(now) == len(ip.STRATEGIES) == 9
    assert ip.differences({k: RECORDED[k] for k in now}, now) == []


def test_a_difference_is_found() -> None:
    ip = _script()
    k = "qwen3-30b-a3b|fsedp-2x2|16|ep"
    moved = {k: dict(RECORDED[k], latency_s=RECORDED[k]["latency_s"] * (1 + 1e-8))}
    assert ip.differences(moved, {k: RECORDED[k]}) == [
        f"{k}: latency_s {RECORDED[k]['latency_s']!r}, recorded {moved[k]['latency_s']!r}"
    ]


@pytest.mark.slow
def test_every_recorded_point_is_reproduced_on_the_ideal_machine() -> None:
    ip = _script()
    now = ip.measure()
    assert len(now) == len(RECORDED) == 144
    assert ip.differences(RECORDED, now) == []
