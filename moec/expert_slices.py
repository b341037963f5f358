"""The micro-slice count of a whole-expert strategy (EP, Hydra, EPLB, TP), measured among the counts that fit.

The lowering (:mod:`moec.compiler.lower.slots`) cuts each expert into the larger of the fewest
slices that fit the SRAM slots and the cost model's preferred count ``p``
(:func:`~moec.compiler.lower.slots.preferred_count`, independent of SRAM). Below the SRAM where
``p`` fits, the count is the fewest that fit, and the layer's span is not monotone in the count:
Phi-3.5-MoE, 64 tokens on fsedp-2x2, ``ep``: 25 slices 29.18 ms, 28 slices 30.42, 32 slices
30.43, 44 slices 30.06, 50 slices 29.34 (``moec bench ... --strategies 'ep{slices=N}'``; a
slice width that fills the MAC array's folds and lines up with the channel's turns, or not).
So 16 MiB (44 forced) gave 30.06 ms and 24 MiB (28 forced) 30.42 ms: more SRAM, slower.

Given the routing the program is compiled for, :func:`choose_slices` lowers every count of
:func:`candidates` (``p`` and the counts of :data:`~moec.fsedp_slices.LADDER` between ``p`` and
the finest cut, slices as wide as the MAC array's columns) that fits, times each with the
interpreter on the first MoE layer (:func:`moec.fsedp_slices.measure`) and keeps the fastest
(ties: fewer slices). The candidates do not depend on SRAM, only which of them fit, a set that
grows with SRAM, and a count's schedule is the same on every SRAM that fits it (the shared
experts keep the lowering's own count, given explicitly, which is SRAM-independent whenever it is
not forced either), so more SRAM never picks a slower schedule. When no candidate fits (SRAM
forces slices narrower than the MAC array), the lowering's own count stands. Never coarser than
``p``: coarser cuts trail the last load by a larger slice and cost a run each to rule out. Without
a routing or with ``slices`` given, the lowering's own rule stands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moec.backends.interp import RunResult
from moec.compiler.lower import lower as lower_strategy
from moec.compiler.lower.slots import preferred_count
from moec.fsedp_slices import LADDER, measure_run, routes
from moec.ir.errors import ScheduleError
from moec.ir.graph import Module
from moec.ir.routing import RoutingTrace
from moec.ir.stream import Program, TargetRef
from moec.ir.target import Target, load_target

#: Policies whose micro-slice count :func:`choose_slices` chooses.
WHOLE_EXPERT = ("ep", "hydra", "eplb", "tp")


@dataclass(frozen=True)
class ExpertSliceChoice:
    """The chosen count (the program's layout count), the preferred count ``p``, every fitting
    candidate's measured MoE latency (seconds; None: overfilled a die at run time), the
    chosen program, and its whole run when its measurement was one (a program of one MoE
    layer, :func:`moec.fsedp_slices.measure_run`), else None."""

    count: int
    preferred: int
    measured: dict[int, float | None] = field(default_factory=dict)
    program: Program | None = field(default=None, compare=False)
    run: RunResult | None = field(default=None, compare=False, repr=False)


def whole_expert(program: Program) -> bool:
    """Whether every MoE layer of ``program`` runs a whole-expert strategy."""
    return bool(program.layers) and all(
        (pol := program.policy(m.name)) is not None and pol.strategy in WHOLE_EXPERT
        for m in program.layers
    )


def candidates(ffn: int, preferred: int, target: Target) -> list[int]:
    """The counts tried for a layer of ``ffn`` FFN columns whose preferred count is
    ``preferred``, coarsest first: ``preferred``, the ladder's counts above it, and the finest
    cut (slices as wide as the MAC array has columns)."""
    finest = max(preferred, ffn // max(1, target.die(0).array.cols))
    return sorted({c for c in LADDER if preferred <= c <= finest} | {preferred, finest})


def choose_slices(
    module: Module, target: TargetRef, strategy: str, options: Mapping[str, str],
    routing: RoutingTrace, base: Program, **kw: Any,
) -> ExpertSliceChoice | None:  # fmt: skip
    """The count for whole-expert program ``base`` (lowered with ``options``) under ``routing``
    (module docstring); None when no candidate fits or the routing is not this program's."""
    if not routes(routing, base):
        return None
    first, r0 = base.layers[0], routing.layers[0]
    ops = module.moe_ops()
    if not ops:
        return None
    tgt = load_target(target.spec, dict(target.overrides), base_dir=kw.get("base_dir"))
    p = preferred_count(ops[0].layer, tgt, first.tokens, first.dtype, r0)
    fixed = dict(options)
    shared = base.layout(first.name, shared=True) if first.shared_ffn else None
    if shared is not None:
        fixed["shared_slices"] = str(shared.count)
    programs: dict[int, Program] = {}
    for c in candidates(first.ffn, p, tgt):
        try:
            prog = lower_strategy(
                module, target, strategy, {**fixed, "slices": str(c)}, routing, **kw
            )
        except ScheduleError:
            continue  # coarser than fits: a finer count may
        lay = prog.layout(prog.layers[0].name)
        count = lay.count if lay is not None else c
        programs.setdefault(count, prog)  # TP rounds counts up to a multiple of the dies
    if not programs:
        return None
    measured: dict[int, float | None] = {}
    best: tuple[float, int] | None = None
    best_run: RunResult | None = None
    for c, prog in programs.items():
        t, run = measure_run(prog, tgt, routing)
        measured[c] = t
        if t is not None and (best is None or (t, c) < best):
            best, best_run = (t, c), run
    if best is None:
        return None
    return ExpertSliceChoice(best[1], p, measured, programs[best[1]], best_run)
