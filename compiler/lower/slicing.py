"""The micro-slice count of a whole-expert strategy (EP, Hydra, EPLB, TP), from the cost model.

The fewest slices that fit the SRAM slots were the rule, so more SRAM meant coarser slices, and
coarser slices are not always faster: a die cannot start computing an expert before its first
slice has arrived, the last slice's compute trails the last load, and a channel shared by several
dies serves them in whole-slice turns (Qwen3-30B-A3B, 1024 tokens on fsedp-4x4: EP 25.52 ms at
16 MiB, 26.07 ms at 64 MiB). Finer slices are not free either: each one adds its down
projection's partial sums into the outputs (``tokens x hidden`` vector work per slice), a DMA
setup, and an instruction issue (DeepSeek-MoE-16B, 1024 tokens on fsedp-2x2: 2 slices 18.9 ms,
32 slices 21.8 ms).

:func:`preferred_slices` estimates a layer's span for every count ``c`` from 1 to
:data:`MAX_SLICES` (slices at least as wide as the MAC array has columns) and returns the
fastest (ties: fewer slices):

    span(c) = max(channel(c), die(c)) + fill(c)

``channel(c)``: every activated expert's ``c`` slice loads (:func:`~moec.ir.cost.dram_occupancy`,
setup included) spread evenly over the channels; ``die(c)``: the busiest die's compute, the
larger of the hottest expert's and an even share of all of them, each expert ``c`` times
(gate/up GEMM, ``act``, ``accum``) at its token count; ``fill(c)``: the slice loads before a
die's first compute (one per die sharing the channel: a channel serves them in slice-sized
turns) and one slice of the hottest expert's compute after the last load. Token counts
come from the lowering's routing trace when it has one, else from uniform routing.

The count does not depend on SRAM: the lowering takes the larger of it and the fewest slices
that fit (:mod:`.slots`), so once the preferred count fits, more SRAM changes nothing, and below
that SRAM forces finer slices. That is what makes "more SRAM never slows a schedule" hold by
construction rather than by luck.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from moec.ir.cost import accum_time, act_time, dram_occupancy, gemm_time
from moec.ir.target import Target

#: The finest cut considered: beyond it per-slice costs dominate on every target modelled.
MAX_SLICES = 32


def expected_expert_tokens(tokens: int, top_k: int, experts: int) -> list[int]:
    """Tokens of each activated expert under uniform routing (``tokens x top_k`` pairs spread
    over the experts they are expected to touch)."""
    pairs = tokens * top_k
    active = max(1, round(experts * (1.0 - (1.0 - 1.0 / experts) ** pairs)))
    return [max(1, math.ceil(pairs / active))] * min(active, experts)


def slice_span(
    target: Target, c: int, *, hidden: int, ffn: int, gated: bool, precision: str,
    col_bytes: float, expert_tokens: Sequence[int], shared: tuple[int, int, float] | None = None,
) -> float:  # fmt: skip
    """The estimated span (seconds) of a layer cut into ``c`` slices (module docstring);
    ``shared``: (tokens, FFN columns, bytes per column) of the shared experts, split over the
    dies (each die its share of the columns for every token)."""
    D = max(target.num_dies, 1)
    channels = target.channels
    ch0 = channels[0] if channels else None

    def occ(nbytes: float) -> float:
        return dram_occupancy(target, ch0, nbytes) if ch0 is not None else 0.0

    memo: dict[tuple[int, int, bool], tuple[float, float]] = {}

    def work(n: int, cols: int, g: bool) -> tuple[float, float]:
        """(load, compute) of one expert of ``cols`` columns for ``n`` tokens in ``c`` slices
        (memoized: experts repeat token counts)."""
        key = (n, cols, g)
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = _work(n, cols, g)
        return hit

    def _work(n: int, cols: int, g: bool) -> tuple[float, float]:
        w = max(1, -(-cols // c))
        one = (
            gemm_time(target, 0, n, hidden, w * (2 if g else 1), precision)
            + act_time(target, 0, n, w, precision, gated=g)
            + accum_time(target, 0, n, w, hidden, precision)
        )
        return c * occ(w * col_bytes), c * one

    # a channel serves the dies that share it in slice-sized turns: the last of them waits that
    # many loads for its first slice
    turn = max(1, -(-D // max(len(channels), 1)))
    die = [0.0] * D
    channel = 0.0
    fill = 0.0
    for e, n in enumerate(expert_tokens):
        if n <= 0:
            continue
        load, comp = work(n, ffn, gated)
        channel += load
        die[e % D] += comp
        fill = max(fill, (turn * load + comp) / c)
    if shared is not None:
        tokens, cols, s_col = shared
        per_die = -(-cols // D)
        w = max(1, -(-per_die // c))
        load = c * occ(w * s_col)
        _, comp = work(tokens, per_die, True)
        channel += D * load
        die = [t + comp for t in die]
    return max(channel / max(len(channels), 1), max(die)) + fill


def preferred_slices(
    target: Target, *, hidden: int, ffn: int, gated: bool, precision: str, col_bytes: float,
    expert_tokens: Sequence[int], shared: tuple[int, int, float] | None = None,
) -> int:  # fmt: skip
    """The count in ``1 .. MAX_SLICES`` with the smallest :func:`slice_span` (ties: fewer
    slices), slices no narrower than the MAC array's columns (a narrower slice leaves columns
    idle in every fold)."""
    finest = max(1, min(MAX_SLICES, ffn // target.die(0).array.cols))
    best, best_span = 1, math.inf
    for c in range(1, finest + 1):
        span = slice_span(
            target, c, hidden=hidden, ffn=ffn, gated=gated, precision=precision,
            col_bytes=col_bytes, expert_tokens=expert_tokens, shared=shared,
        )  # fmt: skip
        if span < best_span * (1.0 - 1e-9):
            best, best_span = c, span
    return best
