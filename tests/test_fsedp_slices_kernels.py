"""The FSE-DP slice choice tells the compiled scheduler and event loop what work is ahead
(``moec/fsedp_slices.py``): they switch to their kernels on that expectation, and the choice
(count, predictions, measurements, bounds, the chosen run's report) is the one the references
make. Skipped where numba is not installed."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
from slice_cases import bench_case

import moec.fsedp_slices as fs
from moec.backends.interp import event_loop
from moec.backends.interp.expand import fsedp_compiled
from moec.compiler.lower import lower as lower_strategy
from moec.compiler.lower import parse_strategy

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba (moec[fast]) not installed"
)


def _choose(case: tuple, strategy: str) -> Any:
    module, ref, trace = case
    name, options = parse_strategy(strategy)
    base = lower_strategy(module, ref, name, options, trace)
    return fs.choose_slices(module, ref, name, options, trace, base)


def _used(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which implementation played each schedule and timed each graph, in order."""
    used: list[str] = []
    for mod, names in (
        (event_loop, ("loop_python", "loop_compiled")),
        (fsedp_compiled, ("schedule",)),
    ):
        for nm in names:
            real = getattr(mod, nm)

            def spy(*a: Any, _real: Any = real, _nm: str = nm, **k: Any) -> Any:
                used.append(_nm)
                return _real(*a, **k)

            monkeypatch.setattr(mod, nm, spy)
    return used


def _undecided(monkeypatch: pytest.MonkeyPatch, played: int, timed: int) -> None:
    """Both implementations undecided, nothing played or timed yet, and thresholds that only
    what the choice expects reaches (the scheduler: ``played``; the event loop: ``timed``)."""
    monkeypatch.setattr(fsedp_compiled, "COMPILED", None)
    monkeypatch.setattr(fsedp_compiled, "_played", 0)
    monkeypatch.setattr(fsedp_compiled, "_expected", 0)
    monkeypatch.setattr(fsedp_compiled, "COMPILE_AFTER", played)
    monkeypatch.setattr(fsedp_compiled, "COMPILE_WARM", played)  # numba loaded or not
    monkeypatch.setattr(fsedp_compiled, "COMPILE_FROM", 0)
    monkeypatch.setattr(event_loop, "COMPILED", None)
    monkeypatch.setattr(event_loop, "_timed", 0)
    monkeypatch.setattr(event_loop, "_expected", 0)
    monkeypatch.setattr(event_loop, "COMPILE_AFTER", timed)
    monkeypatch.setattr(event_loop, "COMPILE_WARM", timed)


CASES = {
    "2x2": ("phi3.5-moe", "fsedp-2x2", (("sram_mib_per_die", 64.0),), 256),
    "3x3": ("qwen3-30b-a3b", "fsedp-3x3", (), 256),
    "4x4": ("qwen3-30b-a3b", "fsedp-4x4", (), 256),
    "8x8": ("qwen3-30b-a3b", "fsedp-4x4", (("dies_x", 8), ("dies_y", 8)), 64),
}


@pytest.mark.parametrize(
    ("where", "strategy"),
    [("2x2", s) for s in ("fsedp-naive", "fsedp", "fsedp-paired", "fsedp-r5", "fsedp-buf")]
    + [("3x3", "fsedp-r5"), ("3x3", "fsedp-naive"), ("4x4", "fsedp"), ("4x4", "fsedp-buf")]
    + [pytest.param("8x8", "fsedp-paired", marks=pytest.mark.slow)],
)
def test_the_choice_is_the_references_whichever_implementations_run(
    monkeypatch: pytest.MonkeyPatch, where: str, strategy: str
) -> None:
    case = bench_case(*CASES[where])
    monkeypatch.setattr(fsedp_compiled, "COMPILED", False)
    monkeypatch.setattr(event_loop, "COMPILED", False)
    ref = _choose(case, strategy)
    # any work said to be ahead switches both, from the first prediction and timing
    _undecided(monkeypatch, played=1, timed=1)
    used = _used(monkeypatch)
    got = _choose(case, strategy)
    assert ref is not None and got is not None
    assert (got.count, got.predicted, got.measured, got.bound) == (
        ref.count, ref.predicted, ref.measured, ref.bound,
    )  # fmt: skip
    assert (got.run is None) == (ref.run is None)
    if ref.run is not None:
        assert got.run.report == ref.run.report
    assert used[0] == "schedule" and "loop_python" not in used  # both kernels, from the first
    assert event_loop._expected == 0  # every run's end clears what was expected


def test_the_scheduler_plays_compiled_from_the_first_prediction_on_the_choices_word(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the expectation the reference plays until COMPILE_AFTER; with it, the kernel
    plays from the first problem, and the expectation is every count's micro-slices x dies."""
    case = bench_case(*CASES["2x2"])
    said: list[int] = []
    real = fsedp_compiled.expect

    def spy(work: int) -> None:
        said.append(work)
        real(work)

    _undecided(monkeypatch, played=10**9, timed=10**9)
    monkeypatch.setattr(fsedp_compiled, "expect", spy)
    used = _used(monkeypatch)
    choice = _choose(case, "fsedp-r5")
    assert choice is not None and used.count("schedule") == 0  # nothing reached 10**9
    # what is ahead, then nothing once the choice is made (the timings' layered runs, between,
    # say their own layers and hand back the choice's word less what they played)
    work, end = said[0], said[-1]
    assert end == 0 and fsedp_compiled._expected == 0
    module, _, trace = case
    routed = len({int(e) for e in trace.layers[0].ids.reshape(-1) if e >= 0})
    assert work == routed * 4 * sum(choice.bound)
    _undecided(monkeypatch, played=work, timed=10**9)
    used.clear()
    _choose(case, "fsedp-r5")
    assert used and used[0] == "schedule"  # the first prediction: compiled


def test_the_first_timing_runs_compiled_when_the_timings_ahead_pay_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before its first timing the choice expects OPS_PER_SLICE ops per micro-slice and die of
    that count and of those that would be timed too; a layered run keeps that expectation until
    its first MoE part (the one-layer program's dense part comes first, then the MoE part)."""
    case = bench_case(*CASES["2x2"])
    # a threshold no timing reaches by itself, and an expectation above it
    _undecided(monkeypatch, played=10**9, timed=10**9)
    monkeypatch.setattr(fs, "OPS_PER_SLICE", 10**9)
    used = _used(monkeypatch)
    choice = _choose(case, "fsedp-naive")
    assert choice is not None
    # the first timing's dense part, then its MoE part (after the layered run's first part); the
    # later timings expect their ops at the first timing's size, short of the threshold
    loops = [u for u in used if u.startswith("loop_")]
    assert loops[:2] == ["loop_compiled", "loop_compiled"] and "loop_python" in loops[2:]
    # without it, the reference throughout
    monkeypatch.setattr(fs, "OPS_PER_SLICE", 0)
    used.clear()
    _choose(case, "fsedp-naive")
    assert "loop_compiled" not in used
