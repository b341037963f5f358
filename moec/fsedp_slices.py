"""FSE-DP's micro-slice count, chosen by its own scheduler's prediction among the counts that fit.

The lowering alone (``compiler/lower/fsedp.py``, ``auto_slices``) takes the larger of the fewest
slices that fit the SRAM slots and a count from a per-slice rule (the finest whose compute hides
one hop). The layer's span is far from smooth in the count: Phi-3.5-MoE, 256 tokens on
fsedp-3x3 (64 MiB, ``fsedp``) takes 133.4 ms with 16 slices, 143.4 with 32, 116.0 with 40, 153.5
with 64, because how the trips of the walk line up with the slots and channels changes with
every cut. No closed-form rule ranks that, so with more SRAM the rule's coarser cut was often
slower (13 SRAM rises of FSE-DP on the paper grid, up to +23.6%).

Given the routing the program is compiled for, :func:`lower` therefore lowers every count of
:data:`LADDER` (and the finest allowed, slices of :data:`~moec.compiler.lower.fsedp.MIN_AUTO_WIDTH`
columns) that fits and keeps the one the interpreter measures fastest on the first MoE layer
(ties: fewer slices), without measuring every count. Each count has a lower bound on its
measurement: first a hard one, found from the routing before scheduling
(:func:`moec.backends.interp.expand.fsedp.iteration_bound`: the busiest DRAM channel or die
compute unit), then, once scheduled, the larger of that and ``p * (1 - e)`` for the
scheduler's estimate ``p`` of the layer's span
(:func:`~moec.backends.interp.expand.fsedp.predicted_schedule`: the rules R1-R5 played on the
interpreter's own engine) and ``e`` how far below its estimate the variant has been measured
(:func:`estimate_error`, :data:`VARIANT_ERROR`, at least 2.5x the worst seen by
``scripts/fsedp_estimate_error.py``). A best-first search takes the count of the lowest bound:
schedules it if it is not yet, else times it, until that bound exceeds the fastest measured;
then no count left can win, and the choice is the measured fastest of the counts that fit. A
count whose hard bound alone is too high is never scheduled (naive rules on 8x8, where DRAM
bounds the layer to within 0.1%: 3 schedules of 7). Only the side below the estimate matters:
R5's estimate runs 3-16% *below* the measurement on 4x4 and 8x8 (its remote loads claim their
channel in the interpreter when their slot frees, not when the scheduler pushes them), which
makes the skip conservative, not unsound, but leaves nearly every count timed there.
The candidates do not depend
on SRAM except through what fits, which only grows with SRAM, so more SRAM never picks a
slower schedule. Only when no count of the ladder fits (slices narrower than the ladder
allows) is the lowering's own count kept. Without a routing (``moec compile`` with no
``--routing``) or with an explicit ``slices=``, the lowering's own rule stands. The choice is
predicted and measured on the first MoE layer (the paper models' layers share one shape; the
run stops after that layer's part, ``simulate(..., until_layer=)``, so choosing costs a few
layers whatever the model's depth), and applies to every layer.

**What the choice costs.** Each count that fits is lowered whole, but checked only for what
decides its fit (:func:`~moec.ir.stream.verify.verify_fit`: the dies' walks, the runtime parts'
slots and micro-slices), and so is the lowering's own program (:func:`lower_run`); the
program returned, the count chosen or that one, is then verified in full. The lowerings
share what the count does not change
(:func:`~moec.compiler.lower.common.lowerings_shared`: the routing is checked once, and a
layer's expert declarations are made once for every count's program). A
count's schedule is computed once
(:func:`~moec.backends.interp.expand.fsedp.plans_shared`): the timing of a count whose
prediction asked for it expands the layer from that schedule instead of scheduling it again;
its iteration (units, problem) is built once for its hard bound and its schedule, and the
routing's pairs are grouped by expert and die once for every count. A
program of one MoE layer is measured by its whole run (the parts after the layer hold no MoE
work, so the layer's latency is the same), and :func:`lower_run` hands the chosen count's run to
the caller (``moec bench``), which would otherwise run the same program again. The choice also
says how much work is ahead: the micro-slices times dies of every count that fits to the
scheduler (:func:`~moec.backends.interp.expand.fsedp_compiled.expect`), and before each timing
the ops still to time to the event loop (:func:`~moec.backends.interp.event_loop.expect`: the
last timing's ops per count not yet ruled out; before the first, :data:`OPS_PER_SLICE`), and
when the caller runs the chosen program afterwards (``moec bench``, :func:`lower_run`'s
``run``), its later layers at the fewest slices that fit, so that each switches to its
compiled kernel (numba) as soon as that work pays for loading it, not after its reference has
done that much. Which implementation runs never changes a number.
A count timed after the first is timed only as far as it can still win: its run stops
(``simulate(..., limit=)``, :class:`~moec.backends.interp.event_loop.PastLimit`) as soon as
its layer's ops span more than the fastest measured so far, before its SRAM peaks and summary
(:attr:`SliceChoice.stopped`). Such a count measures above the fastest, so it neither beats
nor ties it, whichever count it is and whatever is timed after it: the choice is the one the
full timings make.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moec.backends.interp import RunResult, event_loop, simulate
from moec.backends.interp.expand import fsedp_compiled
from moec.backends.interp.expand.fsedp import iteration_bound, plans_shared, predicted_schedule
from moec.backends.interp.simulate import gc_paused
from moec.backends.interp.summary import layer_parts, moe_summary
from moec.compiler.lower import lower as lower_strategy
from moec.compiler.lower.common import lowerings_shared
from moec.compiler.lower.fsedp import MIN_AUTO_WIDTH
from moec.ir.cost import dram_occupancy
from moec.ir.errors import ScheduleError
from moec.ir.graph import Module
from moec.ir.routing import RoutingTrace
from moec.ir.stream import Instr, Load, Program, TargetRef, verify_program
from moec.ir.stream.params import FSEDPParams, strategy_params
from moec.ir.target import Target, load_target

#: Slice counts tried (those no finer than the finest allowed and no coarser than fits).
LADDER = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64, 80, 96, 128)
#: How far the interpreter's measurement may fall below the scheduler's estimate, as a fraction
#: of the estimate (module docstring): a count is run while ``prediction * (1 - error)`` is
#: not above the fastest measurement so far. The largest, for rules R1-R4 in natural order.
ESTIMATE_ERROR = 0.025
#: That fraction per FSE-DP variant, ``(rules, order, r5, token buffering)``: at least 2.5x the
#: most the measurement fell below the estimate on every count that fits of 8 points
#: (``scripts/fsedp_estimate_error.py``: 2x2, 3x3, and 3x3 with DDR at 51.2 GB/s per channel,
#: 4x4; the four paper models; 16-1024 tokens) and the counts timed on the 8x8 mesh (Qwen3-30B-A3B,
#: 1024 tokens): naive 0.00%, ``fsedp`` 0.88%, ``fsedp-paired`` 0.26%,
#: ``fsedp-r5`` 0.37%, ``fsedp-buf`` 0.31%. Only that side matters: an estimate below the
#: measurement (R5's, 3-16% below on 4x4 and 8x8) makes the skip more conservative, not less.
#: A variant not listed takes :data:`ESTIMATE_ERROR`.
VARIANT_ERROR: dict[tuple[str, str, bool, bool], float] = {
    ("naive", "natural", False, False): 0.005,
    ("r1-r4", "natural", False, False): ESTIMATE_ERROR,
    ("r1-r4", "paired", False, False): 0.01,
    ("r1-r4", "paired", True, False): 0.01,
    ("r1-r4", "paired", True, True): 0.01,
}
#: Ops a count's timing runs per micro-slice and die, at least (load or receive, compute, send,
#: free: 4.3 on the 8x8 point, 9.1 under naive rules): what the choice expects of a timing before
#: it has timed one, to pick the event loop's implementation (never a number).
OPS_PER_SLICE = 4
#: Whether a timing after the first stops once it cannot win (module doc). False times every
#: count to the end: the same choice, the reference ``tests/test_fsedp_slices_cutoff.py`` and
#: ``scripts/fsedp_choice.py --rounds`` compare against.
STOP_LOSERS = True
#: The most dies on which the choice writes every prediction's streams (:func:`writes_ahead`).
#: CPU seconds of the choice without and with (session 17, three rounds each, alternating in
#: one process, 1024 tokens): DeepSeek-V3 on npu8-hbm (8 dies) ``fsedp`` 2.60 -> 2.20-2.34 (6
#: of 7 counts timed), ``fsedp-paired`` 1.73-1.76 -> 1.61-1.63 (4 of 7); Qwen3-30B-A3B on
#: fsedp-4x4 (16) ``fsedp`` 1.02-1.10 -> 0.99-1.00, ``fsedp-paired`` 1.06-1.08 -> 1.01-1.04; on
#: the 8x8 mesh (64) ``fsedp`` 1.26-1.31 -> 1.54-1.80 (1 of 7), ``fsedp-paired`` 1.88-1.91 ->
#: 1.94-2.00.
AHEAD_DIES = 16
#: Schedules kept from prediction to timing: those of the counts predicted fastest so far (the
#: ones timed first); a count timed without its schedule kept is scheduled again.
KEEP_SCHEDULES = 8


@dataclass(frozen=True)
class SliceChoice:
    """The chosen count; per count that fits, its hard lower bound
    (:func:`~moec.backends.interp.expand.fsedp.iteration_bound`), and of those scheduled the
    predicted span of the first MoE layer, and of those run to the end the measured MoE
    latency (seconds), and of those whose run stopped once it could not win (``stopped``) the
    fastest measured before it, which their latency is above; the chosen program, and its
    whole run under the routing when its measurement was one (a program of one MoE layer),
    else None."""

    count: int
    predicted: dict[int, float] = field(default_factory=dict)
    measured: dict[int, float] = field(default_factory=dict)
    bound: dict[int, float] = field(default_factory=dict)
    stopped: dict[int, float] = field(default_factory=dict)
    program: Program | None = field(default=None, compare=False)
    run: RunResult | None = field(default=None, compare=False, repr=False)


def _streams(program: Program) -> bool:
    return bool(program.layers) and all(
        (pol := program.policy(m.name)) is not None and pol.strategy == "fsedp"
        for m in program.layers
    )


def _params(program: Program, target: Target) -> FSEDPParams | None:
    m = program.layers[0]
    pol = program.policy(m.name)
    params = strategy_params(pol, m, target) if pol is not None else None
    return params if isinstance(params, FSEDPParams) else None


def estimate_error(program: Program, target: Target) -> float:
    """How far below its scheduler's estimate the interpreter may measure FSE-DP ``program``'s
    first MoE layer, as a fraction: :data:`VARIANT_ERROR` of its variant."""
    params = _params(program, target)
    if params is None:
        return ESTIMATE_ERROR
    key = (params.rules, params.order, params.r5, params.slack > 0)
    return VARIANT_ERROR.get(key, ESTIMATE_ERROR)


def writes_ahead(program: Program, target: Target) -> bool:
    """Whether the slice choice predicts ``program``'s counts with their streams written (kept
    for their timing, :func:`~moec.backends.interp.expand.fsedp.plans_shared`) or without
    (cheaper; a count timed is then scheduled again). With: R5, whose estimate runs below the
    measurement and ranks counts poorly, so most counts are timed (6 of 7 on the 8x8 point);
    naive rules, whose hard bound is tight enough that a count scheduled is a count timed; and
    any variant on a package of at most :data:`AHEAD_DIES` dies, where writing a count's
    streams costs less than scheduling it again and half or more of the counts predicted are
    timed. Without: the others on bigger packages (1-2 of 7 timed on the 8x8 point, where the
    streams of 64 dies cost more than the schedules they would save). A matter of cost only:
    the choice is the same."""
    params = _params(program, target)
    return params is None or params.r5 or params.rules == "naive" or target.num_dies <= AHEAD_DIES


def candidates(ffn: int) -> list[int]:
    """The counts tried for a layer of ``ffn`` FFN columns, finest first."""
    finest = max(1, ffn // MIN_AUTO_WIDTH)
    return sorted({c for c in LADDER if c <= finest} | {finest}, reverse=True)


def channel_bound(streams: Mapping[int, list[Instr]], target: Target) -> float:
    """A lower bound (seconds) on the span of a layer whose expansion is ``streams``: the most
    any one DRAM channel is held by their loads (:func:`~moec.ir.cost.dram_occupancy` each).
    The interpreter's channel serves one read at a time and every hold lies within the layer's
    span, whatever order the reads take."""
    held = [0.0] * len(target.channels)
    for instrs in streams.values():
        for i in instrs:
            if isinstance(i, Load) and 0 <= i.channel < len(held):
                held[i.channel] += dram_occupancy(target, i.channel, i.nbytes)
    return max(held, default=0.0)


def measure(program: Program, target: Target, routing: RoutingTrace) -> float | None:
    """The interpreter's MoE latency of ``program``'s first MoE layer under ``routing`` (what
    ``moec bench`` reports for a one-layer program), or None when it does not fit a die's SRAM."""
    return measure_run(program, target, routing)[0]


