"""``scripts/auto_grid.py``'s held-out modes: the trained LM's routing dumped in one command, and
the summary over several tables."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

from moec.ir.routing import load_trace

ROOT = Path(__file__).resolve().parent.parent


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("auto_grid", ROOT / "scripts" / "auto_grid.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_lm_traces_dump_the_trained_lm_on_the_targets_dies(tmp_path: Path) -> None:
    grid = _script()
    (path,) = grid.lm_traces([16], "fsedp-3x3", str(tmp_path))
    trace = load_trace(path)
    assert os.path.basename(path) == "lm16.json"
    assert (trace.tokens, trace.num_dies, len(trace.layers)) == (16, 9, 2)
    # the held-out text's first 16 bytes, not seeded ids: dumping twice gives the same routing
    (again,) = grid.lm_traces([16], "fsedp-3x3", str(tmp_path / ".."))
    assert (load_trace(again).layers[0].ids == trace.layers[0].ids).all()


def test_summary_counts_every_row_and_a_choice_that_did_not_fit() -> None:
    grid = _script()
    rows = [
        {"fixed": {"ep": 2.0, "tp": 1.0}, "auto": 0.96},  # 4% faster
        {"fixed": {"ep": 2.0, "tp": None}, "auto": 2.004},  # within 0.5%
        {"fixed": {"ep": 1.0}, "auto": None},  # did not fit
    ]
    line = grid.summary("x", rows)
    assert "within 0.5% of the best fixed strategy at 2 of 3 points" in line
    assert "at least 3% faster at 1;" in line and "worst a choice that does not fit" in line


def test_a_recorded_trace_is_searched_on_the_dies_moec_bench_runs_it_on(tmp_path: Path) -> None:
    """A 4-die trace on fsedp-4x4: the fixed strategies' bench spreads it over 16 dies, so the
    search must too (it kept the tokens on dies 0-3 before: a different batch)."""
    grid = _script()
    (path,) = grid.lm_traces([16], "fsedp-2x2", str(tmp_path))
    trace = grid.searched_trace(path, "fsedp-4x4")
    assert trace.num_dies == 16 and len(trace.layers) == 1
    assert sorted(set(trace.layers[0].home_die.tolist())) == list(range(16))
    assert grid.searched_trace(path, "fsedp-2x2").layers[0].home_die.max() == 3
