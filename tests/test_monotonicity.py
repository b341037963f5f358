"""More SRAM never slows a fixed strategy; more DRAM or D2D bandwidth never by more than 1%.

The default run checks the points issue 18 measured going the wrong way (Qwen3-30B-A3B at 1024
tokens: EP and Hydra on fsedp-2x2 and fsedp-4x4 got slower with 64 MiB); the whole paper grid
runs under ``slow``, where the cases docs/results.md explains ("Monotonicity") are listed in
:data:`EXPLAINED` with the rise measured there and may not grow beyond it. ``auto`` (the search,
:func:`moec.monotone.auto_latency`) is checked on one small point by default and on the whole
grid under ``slow``, with no explained exceptions.
"""

from __future__ import annotations

import pytest

from moec.compiler.bench.spec import PAPER_MODELS, PAPER_TARGETS, PAPER_TOKENS
from moec.monotone import Comparison, check_point

STRATEGIES = ("ep", "hydra", "eplb", "tp", "fsedp", "fsedp-paired")

#: (model, target, tokens, strategy, resource, less) -> the largest rise docs/results.md explains
#: ("Monotonicity of FSE-DP under one timing engine").
EXPLAINED: dict[tuple[str, str, int, str, str, str], float] = {
    ("qwen3-30b-a3b", "fsedp-2x2", 64, "fsedp", "d2d", "288 GB/s"): 0.0123,
}


def _bad(comps: list[Comparison]) -> list[str]:
    out = []
    for c in comps:
        key = (c.model, c.target, c.tokens, c.strategy, c.resource, c.less)
        if c.violated and not (key in EXPLAINED and c.rise <= EXPLAINED[key] + 1e-4):
            out.append(c.line())
    return out


@pytest.mark.parametrize("target", ["fsedp-2x2", "fsedp-4x4"])
def test_more_sram_never_slows_ep_or_hydra_on_the_issue_point(target: str) -> None:
    comps = check_point("qwen3-30b-a3b", target, 1024, ["ep", "hydra"], ["sram"])
    # at 16 MiB the routed tokens overfill a die at run time (SRAM is a hard limit): skipped
    assert len(comps) == 6 and sum(c.before_s is not None for c in comps) >= 4
    assert _bad(comps) == []


def test_more_bandwidth_never_slows_a_small_point_by_more_than_1pct() -> None:
    comps = check_point("qwen3-30b-a3b", "fsedp-2x2", 64, STRATEGIES, ["dram", "d2d"])
    assert len(comps) == 4 * len(STRATEGIES)
    assert _bad(comps) == []
    # more DRAM bandwidth helps a layer bound by it: the check compares real latencies
    dram = [c for c in comps if c.resource == "dram" and c.more.startswith("204.8")]
    assert len(dram) == len(STRATEGIES) and min(c.rise for c in dram) < -0.05


def test_a_rise_is_a_violation() -> None:
    c = Comparison("m", "t", 16, "ep", "sram", "16 MiB", "32 MiB", 1.0e-3, 1.0001e-3)
    assert c.violated
    d = Comparison("m", "t", 16, "ep", "dram", "1 GB/s", "2 GB/s", 1.0e-3, 1.009e-3)
    assert not d.violated and d.rise == pytest.approx(0.009)
    assert Comparison("m", "t", 16, "ep", "sram", "16", "32", 1.0e-3, None).violated


@pytest.mark.slow
@pytest.mark.parametrize("target", PAPER_TARGETS)
@pytest.mark.parametrize("model", PAPER_MODELS)
def test_paper_grid_is_monotone(target: str, model: str) -> None:
    comps = [c for t in PAPER_TOKENS for c in check_point(model, target, t, STRATEGIES)]
    assert _bad(comps) == []


def test_auto_on_a_small_point_never_rises() -> None:
    """``auto`` is the fastest measured candidate, so more of a resource may not slow it at all
    beyond the bandwidth tolerance, and none of its rises is ever explained away."""
    comps = check_point("qwen3-30b-a3b", "fsedp-2x2", 64, ["auto"], ["sram", "dram"])
    assert len(comps) == 5 and all(c.before_s is not None for c in comps)
    assert [c.line() for c in comps if c.violated] == []


@pytest.mark.slow
@pytest.mark.parametrize("target", PAPER_TARGETS)
@pytest.mark.parametrize("model", PAPER_MODELS)
def test_paper_grid_auto_is_monotone(target: str, model: str) -> None:
    comps = [c for t in PAPER_TOKENS for c in check_point(model, target, t, ["auto"])]
    assert [c.line() for c in comps if c.violated] == []  # no EXPLAINED entry covers auto
