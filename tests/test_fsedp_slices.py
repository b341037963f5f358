"""FSE-DP's slice count from its scheduler's prediction (``moec/fsedp_slices.py``): the fastest
predicted count among those that fit, so more SRAM (more counts fit) never picks a slower one."""

from __future__ import annotations

import pytest
from slice_cases import phi_case

import moec.fsedp_slices as fs
from moec.bench import run_bench
from moec.compiler.bench.spec import load_bench_model, truncate
from moec.compiler.lower import lower as lower_strategy
from moec.ir.errors import ScheduleError
from moec.ir.routing_synth import SynthSpec, parse_routing_spec
from moec.ir.stream import TargetRef


def _phi(sram_mib: float, tokens: int = 256) -> tuple:
    return phi_case(sram_mib, tokens)


def test_candidates_are_the_ladder_up_to_the_finest_allowed_width() -> None:
    assert fs.candidates(3200) == [50, 48, 40, 32, 24, 20, 16, 12, 10, 8, 6, 5, 4, 3, 2, 1]
    assert fs.candidates(768) == [12, 10, 8, 6, 5, 4, 3, 2, 1]
    assert fs.candidates(32) == [1]


@pytest.mark.parametrize("sram_mib", [16.0, 64.0])
def test_the_choice_is_the_fastest_prediction_among_the_counts_that_fit(sram_mib: float) -> None:
    module, ref, trace = _phi(sram_mib)
    base = lower_strategy(module, ref, "fsedp", {}, trace)
    choice = fs.choose_slices(module, ref, "fsedp", {}, trace, base)
    assert choice is not None
    assert choice.measured[choice.count] == min(choice.measured.values())
    # every count that fits and is not run is bound to be slower than the fastest measured:
    # by its hard bound alone (then it is not even scheduled), or by its prediction too; a
    # count whose run stopped measured above the fastest before it
    fastest = min(choice.measured.values())
    timed = set(choice.measured) | set(choice.stopped)
    assert not set(choice.measured) & set(choice.stopped)
    assert timed <= set(choice.predicted) <= set(choice.bound)
    assert all(limit >= fastest for limit in choice.stopped.values())
    for c, low in choice.bound.items():
        if c not in timed:
            if c in choice.predicted:
                low = max(low, choice.predicted[c] * (1 - fs.ESTIMATE_ERROR))
            assert low > fastest
    program = fs.lower(module, ref, "fsedp", {}, trace)
    assert program.layouts[0].count == choice.count
    # what fits is a suffix of the ladder: every finer count fits whenever a coarser one does
    tried = sorted(choice.bound)
    assert tried == sorted(c for c in fs.candidates(base.layers[0].ffn) if c >= tried[0])


def test_more_sram_only_adds_candidates_so_the_prediction_never_rises() -> None:
    module, ref16, trace = _phi(16.0)
    _, ref64, _ = _phi(64.0)
    small = fs.choose_slices(
        module, ref16, "fsedp", {}, trace, lower_strategy(module, ref16, "fsedp", {}, trace)
    )
    large = fs.choose_slices(
        module, ref64, "fsedp", {}, trace, lower_strategy(module, ref64, "fsedp", {}, trace)
    )
    assert small is not None and large is not None
    assert set(small.bound) < set(large.bound)
    for c, t in small.predicted.items():  # SRAM does not enter a count's schedule
        assert large.predicted.get(c, t) == t
    for c, b in small.bound.items():
        assert large.bound[c] == b
    for c, t in small.measured.items():
        assert large.measured.get(c, t) == t
    assert large.measured[large.count] <= small.measured[small.count]


def test_explicit_slices_and_no_routing_keep_the_lowerings_own_count() -> None:
    module, ref, trace = _phi(64.0)
    own = lower_strategy(module, ref, "fsedp", {}, None)
    assert fs.lower(module, ref, "fsedp", {}, None).layouts[0].count == own.layouts[0].count
    assert fs.lower(module, ref, "fsedp", {"slices": "24"}, trace).layouts[0].count == 24
    # whole-expert strategies' counts: tests/test_expert_slices.py


def test_the_chosen_measurement_is_what_the_bench_reports() -> None:
    """The choice is made on the interpreter's own latency: the bench's row is that number, and
    the scheduler's estimate is within a few percent of every count's measurement."""
    module, ref, trace = _phi(64.0)
    base = lower_strategy(module, ref, "fsedp", {}, trace)
    choice = fs.choose_slices(module, ref, "fsedp", {}, trace, base)
    assert choice is not None
    (row,) = run_bench(
        "phi3.5-moe", "fsedp-2x2", [256], ["fsedp"], overrides={"sram_mib_per_die": 64.0}
    )
    assert row["latency_s"] == choice.measured[choice.count]
    for c, t in choice.measured.items():
        assert choice.predicted[c] == pytest.approx(t, rel=0.025)


