"""Slice-count variants of the whole-expert strategies for ``--strategy auto``.

The lowering cuts each expert into the cost model's preferred number of micro-slices unless
SRAM forces more (:mod:`moec.compiler.lower.slicing`), and a forced count can give widths that
leave the MAC array's folds partly empty. :func:`slice_variants` adds, for each such strategy,
the counts next to its own whose cut costs less compute, as more candidates for the search to
lower, predict and time like any other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from moec.compiler.lower import parse_strategy
from moec.ir.cost import slice_compute_time
from moec.ir.routing import RoutingTrace
from moec.ir.stream import MoEDecl
from moec.ir.target import Target

if TYPE_CHECKING:
    from moec.auto import Trial


def spell(name: str, opts: dict[str, str]) -> str:
    """A strategy spec from its name and options (sorted): ``tp{slices=100,slots=8}``."""
    if not opts:
        return name
    return name + "{" + ",".join(f"{k}={v}" for k, v in sorted(opts.items())) + "}"


#: Strategies whose micro-slice count :func:`slice_variants` varies.
SLICED = ("ep", "hydra", "eplb", "tp", "fsedp-paired")


def slice_variants(trials: Sequence[Trial], target: Target, routing: RoutingTrace) -> list[str]:
    """More candidates: each lowered :data:`SLICED` strategy with its default cut (no option but
    a calibration) at two other slice counts, the cheapest compute above its count ``c`` (up
    to ``2c``) and below it (down to ``c/2``), when they cost less than ``c``.

    The lowering's count is the fewest slices that fit SRAM or the cost model's fastest estimate
    (:mod:`moec.compiler.lower.slicing`); a count forced by SRAM can cut the FFN into widths
    that leave MAC-array folds partly empty (Phi-3.5-MoE, 256 tokens on fsedp-2x2: TP's 80
    slices of 80 columns fill 3 folds of 64 with 160 gate/up columns, and 3 folds of 32 rows
    with 80 down-projection rows). Compute per count is the first layer's every slice
    (:func:`~moec.ir.cost.slice_compute_time`, even widths as the lowering cuts them) for the
    routing's mean tokens per activated expert; whether a count fits and is faster is for the
    lowering and the interpreter to say, like any candidate's."""
    out: list[str] = []
    have = {t.strategy for t in trials}
    for t in trials:
        name, opts = parse_strategy(t.strategy)
        if name not in SLICED or set(opts) - {"calibration"} or t.program is None:
            continue
        m = t.program.layers[0]
        layout = t.program.layout(m.name)
        if layout is None:
            continue
        for best in cheapest_counts(target, m, routing, layout.count):
            spec = spell(name, {**opts, "slices": str(best)})
            if spec not in have:
                have.add(spec)
                out.append(spec)
    return out


def cheapest_counts(
    target: Target, m: MoEDecl, routing: RoutingTrace, c: int, multiple: int = 1
) -> list[int]:  # fmt: skip
    """The slice counts of layer ``m`` whose cut costs the least compute below ``c`` (down to
    ``c/2``) and above it (up to ``2c``), each when it costs less than ``c``'s; only multiples
    of ``multiple`` (TP re-cuts to a multiple of the die count). Compute per count is every
    slice of one expert (:func:`~moec.ir.cost.slice_compute_time`, even widths as the lowering
    cuts them) for the routing's mean tokens per activated expert of the first layer."""
    ids = routing.layers[0].ids
    counts = np.bincount(ids[ids >= 0].ravel())
    n = max(1, math.ceil(float(counts[counts > 0].mean()))) if counts.size else 1
    step = max(1, multiple)
    cost = {
        k: _cut_compute(target, m, n, k)
        for k in range(max(1, c // 2), 2 * c + 1)
        if k % step == 0 or k == c
    }
    sides = (
        [k for k in cost if k < c],
        [k for k in cost if c < k <= min(2 * c, m.ffn)],
    )
    out = []
    for side in sides:
        best = min(side, key=lambda k: (cost[k], k), default=None)
        if best is not None and cost[best] < cost[c]:
            out.append(best)
    return out


def _cut_compute(target: Target, m: MoEDecl, tokens: int, count: int) -> float:
    """Seconds of compute of one expert of ``m`` cut evenly into ``count`` slices (the lowering's
    even widths), each slice for ``tokens`` tokens."""
    base, extra = divmod(m.ffn, count)
    widths = [(count - extra, base), (extra, base + 1)]
    return sum(
        k * slice_compute_time(target, 0, tokens, m.hidden, w, m.gated, m.dtype)
        for k, w in widths
        if k and w
    )
