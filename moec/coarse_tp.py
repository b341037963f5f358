"""TP's coarse cuts under chunked token dispatch: a candidate for ``--strategy auto``.

Every micro-slice's ``accum`` scales and adds its partial output over the layer's full hidden
width on the vector unit (:func:`moec.ir.cost.accum_time`), and every slice's GEMMs pay their
folds' fill and a partial last tile, so an expert cut into ``s`` slices pays ``s`` such passes
where one whole-expert slice pays one. Plain TP holds every token's input and output
accumulators on every die, and the room left for slots forces fine cuts at large batches
(Qwen3-30B-A3B, 1024 tokens, fsedp-2x2: 12 slices per expert, 1.97 ms of the busiest die's
19.65 ms on partial sums). Chunked dispatch (``window``, ``chunk``) holds only the chunks in
flight, which leaves room for coarser cuts, at the price of splitting the hottest experts
into chunks (each chunk re-streams the expert's slices and refills the GEMMs' folds).

:func:`coarse_chunked_tp` weighs that trade with the cost model, from the SRAM and the routing
alone: with two slots (the fewest that overlap one slice's load with another's compute) and a
window of one chunk, for each cut of ``m x D`` slices (``D`` dies; coarsest first, up to the
first that fits with every expert whole) it takes the largest ``chunk`` with which the
lowering says the layer fits (bisection: the window's activations grow with the chunk; none
when every expert fits whole), and it keeps the cut whose schedule has the lowest bound
(:func:`moec.auto_bound.predicted_layers`: the busiest channel's loads against the busiest
die's compute, every op at the interpreter's formulas; ties: fewer slices). Whether that
candidate is faster is the interpreter's to say, like any other's.
"""

from __future__ import annotations

from typing import Any

from moec.auto_bound import predicted_layers
from moec.compiler.lower import lower
from moec.compiler.lower.options import StrategyError
from moec.ir.errors import ScheduleError
from moec.ir.graph import Module
from moec.ir.routing import RoutingTrace
from moec.ir.stream import Program, TargetRef
from moec.ir.target import Target
from moec.slice_variants import spell

#: Slots of the candidate: the fewest that overlap one slice's load with another's compute.
SLOTS = 2


def _lowered(
    module: Module, target_ref: TargetRef, opts: dict[str, str], routing: RoutingTrace,
    kw: dict[str, Any],
) -> Program | None:  # fmt: skip
    try:
        return lower(module, target_ref, "tp", opts, routing, **kw)
    except (ScheduleError, StrategyError):
        return None


def coarse_cuts(
    module: Module, target_ref: TargetRef, target: Target, routing: RoutingTrace, **kw: Any
) -> list[tuple[str, Program]]:
    """Each cut's spec ``tp{window=1,slices=mD,slots=2[,chunk=N]}`` with its program, coarsest
    first, from one slice per die up to the first cut that fits with every expert whole (at
    most as fine as slices one MAC-array column group wide); a cut that does not fit even with
    one-token chunks is left out."""
    if not routing.layers or not module.moe_ops():
        return []
    D = target.num_dies
    ffn = module.moe_ops()[0].layer.ffn
    finest = max(D, ffn // max(1, target.die(0).array.cols))
    tokens = max(lr.tokens for lr in routing.layers)
    out: list[tuple[str, Program]] = []
    lo = 0  # the largest chunk known to fit: finer cuts leave more room, never less
    for count in range(D, finest + 1, D):
        base = {"window": "1", "slices": str(count), "slots": str(SLOTS)}
        whole = _lowered(module, target_ref, base, routing, kw)
        if whole is not None:
            out.append((spell("tp", base), whole))
            break
        hi = tokens  # known not to fit (every expert whole did not)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _lowered(module, target_ref, {**base, "chunk": str(mid)}, routing, kw) is None:
                hi = mid
            else:
                lo = mid
        if lo > 0:
            spec = {**base, "chunk": str(lo)}
            program = _lowered(module, target_ref, spec, routing, kw)
            assert program is not None  # lo fits by the bisection
            out.append((spell("tp", spec), program))
    return out


def coarse_chunked_tp(
    module: Module, target_ref: TargetRef, target: Target, routing: RoutingTrace, **kw: Any
) -> str | None:
    """The cut of :func:`coarse_cuts` whose schedule has the lowest bound (module docstring;
    ties: fewer slices), or None when none fits."""
    best: tuple[float, int, str] | None = None
    for i, (spec, program) in enumerate(coarse_cuts(module, target_ref, target, routing, **kw)):
        bound = sum(predicted_layers(program, target, routing))
        if best is None or (bound, i) < best[:2]:
            best = (bound, i, spec)
    return None if best is None else best[2]