def measure_run(
    program: Program, target: Target, routing: RoutingTrace
) -> tuple[float | None, RunResult | None]:
    """:func:`measure`, and the run it measured when that is ``program``'s whole run (what
    ``simulate(program, target=target, routings=routing, verify=False, layered=True)`` returns,
    with or without ``allow_overflow``): a program of one MoE layer that fits. A longer program
    is timed up to its first MoE layer's part only (run None)."""
    t, run, _ = _measure(program, target, routing)
    return t, run


def _measure(
    program: Program, target: Target, routing: RoutingTrace, limit: float | None = None
) -> tuple[float | None, RunResult | None, int]:
    """:func:`measure_run`, and how many ops the timing's event loop ran (0: none). With
    ``limit``, :class:`~moec.backends.interp.event_loop.PastLimit` as soon as the latency is
    provably above it (``simulate(..., limit=)``)."""
    if len(program.layers) == 1:
        # the whole program: after the layer's part only barriers and dense islands are left
        run = simulate(
            program, target=target, routings=routing, verify=False, layered=True,
            allow_overflow=True, limit=limit,
        )  # fmt: skip
        if "sram_over_bytes" not in run.report.extra:  # it fits: the run with or without
            return _latency(run), run, run.timeline.events  # allow_overflow, the first part's
        # overflowing somewhere: whether the layer's part does decides (below)
    try:
        run = simulate(
            program, target=target, routings=routing, verify=False, layered=True,
            until_layer=program.layers[0].name, limit=limit,
        )  # fmt: skip
    except ScheduleError:
        return None, None, 0
    return _latency(run), None, run.timeline.events


