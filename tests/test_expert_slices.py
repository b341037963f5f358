"""A whole-expert strategy's slice count measured among the counts that fit
(``moec/expert_slices.py``): more SRAM only adds candidates, so it never picks a slower one."""

from __future__ import annotations

from slice_cases import phi_case

import moec.expert_slices as es
import moec.fsedp_slices as fs
from moec.compiler.lower import lower as lower_strategy
from moec.ir.target import load_target


def _phi(sram_mib: float, tokens: int = 64) -> tuple:
    return phi_case(sram_mib, tokens)


def test_candidates_run_from_the_preferred_count_to_the_finest_cut() -> None:
    t = load_target("fsedp-2x2", {})
    assert t.die(0).array.cols == 64
    assert es.candidates(6400, 25, t) == [25, 32, 40, 48, 64, 80, 96, 100]
    assert es.candidates(768, 3, t) == [3, 4, 5, 6, 8, 10, 12]
    assert es.candidates(32, 1, t) == [1]


def _choice(sram_mib: float, strategy: str = "ep") -> es.ExpertSliceChoice:
    module, ref, trace = _phi(sram_mib)
    base = lower_strategy(module, ref, strategy, {}, trace)
    choice = es.choose_slices(module, ref, strategy, {}, trace, base)
    assert choice is not None
    return choice


def test_more_sram_only_adds_candidates_and_never_picks_a_slower_count() -> None:
    """Phi-3.5-MoE, 64 tokens, fsedp-2x2, ``ep``: the lowering's own count was the fewest that
    fit, 44 slices at 16 MiB (30.06 ms) and 28 at 24 MiB (30.42 ms, +1.22%)."""
    small, large = _choice(16.0), _choice(24.0)
    assert small.preferred == large.preferred == 25
    assert small.shared_count == large.shared_count == 0  # no shared experts
    assert (44, 0) not in small.measured and (28, 0) not in large.measured  # not candidates
    assert set(small.measured) < set(large.measured)
    for c, t in small.measured.items():  # SRAM does not enter a count's schedule
        assert large.measured[c] == t or t is None
    # 40 slices fit the lowering's reserve at 16 MiB (sized for uniform routing: the any-routing
    # one leaves no room there), but this batch overfills a die at run time; with 24 MiB it fits
    assert small.measured[(40, 0)] is None and large.measured[(40, 0)] is not None
    for ch in (small, large):
        got = {c: t for c, t in ch.measured.items() if t is not None}
        assert ch.measured[(ch.count, 0)] == min(got.values())
        assert ch.program is not None and ch.program.layouts[0].count == ch.count
    assert large.measured[(large.count, 0)] <= small.measured[(small.count, 0)]


def test_shared_candidates_cut_them_like_an_expert_and_a_dies_share_like_one() -> None:
    t = load_target("fsedp-4x4", {})
    # DeepSeek-MoE-16B's 2816 shared columns: replicated, 32 to 44 slices (64 wide); split over
    # the 16 dies, 176 columns per die, 2 (88 wide) or 3 (59 wide) slices each
    assert es.shared_candidates(2816, 32, t) == [32, 40, 44, 48]
    assert es.shared_candidates(20, 16, t) == [16]  # narrower than the array: as the cost model
    assert es.candidates(1400, 8, t) == [8, 10, 12, 16, 20, 21, 22]  # 1400 / 64 = 21.9


def test_the_shared_experts_count_is_measured_too() -> None:
    """DeepSeek-MoE-16B, 1024 tokens on fsedp-4x4, ``ep``: at 16 MiB SRAM forces 48 shared
    slices (26.332 ms), 24 MiB fits the cost model's 32 (26.343 ms); both are candidates, so
    24 MiB keeps 48."""
    from moec.auto import default_routing
    from moec.compiler.bench.spec import load_bench_model, truncate
    from moec.ir.stream import TargetRef

    module = truncate(load_bench_model("deepseek-moe-16b").module, 1)
    got = []
    for mib in (16.0, 24.0):
        ref = TargetRef("fsedp-4x4", (("sram_mib_per_die", mib),))
        trace = default_routing(module, ref, tokens=1024)
        base = lower_strategy(module, ref, "ep", {}, trace)
        ch = es.choose_slices(module, ref, "ep", {}, trace, base)
        assert ch is not None and ch.program is not None
        assert ch.program.layout(ch.program.layers[0].name, shared=True).count == ch.shared_count
        got.append(ch)
    small, large = got
    assert set(small.measured) == {(22, 48)} and set(large.measured) == {(22, 32), (22, 48)}
    assert small.measured[(22, 48)] == large.measured[(22, 48)]
    assert large.measured[(22, 32)] > large.measured[(22, 48)]  # the cost model's is slower
    assert (small.shared_count, large.shared_count) == (48, 48)
    # with shared_slices given only the routed count is chosen
    ref = TargetRef("fsedp-4x4", (("sram_mib_per_die", 24.0),))
    trace = default_routing(module, ref, tokens=1024)
    base = lower_strategy(module, ref, "ep", {"shared_slices": "32"}, trace)
    ch = es.choose_slices(module, ref, "ep", {"shared_slices": "32"}, trace, base)
    assert ch is not None and set(ch.measured) == {(22, 32)}


def test_the_routing_aware_lowering_uses_the_choice_and_explicit_slices_keep_theirs() -> None:
    module, ref, trace = _phi(24.0)
    chosen = fs.lower(module, ref, "ep", {}, trace)
    assert chosen.layouts[0].count == _choice(24.0).count != 28
    own = lower_strategy(module, ref, "ep", {}, None)
    assert fs.lower(module, ref, "ep", {}, None).layouts[0].count == own.layouts[0].count
    assert fs.lower(module, ref, "ep", {"slices": "50"}, trace).layouts[0].count == 50
    assert fs.lower(module, ref, "ep", {"slices": "fit"}, trace).layouts[0].count == 27
