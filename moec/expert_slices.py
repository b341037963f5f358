"""The micro-slice counts of a whole-expert strategy (EP, Hydra, EPLB, TP), measured among the counts that fit.

The lowering (:mod:`moec.compiler.lower.slots`) cuts each expert into the larger of the fewest
slices that fit the SRAM slots and the cost model's preferred count ``p``
(:func:`~moec.compiler.lower.slots.preferred_count`, independent of SRAM), and the shared
experts likewise (:func:`~moec.compiler.lower.slots.shared_preferred_count`, a multiple of the
dies). Below the SRAM where ``p`` fits, the count is the fewest that fit, and the layer's span
is not monotone in the count: Phi-3.5-MoE, 64 tokens on fsedp-2x2, ``ep``: 25 slices 29.18 ms,
28 slices 30.42, 32 slices 30.43, 44 slices 30.06, 50 slices 29.34 (``moec bench ...
--strategies 'ep{slices=N}'``; a slice width that fills the MAC array's folds and lines up with
the channel's turns, or not). So 16 MiB (44 forced) gave 30.06 ms and 24 MiB (28 forced) 30.42
ms: more SRAM, slower. The shared experts' count does the same: DeepSeek-MoE-16B, 1024 tokens on
fsedp-4x4, ``ep``: SRAM forces 48 shared slices at 16 MiB (26.332 ms), 24 MiB fits the cost
model's 32 (26.343 ms).

Given the routing the program is compiled for, :func:`choose_slices` lowers every pair of a
routed count of :func:`candidates` (``p``, the counts of :data:`~moec.fsedp_slices.LADDER`
above it, and the finest cut, slices as wide as the MAC array's columns) and a shared count of
:func:`shared_candidates` (the same for their columns, and for a die's share of them times the
dies) that fits, times each with the
interpreter on the first MoE layer (:func:`moec.fsedp_slices.measure`) and keeps the fastest
(ties: fewer routed, then fewer shared slices). The candidates do not depend on SRAM, only
which of them fit, a set that grows with SRAM, and a pair's schedule is the same on every SRAM
that fits it (both counts are given explicitly), so more SRAM never picks a slower schedule.
When no pair fits (SRAM forces slices narrower than the MAC array), the lowering's own counts
stand. Never coarser than ``p``: coarser cuts trail the last load by a larger slice and cost a
run each to rule out. Without a routing or with ``slices`` given, the lowering's own rule
stands; with ``shared_slices`` given, only the routed count is chosen.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moec.backends.interp import RunResult
from moec.compiler.lower import lower as lower_strategy
from moec.compiler.lower.slots import preferred_count, shared_preferred_count
from moec.fsedp_slices import LADDER, measure_run, routes
from moec.ir.errors import ScheduleError
from moec.ir.graph import Module
from moec.ir.routing import RoutingTrace
from moec.ir.stream import Program, TargetRef, verify_program
from moec.ir.target import Target, load_target

#: Policies whose micro-slice count :func:`choose_slices` chooses.
WHOLE_EXPERT = ("ep", "hydra", "eplb", "tp")


@dataclass(frozen=True)
class ExpertSliceChoice:
    """The chosen counts (the program's layout counts: routed, and shared, 0 without shared
    experts), the preferred routed count ``p``, every fitting candidate pair's measured MoE
    latency (seconds, keyed ``(routed, shared)``; None: overfilled a die at run time), the
    chosen program, and its whole run when its measurement was one (a program of one MoE
    layer, :func:`moec.fsedp_slices.measure_run`), else None."""

    count: int
    preferred: int
    measured: dict[tuple[int, int], float | None] = field(default_factory=dict)
    program: Program | None = field(default=None, compare=False)
    run: RunResult | None = field(default=None, compare=False, repr=False)
    shared_count: int = 0


def whole_expert(program: Program) -> bool:
    """Whether every MoE layer of ``program`` runs a whole-expert strategy."""
    return bool(program.layers) and all(
        (pol := program.policy(m.name)) is not None and pol.strategy in WHOLE_EXPERT
        for m in program.layers
    )


def candidates(ffn: int, preferred: int, target: Target) -> list[int]:
    """The counts tried for a layer of ``ffn`` FFN columns whose preferred count is
    ``preferred``, coarsest first: ``preferred``, the ladder's counts above it, and the finest
    cuts, slices as wide as the MAC array has columns (rounded either way: the fewest slices no
    wider than the columns, and the most no narrower)."""
    cols = max(1, target.die(0).array.cols)
    finest = {max(preferred, min(ffn, n)) for n in (ffn // cols, -(-ffn // cols))}
    return sorted({c for c in LADDER if preferred <= c <= max(finest)} | {preferred} | finest)


def shared_candidates(shared_ffn: int, preferred: int, target: Target) -> list[int]:
    """The shared-expert counts tried, from the cost model's count ``preferred``: the
    :func:`candidates` of their ``shared_ffn`` columns cut like one expert (replicated shared
    experts, Hydra's and EPLB's: every die computes all of them), and of a die's share times
    the dies (split over the dies, EP's and TP's: each die computes its share of the columns
    for every token), at most one slice per column. The lowering rounds a count to what its
    strategy needs (a multiple of the dies when split)."""
    D = max(target.num_dies, 1)
    per_die = candidates(-(-shared_ffn // D), max(1, -(-preferred // D)), target)
    split = {min(shared_ffn, m * D) for m in per_die}
    return sorted(split | set(candidates(shared_ffn, preferred, target)))


def _counts(program: Program) -> tuple[int, int]:
    """(routed, shared) layout counts of ``program``'s first MoE layer (shared 0: none)."""
    name = program.layers[0].name
    lay, sh = program.layout(name), program.layout(name, shared=True)
    return (lay.count if lay is not None else 0, sh.count if sh is not None else 0)


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
    shared = base.layout(first.name, shared=True) if first.shared_ffn else None
    shared_counts: list[int | None] = [None]
    if shared is not None and "shared_slices" in options:
        shared_counts = [shared.count]
    elif shared is not None:
        sp = shared_preferred_count(ops[0].layer, tgt, first.tokens, first.dtype)
        shared_counts = list(shared_candidates(first.shared_ffn, sp, tgt))
    programs: dict[tuple[int, int], Program] = {}
    for c in candidates(first.ffn, p, tgt):
        for s in shared_counts:
            opts = {**options, "slices": str(c)}
            if s is not None:
                opts["shared_slices"] = str(s)
            try:
                prog = lower_strategy(module, target, strategy, opts, routing, fit_only=True, **kw)
                key = _counts(prog)
                if s is not None and key[1] != s and key not in programs:
                    # rounded up to a multiple of the dies: that count's own program (slots
                    # sized for its slices, not for the count asked)
                    opts["shared_slices"] = str(key[1])
                    prog = lower_strategy(
                        module, target, strategy, opts, routing, fit_only=True, **kw
                    )  # fmt: skip
                    key = _counts(prog)
            except ScheduleError:
                continue  # coarser than fits: a finer count may
            programs.setdefault(key, prog)  # TP rounds routed counts likewise
    if not programs:
        return None
    measured: dict[tuple[int, int], float | None] = {}
    best: tuple[float, tuple[int, int]] | None = None
    best_run: RunResult | None = None
    for key, prog in programs.items():
        t, run = measure_run(prog, tgt, routing)
        measured[key] = t
        if t is not None and (best is None or (t, key) < best):
            best, best_run = (t, key), run
    if best is None:
        return None
    (count, shared_count) = best[1]
    verify_program(programs[best[1]], tgt)  # the candidates were checked for fit only
    return ExpertSliceChoice(count, p, measured, programs[best[1]], best_run, shared_count)