def _latency(run: RunResult) -> float:
    tl = run.timeline
    parts = tl.summary.parts if tl.summary is not None else layer_parts(tl)
    return float(moe_summary(parts, tl.target, tl.energy is not None)["latency_s"])


def routes(routing: RoutingTrace, program: Program) -> bool:
    """Whether ``routing`` is a routing of ``program``: as many layers, and its first layer has
    the program's tokens, experts and top-k (the slice choices time that layer)."""
    if len(routing.layers) != len(program.layers):
        return False
    first, r0 = program.layers[0], routing.layers[0]
    return (r0.tokens, r0.num_experts, r0.top_k) == (first.tokens, first.experts, first.top_k)


def choose_slices(
    module: Module, target: TargetRef, strategy: str, options: Mapping[str, str],
    routing: RoutingTrace, base: Program, *, run: bool = False, **kw: Any,
) -> SliceChoice | None:  # fmt: skip
    """The count for FSE-DP program ``base`` (lowered with ``options``) under ``routing`` (module
    docstring); None when no count of the ladder fits or the routing is not this program's.
    ``run``: the caller then runs the chosen program under ``routing`` (its layers after the
    first are work ahead for the kernels' decisions, :func:`lower_run`)."""
    if not routes(routing, base):
        return None
    first = base.layers[0]
    tgt = load_target(target.spec, dict(target.overrides), base_dir=kw.get("base_dir"))
    # the collector paused for the whole choice, as ``moec bench`` runs it: a timing stopped
    # past its limit unwinds with its part's ops alive, and a collection as its run's own pause
    # ends would walk them all
    with plans_shared() as plans, gc_paused(), lowerings_shared():
        try:
            later = len(routing.layers) - 1 if run else 0
            return _choose(
                module, target, strategy, options, routing, first.ffn, tgt, plans, later, **kw
            )  # fmt: skip
        finally:
            fsedp_compiled.expect(0)  # what the choice said was ahead ends with it


