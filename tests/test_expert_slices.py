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
    assert 44 not in small.measured and 28 not in large.measured  # not candidates
    assert set(small.measured) < set(large.measured)
    for c, t in small.measured.items():  # SRAM does not enter a count's schedule
        assert large.measured[c] == t or t is None
    # 40 slices fit the lowering's reserve at 16 MiB (sized for uniform routing: the any-routing
    # one leaves no room there), but this batch overfills a die at run time; with 24 MiB it fits
    assert small.measured[40] is None and large.measured[40] is not None
    for ch in (small, large):
        got = {c: t for c, t in ch.measured.items() if t is not None}
        assert ch.measured[ch.count] == min(got.values())
        assert ch.program is not None and ch.program.layouts[0].count == ch.count
    assert large.measured[large.count] <= small.measured[small.count]


def test_the_routing_aware_lowering_uses_the_choice_and_explicit_slices_keep_theirs() -> None:
    module, ref, trace = _phi(24.0)
    chosen = fs.lower(module, ref, "ep", {}, trace)
    assert chosen.layouts[0].count == _choice(24.0).count != 28
    own = lower_strategy(module, ref, "ep", {}, None)
    assert fs.lower(module, ref, "ep", {}, None).layouts[0].count == own.layouts[0].count
    assert fs.lower(module, ref, "ep", {"slices": "50"}, trace).layouts[0].count == 50
    assert fs.lower(module, ref, "ep", {"slices": "fit"}, trace).layouts[0].count == 27
