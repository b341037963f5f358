"""TP's coarsest cut under chunked token dispatch: a candidate for ``--strategy auto``.

Every micro-slice's ``accum`` scales and adds its partial output over the layer's full hidden
width on the vector unit (:func:`moec.ir.cost.accum_time`), so an expert cut into ``s`` slices
pays ``s`` such passes where one whole-expert slice pays one. Plain TP holds every token's
input and output accumulators on every die, and the room left for slots forces fine cuts at
large batches (Qwen3-30B-A3B, 1024 tokens, fsedp-2x2: 12 slices per expert, 1.97 ms of the
busiest die's 19.65 ms on those passes). Chunked dispatch (``window``, ``chunk``) holds only
the chunks in flight, which leaves room for the coarsest cut TP has, one slice per die.

:func:`coarsest_chunked_tp` spells that candidate from the SRAM alone: one slice per die
(``slices`` = the die count), two slots (the fewest that overlap a load with compute), a
window of one chunk, and the largest ``chunk`` (tokens per chunk) with which the lowering
says the layer fits, found by bisection (the window's activations grow with the chunk); no
``chunk`` when every expert's tokens fit whole. Fewer, larger chunks re-stream fewer slices
and split fewer GEMMs. Whether the candidate is faster is the interpreter's to say, like any
other's.
"""

from __future__ import annotations

from typing import Any

from moec.compiler.lower import lower
from moec.compiler.lower.options import StrategyError
from moec.ir.errors import ScheduleError
from moec.ir.graph import Module
from moec.ir.routing import RoutingTrace
from moec.ir.stream import TargetRef
from moec.ir.target import Target
from moec.slice_variants import spell

#: Slots of the candidate: the fewest that overlap one slice's load with another's compute.
SLOTS = 2


def _fits(
    module: Module, target_ref: TargetRef, opts: dict[str, str], routing: RoutingTrace,
    kw: dict[str, Any],
) -> bool:  # fmt: skip
    try:
        lower(module, target_ref, "tp", opts, routing, **kw)
    except (ScheduleError, StrategyError):
        return False
    return True


def coarsest_chunked_tp(
    module: Module, target_ref: TargetRef, target: Target, routing: RoutingTrace, **kw: Any
) -> str | None:
    """``tp{window=1,slices=D,slots=2[,chunk=N]}`` with the largest ``N`` that fits (module
    docstring), or None when even one-token chunks do not fit or the routing has no layers."""
    if not routing.layers:
        return None
    base = {"window": "1", "slices": str(target.num_dies), "slots": str(SLOTS)}
    tokens = max(lr.tokens for lr in routing.layers)
    if _fits(module, target_ref, base, routing, kw):
        return spell("tp", base)
    lo, hi = 0, tokens  # lo: the largest chunk known to fit (0: none), hi: known not to
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fits(module, target_ref, {**base, "chunk": str(mid)}, routing, kw):
            lo = mid
        else:
            hi = mid
    if lo == 0:
        return None
    return spell("tp", {**base, "chunk": str(lo)})