def _choose(
    module: Module, target: TargetRef, strategy: str, options: Mapping[str, str],
    routing: RoutingTrace, ffn: int, tgt: Target, plans: dict[Any, Any], later: int = 0,
    **kw: Any,
) -> SliceChoice | None:  # fmt: skip
    """:func:`choose_slices` with the shared schedules ``plans`` and ``later`` MoE layers the
    caller runs after the choice (see there): a best-first
    search on each count's lower bound on its measurement, the hard one before it is scheduled
    (:func:`~moec.backends.interp.expand.fsedp.iteration_bound`), then the larger of that and
    ``prediction * (1 - estimate_error(...))``; the count of the lowest bound is scheduled if it
    is not yet, else timed (only while it can still beat the fastest measured: module doc),
    until that bound exceeds the fastest measured."""
    r0 = routing.layers[0]
    programs: dict[int, Program] = {}
    bound: dict[int, float] = {}
    for c in candidates(ffn):
        try:
            p = lower_strategy(
                module, target, strategy, {**options, "slices": str(c)}, routing,
                fit_only=True, **kw,
            )  # fmt: skip
            bound[c] = iteration_bound(p, tgt, p.layers[0].name, r0)
        except ScheduleError:
            break  # coarser slices fit even less
        programs[c] = p
    if not programs:
        return None
    # what the predictions may schedule (micro-slices of the experts with tokens, times dies),
    # and the caller's run of the later layers at least at the fewest slices: the scheduler may
    # play them compiled from the first (the same numbers either way)
    per_slice = int(np.unique(r0.ids[r0.ids >= 0]).size) * tgt.num_dies
    run_work = per_slice * min(programs) * later
    fsedp_compiled.expect(per_slice * sum(programs) + run_work)
    some = programs[max(programs)]  # every count is the same variant
    error, ahead = estimate_error(some, tgt), writes_ahead(some, tgt)
    predicted: dict[int, float] = {}
    measured: dict[int, float] = {}
    stopped: dict[int, float] = {}
    best_run: RunResult | None = None
    fastest = math.inf
    ops = 0  # the last timing's ops
    # (lower bound, count): ties go to fewer slices, as the choice's own tie-break
    heap = [(b, c) for c, b in bound.items()]
    heapq.heapify(heap)
    while heap:
        low, c = heapq.heappop(heap)
        if low > fastest:
            break  # no count left can beat the fastest, nor tie it
        if c not in predicted:
            try:
                sched = predicted_schedule(
                    programs[c], tgt, programs[c].layers[0].name, r0, ahead
                )  # fmt: skip
            except ScheduleError:  # the slots fit, yet the rules stall: as coarser counts would
                heap = [(b, k) for b, k in heap if k > c]
                heapq.heapify(heap)
                continue
            predicted[c] = sched.estimate_s
            low = sched.estimate_s * (1.0 - error)
            heapq.heappush(heap, (max(bound[c], low), c))
            waiting = sorted((b, k) for b, k in heap if k in predicted)
            for _, slow in waiting[KEEP_SCHEDULES:]:
                _forget(plans, programs[slow])
            continue
        # the ops still to time: the event loop may run compiled now (the same numbers either way)
        if ops:  # at the last timing's size, this count and those not yet ruled out
            _expect_timings(ops, heap, fastest, OPS_PER_SLICE * run_work)
        else:  # and those timed too were this count measured as predicted
            _expect_timings(
                OPS_PER_SLICE * per_slice * c, heap, predicted[c], OPS_PER_SLICE * run_work
            )
        try:
            limit = fastest if STOP_LOSERS and measured else None
            t, run, ops = _measure(programs[c], tgt, routing, limit)
        except event_loop.PastLimit as past:  # above the fastest: it cannot beat nor tie it
            t, run, ops = None, None, past.ops
            stopped[c] = past.limit
        _forget(plans, programs[c])  # this count's schedule is not asked for again
        if t is not None:
            if not measured or (t, c) < min((v, k) for k, v in measured.items()):
                best_run = run
            measured[c] = t
            fastest = min(fastest, t)
    if not measured:
        return None
    best = min(measured, key=lambda c: (measured[c], c))
    verify_program(programs[best], tgt)  # the candidates were checked for fit only
    return SliceChoice(best, predicted, measured, bound, stopped, programs[best], best_run)


