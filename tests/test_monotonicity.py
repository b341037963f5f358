"""More SRAM never slows a fixed strategy; more DRAM or D2D bandwidth never by more than 1%.

The default run checks the points issue 18 measured going the wrong way (Qwen3-30B-A3B at 1024
tokens: EP and Hydra on fsedp-2x2 and fsedp-4x4 got slower with 64 MiB; Phi-3.5-MoE at 256
tokens: FSE-DP's coarser cut with more SRAM, until its slice count came from its scheduler's
prediction, ``moec/fsedp_slices.py``); the whole paper grid
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
#: ("Monotonicity of FSE-DP under one timing engine" and, for session 8, "Monotonicity" under
#: issue 18; ``python scripts/monotonicity.py --strategies fsedp,fsedp-paired`` measured them,
#: rises rounded up by 0.01%). No SRAM case and no whole-expert strategy: FSE-DP's slice count
#: is the fastest measured among those that fit (``moec/fsedp_slices.py``), EP/Hydra/EPLB/TP's
#: likewise (``moec/expert_slices.py``), so more SRAM never picks a slower one, and a rise that
#: comes back fails the grid test. The fsedp-2x2 entries were measured with FSE-DP's slice
#: choice in session 7, the fsedp-3x3 and fsedp-4x4 ones in session 8 (``--targets fsedp-3x3
#: --resources dram,d2d``, then fsedp-4x4): every earlier 3x3/4x4 entry that no longer rises
#: was removed. Session 9 re-measured the whole-expert strategies on fsedp-3x3 (every
#: resource) after the SRAM-monotone reserve: no violation, so none is listed. Session 10
#: re-measured every fixed strategy's grid (FSE-DP on all three targets; EP/Hydra/EPLB/TP on
#: 2x2 and 4x4, and DeepSeek-MoE-16B on 3x3, after its shared experts' count became measured):
#: every entry below still rises by its listed amount, and nothing else rises.
EXPLAINED: dict[tuple[str, str, int, str, str, str], float] = {
    ("deepseek-moe-16b", "fsedp-2x2", 16, "fsedp", "d2d", "288 GB/s"): 0.0258,
    ("deepseek-moe-16b", "fsedp-2x2", 64, "fsedp-paired", "d2d", "288 GB/s"): 0.015,
    ("deepseek-moe-16b", "fsedp-3x3", 16, "fsedp", "d2d", "288 GB/s"): 0.0172,
    ("deepseek-moe-16b", "fsedp-4x4", 256, "fsedp-paired", "d2d", "288 GB/s"): 0.0403,
    ("deepseek-moe-16b", "fsedp-4x4", 1024, "fsedp", "d2d", "288 GB/s"): 0.0199,
    ("phi3.5-moe", "fsedp-2x2", 16, "fsedp-paired", "dram", "102.4 GB/s"): 0.0107,
    ("phi3.5-moe", "fsedp-3x3", 1024, "fsedp-paired", "d2d", "288 GB/s"): 0.0161,
    ("phi3.5-moe", "fsedp-4x4", 1024, "fsedp", "d2d", "288 GB/s"): 0.0500,
    ("phi3.5-moe", "fsedp-4x4", 1024, "fsedp-paired", "d2d", "288 GB/s"): 0.0198,
    ("phi3.5-moe", "fsedp-4x4", 1024, "fsedp-paired", "dram", "51.2 GB/s"): 0.0173,
    ("qwen3-30b-a3b", "fsedp-2x2", 16, "fsedp-paired", "d2d", "288 GB/s"): 0.029,
    ("qwen3-30b-a3b", "fsedp-2x2", 64, "fsedp", "d2d", "288 GB/s"): 0.0278,
    ("qwen3-30b-a3b", "fsedp-2x2", 64, "fsedp-paired", "d2d", "288 GB/s"): 0.013,
    ("qwen3-30b-a3b", "fsedp-4x4", 256, "fsedp-paired", "d2d", "288 GB/s"): 0.0326,
    ("qwen3-30b-a3b", "fsedp-4x4", 1024, "fsedp-paired", "d2d", "288 GB/s"): 0.0281,
    ("yuan2-m32", "fsedp-2x2", 16, "fsedp", "d2d", "288 GB/s"): 0.069,
    ("yuan2-m32", "fsedp-2x2", 16, "fsedp-paired", "d2d", "288 GB/s"): 0.0191,
    ("yuan2-m32", "fsedp-2x2", 64, "fsedp", "d2d", "288 GB/s"): 0.0134,
    ("yuan2-m32", "fsedp-4x4", 16, "fsedp", "d2d", "288 GB/s"): 0.0251,
    ("yuan2-m32", "fsedp-4x4", 256, "fsedp-paired", "d2d", "288 GB/s"): 0.0141,
    ("yuan2-m32", "fsedp-4x4", 1024, "fsedp", "d2d", "288 GB/s"): 0.0276,
    ("yuan2-m32", "fsedp-4x4", 1024, "fsedp", "dram", "51.2 GB/s"): 0.0226,
    ("yuan2-m32", "fsedp-4x4", 1024, "fsedp-paired", "d2d", "288 GB/s"): 0.0396,
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


def test_more_sram_never_slows_fsedp_where_its_coarser_cut_did() -> None:
    """Phi-3.5-MoE, 256 tokens on fsedp-2x2: ``fsedp`` rose 5.3% from 16 to 24 MiB when the
    lowering's own rule cut coarser slices with more SRAM."""
    comps = check_point("phi3.5-moe", "fsedp-2x2", 256, ["fsedp"], ["sram"])
    assert len(comps) == 3 and all(c.before_s is not None for c in comps)
    assert [c.line() for c in comps if c.violated] == []


