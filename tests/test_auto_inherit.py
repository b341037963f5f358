"""More SRAM never makes ``--strategy auto`` slower (:mod:`moec.auto_inherit`): the rungs, the
target one rung down, and the pinned winner it times."""

from __future__ import annotations

import pytest

from moec.auto import Trial, default_routing, explain, search
from moec.auto_inherit import lesser_sram, pinnings, rungs, same_program
from moec.compiler.bench.spec import load_bench_model, truncate
from moec.compiler.lower import lower
from moec.ir.stream import TargetRef


def test_rungs_are_powers_of_two_and_their_halfway_steps() -> None:
    assert rungs(16, 64) == [24, 32, 48]
    assert rungs(12, 100) == [16, 24, 32, 48, 64, 96]
    assert rungs(16, 24) == [] and rungs(16, 16) == [] and rungs(0, 8) == []


@pytest.mark.parametrize(
    ("mib", "down"), [(64, ((("sram_mib_per_die", 48),), 48)), (24, ((), 16)), (20, ((), 16))]
)
def test_one_rung_down_keeps_the_other_overrides(mib: float, down: tuple) -> None:
    ref = TargetRef("fsedp-2x2", (("d2d_gbps", 500), ("sram_mib_per_die", mib)))
    got = lesser_sram(ref)
    assert got is not None
    assert got[0] == TargetRef("fsedp-2x2", tuple(sorted((("d2d_gbps", 500), *down[0]))))
    assert got[1] == down[1]


def test_no_rung_below_the_targets_own_sram() -> None:
    assert lesser_sram(TargetRef("fsedp-2x2", ())) is None
    assert lesser_sram(TargetRef("fsedp-2x2", (("sram_mib_per_die", 16),))) is None
    assert lesser_sram(TargetRef("fsedp-2x2", (("sram_mib_per_die", 8),))) is None


def test_the_pinnings_keep_the_program_with_more_sram() -> None:
    """Qwen3-30B-A3B, 16 tokens: ``ep{slices=fit}`` cuts 3 slices at 16 MiB and 2 at 24; with
    its count written out it is the same program at every SRAM."""
    module = truncate(load_bench_model("qwen3-30b-a3b").module, 1)
    refs = [TargetRef("fsedp-2x2", (("sram_mib_per_die", m),)) for m in (16, 24, 64)]
    routing = default_routing(module, refs[0], tokens=16)
    fit = lower(module, refs[0], "ep", {"slices": "fit"}, routing)
    assert pinnings(Trial("ep{slices=fit}", program=fit)) == ["ep{slices=fit}", "ep{slices=3}"]
    for ref in refs[1:]:
        assert not same_program(lower(module, ref, "ep", {"slices": "fit"}, routing), fit)
        assert same_program(lower(module, ref, "ep", {"slices": "3"}, routing), fit)
    assert pinnings(Trial("per-layer[moe0=ep]", program=fit)) == []


def test_shared_experts_get_their_count_pinned_last() -> None:
    """DeepSeek-MoE-16B, 16 tokens at 16 MiB: ``tp{slices=fit}`` cuts the routed experts into 8
    slices and the shared ones into 12, fewer than the lowering's floor for an explicit count."""
    module = truncate(load_bench_model("deepseek-moe-16b").module, 1)
    ref = TargetRef("fsedp-2x2", ())
    routing = default_routing(module, ref, tokens=16)
    fit = lower(module, ref, "tp", {"slices": "fit"}, routing)
    specs = pinnings(Trial("tp{slices=fit}", program=fit))
    assert specs == ["tp{slices=fit}", "tp{slices=8}", "tp{shared_slices=12,slices=8}"]


def test_explain_names_the_inherited_winner() -> None:
    """``ep{slices=fit}`` alone, Qwen3-30B-A3B at 16 tokens: 3 slices at 16 MiB, 2 at 24 MiB and
    slower there; the 24 MiB search times the 16 MiB winner pinned and picks it."""
    module = truncate(load_bench_model("qwen3-30b-a3b").module, 1)
    ref = TargetRef("fsedp-2x2", (("sram_mib_per_die", 24),))
    routing = default_routing(module, ref, tokens=16)
    result = search(module, ref, routing, specs=["ep{slices=fit}"], tokens=16)
    assert result.winner.strategy == "ep{slices=3}"
    assert result.winner.origin == "inherited: the winner at 16 MiB"
    text = explain(result)
    assert "[inherited: the winner at 16 MiB]" in text
    assert "; the winner at 16 MiB, pinned" in text


def test_a_cut_no_option_spells_is_inherited_as_its_program() -> None:
    """DeepSeek-MoE-16B, 16 tokens: ``tp{slices=fit}`` at 16 MiB (8 slices, its shared experts
    in 12) has no spelling that lowers to it at 24 MiB, so its program itself is timed there,
    and at 32 MiB (inherited from 24 MiB) under the same name."""
    module = truncate(load_bench_model("deepseek-moe-16b").module, 1)
    got = {}
    for mib in (16, 24, 32):
        ref = TargetRef("fsedp-2x2", (("sram_mib_per_die", mib),))
        routing = default_routing(module, ref, tokens=16)
        got[mib] = search(module, ref, routing, specs=["tp{slices=fit}"], tokens=16)
    assert got[32].winner.strategy == "tp{slices=fit}@16MiB"
    assert got[32].winner.measured_s == got[16].winner.measured_s
    w = got[24].winner
    assert w.strategy == "tp{slices=fit}@16MiB" and w.measured_s == got[16].winner.measured_s
    assert w.program is not None and w.program.target == TargetRef(
        "fsedp-2x2", (("sram_mib_per_die", 24),)
    )
    fit = next(t for t in got[24].trials if t.strategy == "tp{slices=fit}")
    assert fit.measured_s is not None and fit.measured_s > w.measured_s  # 4 slices: slower