def test_a_run_until_the_first_layer_times_that_layer_as_the_whole_run_does() -> None:
    """``measure`` stops after the first MoE layer's part; that layer's latency is the whole
    run's first-layer span (the first part starts at 0 in both runs)."""
    from moec.backends.interp import simulate
    from moec.backends.interp.summary import moe_summary
    from moec.ir.target import load_target

    module = truncate(load_bench_model("qwen3-30b-a3b").module, 3)
    ref = TargetRef("fsedp-2x2", ())
    spec = parse_routing_spec("synth:zipf=1.0,seed=0")
    assert isinstance(spec, SynthSpec)
    shapes = [(op.layer.num_experts, op.layer.top_k) for op in module.moe_ops()]
    trace = spec.make(shapes, 64, 4, model="qwen3-30b-a3b")
    program = lower_strategy(module, ref, "fsedp", {"slices": "4"}, trace)
    target = load_target(ref.spec, {})
    whole = simulate(program, target=target, routings=trace, verify=False, layered=True)
    parts = whole.timeline.summary.parts
    assert len({lp.layer for lp in parts}) == 3
    first = [lp for lp in parts if lp.layer == parts[0].layer]
    one = simulate(
        program, target=target, routings=trace, verify=False, layered=True,
        until_layer=program.layers[0].name,
    )  # fmt: skip
    assert [(lp.layer, lp.start, lp.end) for lp in one.timeline.summary.parts] == [
        (lp.layer, lp.start, lp.end) for lp in first
    ]
    assert fs.measure(program, target, trace) == moe_summary(first, target)["latency_s"]


@pytest.mark.parametrize(
    ("strategy", "tokens"),
    [("fsedp-naive", 256), ("fsedp", 256), ("fsedp-r5", 256), ("fsedp-buf", 256), ("fsedp", 4096)],
)
def test_the_bounds_are_below_every_counts_measurement(strategy: str, tokens: int) -> None:
    """A count is skipped, unscheduled, when its hard bound (``iteration_bound``: the busiest
    DRAM channel or die compute unit, from the routing alone) exceeds the fastest measured: it
    must never exceed what the interpreter measures (here every count that fits, DRAM-bound at
    256 tokens, compute-bound at 4096), and its channel term is the schedule's channel bound."""
    from moec.backends.interp.expand.fsedp import iteration_bound, predicted_schedule
    from moec.ir.target import load_target

    module, ref, trace = _phi(64.0, tokens)
    target = load_target(ref.spec, dict(ref.overrides))
    timed = 0
    for c in fs.candidates(module.moe_ops()[0].layer.ffn)[::2]:
        try:
            p = lower_strategy(module, ref, strategy, {"slices": str(c)}, trace)
            hard = iteration_bound(p, target, p.layers[0].name, trace.layers[0])
            sched = predicted_schedule(p, target, p.layers[0].name, trace.layers[0])
        except ScheduleError:
            break  # coarser counts fit even less
        channel = fs.channel_bound(sched.streams, target)
        t = fs.measure(p, target, trace)
        assert t is not None
        assert 0 < channel <= hard * (1 + 1e-12) and hard <= t
        timed += 1
    assert timed >= 3


@pytest.mark.parametrize("strategy", ["fsedp-naive", "fsedp-paired", "fsedp-r5", "fsedp-buf"])
def test_the_search_finds_the_fastest_of_every_count_that_fits(strategy: str) -> None:
    """The best-first search (hard bound, then the variant's estimate error) times few counts,
    yet picks what timing every count that fits would: the skips are sound here."""
    from moec.ir.target import load_target

    module, ref, trace = _phi(64.0)
    target = load_target(ref.spec, dict(ref.overrides))
    base = lower_strategy(module, ref, strategy, {}, trace)
    choice = fs.choose_slices(module, ref, strategy, {}, trace, base)
    assert choice is not None
    every: dict[int, float] = {}
    for c in sorted(choice.bound):
        p = lower_strategy(module, ref, strategy, {"slices": str(c)}, trace)
        t = fs.measure(p, target, trace)
        assert t is not None
        every[c] = t
    assert choice.count == min(every, key=lambda c: (every[c], c))
    assert len(choice.measured) < len(every)