@pytest.mark.parametrize(("tokens", "strategies"), [(16, ["tp"]), (64, ["ep", "eplb", "tp"])])
def test_more_sram_never_slows_whole_experts_where_a_forced_cut_did(
    tokens: int, strategies: list[str]
) -> None:
    """Phi-3.5-MoE on fsedp-2x2, 16 -> 24 MiB: the lowering's fewest slices that fit went from
    44 to 28, slower (64 tokens ``ep`` +1.22%, ``eplb`` +0.94%, ``tp`` +0.40%; 16 tokens ``tp``
    +0.73%) until the count was measured among those that fit (``moec/expert_slices.py``)."""
    comps = check_point("phi3.5-moe", "fsedp-2x2", tokens, strategies, ["sram"])
    assert len(comps) == 3 * len(strategies) and all(c.before_s is not None for c in comps)
    assert [c.line() for c in comps if c.violated] == []


def test_more_sram_never_shrinks_the_room_slots_get() -> None:
    """Phi-3.5-MoE, 1024 tokens on fsedp-3x3, 24 -> 32 MiB: the lowering switched to the
    any-routing activation reserve where it first left room for slots, so the fewest slices
    that fit jumped from 39 to 800 and none of the measured counts fitted: ``ep`` 78.81 ->
    309.19 ms (+292%), ``hydra`` +145%, ``eplb`` +26%, until the slots kept the room their
    wanted cut needs (``compiler/lower/slots.py``, ``plan_layers``)."""
    comps = check_point("phi3.5-moe", "fsedp-3x3", 1024, ["ep", "hydra", "eplb"], ["sram"])
    assert len(comps) == 9 and sum(c.before_s is not None for c in comps) >= 7
    assert [c.line() for c in comps if c.violated] == []


def test_more_sram_never_slows_ep_where_it_cut_the_shared_experts_coarser() -> None:
    """DeepSeek-MoE-16B, 1024 tokens on fsedp-4x4: at 16 MiB SRAM forced the shared experts
    into 48 slices, at 24 MiB they took the cost model's 32 and ``ep`` went 26.332 -> 26.343 ms
    (+0.04%), until their count was measured among those that fit like the routed experts'
    (``moec/expert_slices.py``)."""
    comps = check_point("deepseek-moe-16b", "fsedp-4x4", 1024, ["ep"], ["sram"])
    assert len(comps) == 3 and all(c.before_s is not None for c in comps)
    assert [c.line() for c in comps if c.violated] == []