def _expect_timings(ops: int, heap: list[tuple[float, int]], limit: float, then: int) -> None:
    """Tell the event loop that timings of about ``ops`` ops each are to come: the next one's,
    and one per count of ``heap`` whose bound is not above ``limit``; then ``then`` more (the
    caller's run of the later layers)."""
    event_loop.expect(ops * (1 + sum(b <= limit for b, _ in heap)) + then)


def _forget(plans: dict[Any, Any], program: Program) -> None:
    for key in [k for k, (objs, *_) in plans.items() if objs[0] is program]:
        del plans[key]


def lower(
    module: Module, target: TargetRef, strategy: str, options: Mapping[str, str] | None = None,
    routing: RoutingTrace | None = None, **kw: Any,
) -> Program:  # fmt: skip
    """:func:`moec.compiler.lower.lower`, with the slice count chosen for ``routing`` when it
    is given and ``slices`` is left to ``auto``: an FSE-DP program's by the scheduler's
    prediction and the interpreter (:func:`choose_slices`), a whole-expert program's (EP,
    Hydra, EPLB, TP) by the interpreter (:func:`moec.expert_slices.choose_slices`)."""
    return lower_run(module, target, strategy, options, routing, **kw)[0]


def lower_run(
    module: Module, target: TargetRef, strategy: str, options: Mapping[str, str] | None = None,
    routing: RoutingTrace | None = None, *, run: bool = False, **kw: Any,
) -> tuple[Program, RunResult | None]:  # fmt: skip
    """:func:`lower`, and the program's run under ``routing`` when choosing its slice count made
    it: exactly what ``simulate(program, target=..., routings=routing, verify=False,
    layered=True)`` returns, with or without ``allow_overflow`` (the program fits), so the
    caller need not run it again. None when the choice did not run the whole program (a
    program of more than one MoE layer, no choice made). ``run``: the caller runs the program
    then (``moec bench``), so an FSE-DP choice counts its later layers as work ahead of the
    compiled kernels' decisions (which implementation runs, never a number)."""
    # imported here: moec.expert_slices reuses this module's ladder and measurement
    from moec import expert_slices

    opts = dict(options or {})
    if routing is None or opts.get("slices", "auto") != "auto":
        return lower_strategy(module, target, strategy, opts, routing, **kw), None
    # checked for fit only: a choice returns its own count's program, verified in full; the
    # lowering's own program is verified in full when it is the one returned
    with lowerings_shared():  # the base's and the counts' lowerings: one routing check
        base = lower_strategy(module, target, strategy, opts, routing, fit_only=True, **kw)
        chosen: SliceChoice | expert_slices.ExpertSliceChoice | None = None
        if _streams(base):
            chosen = choose_slices(module, target, strategy, opts, routing, base, run=run, **kw)
        elif expert_slices.whole_expert(base):
            chosen = expert_slices.choose_slices(
                module, target, strategy, opts, routing, base, **kw
            )  # fmt: skip
    if chosen is None or chosen.program is None:
        tgt = load_target(target.spec, dict(target.overrides), base_dir=kw.get("base_dir"))
        verify_program(base, tgt)
        return base, None
    return chosen.program, chosen.run
