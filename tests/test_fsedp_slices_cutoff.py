"""The FSE-DP slice choice stops a timing once it cannot win (``moec/fsedp_slices.py``): the
choice, predictions, bounds and the chosen run are those of timing every count to the end, and
a count stopped measures, timed to the end, above the limit it was stopped at, so it is never
one that would have won (nor tied: ties go to fewer slices)."""

from __future__ import annotations

from typing import Any

import pytest
from slice_cases import bench_case

import moec.fsedp_slices as fs
from moec.backends.interp import event_loop
from moec.compiler.lower import lower as lower_strategy
from moec.compiler.lower import parse_strategy
from moec.ir.target import load_target

POINTS = {
    "2x2": ("phi3.5-moe", "fsedp-2x2", (("sram_mib_per_die", 64.0),), 256),
    "2x2-3layers": ("qwen3-30b-a3b", "fsedp-2x2", (), 64, 3),
    "3x3": ("qwen3-30b-a3b", "fsedp-3x3", (), 256),
    "4x4": ("qwen3-30b-a3b", "fsedp-4x4", (), 256),
    "8x8": ("qwen3-30b-a3b", "fsedp-4x4", (("dies_x", 8), ("dies_y", 8)), 64),
}
VARIANTS = ("fsedp-naive", "fsedp", "fsedp-paired", "fsedp-r5", "fsedp-buf")


def _choose(case: tuple, strategy: str) -> Any:
    module, ref, trace = case
    name, options = parse_strategy(strategy)
    base = lower_strategy(module, ref, name, options, trace)
    return fs.choose_slices(module, ref, name, options, trace, base)


def _same_choice(case: tuple, strategy: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The choice with and without stopping agree (module doc); the one with stops."""
    got = _choose(case, strategy)
    with monkeypatch.context() as m:  # every timing run to its end, as before they could stop
        m.setattr(fs, "STOP_LOSERS", False)
        full = _choose(case, strategy)
    assert got is not None and full is not None
    assert (got.count, got.predicted, got.bound) == (full.count, full.predicted, full.bound)
    assert full.stopped == {}
    # the same counts are timed; those run to the end measure the same
    assert not set(got.measured) & set(got.stopped)
    assert set(got.measured) | set(got.stopped) == set(full.measured)
    assert got.measured == {c: full.measured[c] for c in got.measured}
    win = (full.measured[full.count], full.count)
    for c, limit in got.stopped.items():
        assert full.measured[c] > limit >= win[0]  # above its limit, so never the winner
        assert (full.measured[c], c) > win
    assert (got.run is None) == (full.run is None)
    if full.run is not None:
        assert got.run.report == full.run.report
    return got


@pytest.mark.parametrize("strategy", VARIANTS)
def test_a_stopped_timing_never_changes_the_choice_on_2x2(
    monkeypatch: pytest.MonkeyPatch, strategy: str
) -> None:
    _same_choice(bench_case(*POINTS["2x2"]), strategy, monkeypatch)


@pytest.mark.parametrize(
    ("where", "strategy"),
    [("2x2-3layers", "fsedp"), ("2x2-3layers", "fsedp-buf"), ("3x3", "fsedp-r5")]
    + [("3x3", "fsedp-buf"), ("4x4", "fsedp-r5"), ("4x4", "fsedp-naive")]
    + [pytest.param("8x8", s, marks=pytest.mark.slow) for s in ("fsedp-r5", "fsedp-buf")],
)
def test_a_stopped_timing_never_changes_the_choice_elsewhere(
    monkeypatch: pytest.MonkeyPatch, where: str, strategy: str
) -> None:
    _same_choice(bench_case(*POINTS[where]), strategy, monkeypatch)


def test_timings_do_stop_and_a_stopped_measure_raises_past_its_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """R5 on 4x4 times most counts, and every one after the winner stops; ``_measure`` with a
    limit just below a count's latency stops, and at that latency runs to the end."""
    choice = _same_choice(bench_case(*POINTS["4x4"]), "fsedp-r5", monkeypatch)
    assert choice.stopped
    module, ref, trace = bench_case(*POINTS["4x4"])
    target = load_target(ref.spec, dict(ref.overrides))
    name, options = parse_strategy("fsedp-r5")
    p = lower_strategy(module, ref, name, {**options, "slices": str(choice.count)}, trace)
    t, run, _ = fs._measure(p, target, trace, choice.measured[choice.count])
    assert t == choice.measured[choice.count] and run is not None
    with pytest.raises(event_loop.PastLimit):
        fs._measure(p, target, trace, t * (1 - 1e-9))