@pytest.mark.parametrize("spec", ["tp{slices=44}", "ep{slices=22,slots=8}"])
def test_an_explicit_count_is_the_same_program_at_every_sram(spec: str) -> None:
    """DeepSeek-MoE-16B, 16 tokens on fsedp-2x2: with ``slices=N`` the shared experts took the
    fewest slices that fit, coarser with more SRAM, so ``tp{slices=44}`` went 7.304 -> 7.344 ms
    from 16 to 24 MiB and ``auto`` (whose slice-count candidates are such specs) rose +0.02%.
    Beside ``slices=N`` they now take the cost model's count too, as with ``slices=auto``."""
    from moec.auto import default_routing
    from moec.compiler.bench.spec import load_bench_model, truncate
    from moec.compiler.lower import lower, parse_strategy
    from moec.ir.stream import TargetRef, print_program

    module = truncate(load_bench_model("deepseek-moe-16b").module, 1)
    name, opts = parse_strategy(spec)
    texts = set()
    for mib in (16, 24, 32, 64):
        ref = TargetRef("fsedp-2x2", (("sram_mib_per_die", mib),))
        routing = default_routing(module, ref, tokens=16)
        program = lower(module, ref, name, opts, routing)
        assert program.layout(program.layers[0].name, shared=True) is not None
        texts.add(print_program(program).replace(f"{{ sram_mib_per_die = {mib} }}", ""))
    assert len(texts) == 1


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


@pytest.mark.parametrize(
    ("model", "tokens", "spec"),
    [
        ("qwen3-30b-a3b", 16, "ep{slices=fit}"),
        ("yuan2-m32", 16, "tp{slices=fit}"),
        ("deepseek-moe-16b", 16, "tp{slices=fit}"),
    ],
)
def test_auto_with_more_sram_times_what_it_picked_with_less(
    model: str, tokens: int, spec: str
) -> None:
    """The fewest slices that fit get coarser with more SRAM, and coarser was slower here
    (Qwen3-30B-A3B, 16 tokens on fsedp-2x2: ``ep{slices=fit}`` 3 slices 9.247 ms at 16 MiB, 2
    slices 9.311 ms at 24; Yuan2.0-M32 ``tp{slices=fit}`` 16, 12, 8 slices 9.381, 9.443, 9.500
    ms at 16, 24, 32 MiB; DeepSeek-MoE-16B ``tp{slices=fit}`` 8, 4, 4 slices 7.256, 7.328,
    7.328 ms), as on the paper grid (DeepSeek-MoE-16B, 256 tokens, 32 -> 64 MiB:
    ``auto`` 14.120 -> 14.140 ms, its 32 MiB winner ``tp{order=balanced,slices=fit}``). A search
    with such a candidate now also times its winner one SRAM rung down, pinned
    (``moec/auto_inherit.py``)."""
    from moec.auto import default_routing, search
    from moec.compiler.bench.spec import load_bench_model, truncate
    from moec.ir.stream import TargetRef

    module = truncate(load_bench_model(model).module, 1)
    got = []
    for mib in (16, 24, 32):
        ref = TargetRef("fsedp-2x2", (("sram_mib_per_die", mib),))
        routing = default_routing(module, ref, tokens=tokens)
        got.append(search(module, ref, routing, specs=[spec], tokens=tokens).winner.measured_s)
    assert got == sorted(got, reverse=True), got


@pytest.mark.slow
@pytest.mark.parametrize("target", PAPER_TARGETS)
@pytest.mark.parametrize("model", PAPER_MODELS)
def test_paper_grid_auto_is_monotone(target: str, model: str) -> None:
    comps = [c for t in PAPER_TOKENS for c in check_point(model, target, t, ["auto"])]
    assert [c.line() for c in comps if c.violated] == []  # no EXPLAINED entry covers auto
