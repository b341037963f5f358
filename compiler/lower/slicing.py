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
from typing import Any

import numpy as np

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


def _expert_cost(
    target: Target, c: int, n: int, cols: int, g: bool, hidden: int, precision: str,
    col_bytes: float,
) -> tuple[float, float]:  # fmt: skip
    """(load, compute) of one expert of ``cols`` columns for ``n`` tokens in ``c`` slices:
    ``c`` slice loads (setup included) from the first channel, and ``c`` times a slice's
    gate/up GEMM, ``act`` and ``accum``."""
    w = max(1, -(-cols // c))
    one = (
        gemm_time(target, 0, n, hidden, w * (2 if g else 1), precision)
        + act_time(target, 0, n, w, precision, gated=g)
        + accum_time(target, 0, n, w, hidden, precision)
    )
    return c * _occupancy(target, w * col_bytes), c * one


def _occupancy(target: Target, nbytes: float) -> float:
    ch = target.channels
    return dram_occupancy(target, ch[0], nbytes) if ch else 0.0


#: per target (by identity, kept alive beside its memo so its id is not reused; equal targets
#: share one memo): per (count, columns, gated, hidden, precision, bytes per column)
#: :func:`_expert_cost` by token count (row n; NaN: not costed yet), and
#: :func:`preferred_slices` by its arguments. Layers repeat token counts, and each lowering asks
#: twice per layer (the reserve, then the cut).
_MEMOS: dict[int, tuple[Target, dict[tuple[object, ...], Any]]] = {}
_MEMO_TARGETS = 8
_MEMO_ENTRIES = 4096


def _memo(target: Target) -> dict[tuple[object, ...], Any]:
    """``target``'s memo: by identity, else that of an equal target (each lowering loads its
    target afresh, and a slice choice lowers a program several times)."""
    hit = _MEMOS.get(id(target))
    if hit is not None and hit[0] is target:
        return hit[1]
    memo = next((m for t, m in _MEMOS.values() if t == target), None)
    if len(_MEMOS) >= _MEMO_TARGETS:  # a sweep over many targets (or loads of one) starts afresh
        _MEMOS.clear()
    _MEMOS[id(target)] = (target, memo if memo is not None else {})
    return _MEMOS[id(target)][1]


def _expert_costs(
    target: Target, c: int, ns: np.ndarray, cols: int, g: bool, hidden: int, precision: str,
    col_bytes: float,
) -> np.ndarray:  # fmt: skip
    """:func:`_expert_cost` of each token count in ``ns`` (non-negative), rows of (load,
    compute); each distinct count is costed once per target and shape."""
    tables = _memo(target)
    key = ("costs", c, cols, g, hidden, precision, col_bytes)
    tab = tables.get(key)
    top = int(ns.max(initial=0))
    if tab is None or tab.shape[0] <= top:
        grown = np.full((max(top + 1, 2 * (tab.shape[0] if tab is not None else 0)), 2), np.nan)
        if tab is not None:
            grown[: tab.shape[0]] = tab
        tab = tables[key] = grown
    for n in np.unique(ns[np.isnan(tab[ns, 0])]).tolist():
        tab[n] = _expert_cost(target, c, n, cols, g, hidden, precision, col_bytes)
    return tab[ns]


def slice_span(
    target: Target, c: int, *, hidden: int, ffn: int, gated: bool, precision: str,
    col_bytes: float, expert_tokens: Sequence[int], shared: tuple[int, int, float] | None = None,
) -> float:  # fmt: skip
    """The estimated span (seconds) of a layer cut into ``c`` slices (module docstring);
    ``shared``: (tokens, FFN columns, bytes per column) of the shared experts, split over the
    dies (each die its share of the columns for every token). The reference
    :func:`slice_spans` is tested against."""
    D = max(target.num_dies, 1)
    channels = target.channels
    memo: dict[tuple[int, int, bool], tuple[float, float]] = {}

    def work(n: int, cols: int, g: bool) -> tuple[float, float]:
        """(load, compute) of one expert (memoized: experts repeat token counts)."""
        key = (n, cols, g)
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = _expert_cost(target, c, n, cols, g, hidden, precision, col_bytes)
        return hit

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
        load = c * _occupancy(target, w * s_col)
        _, comp = work(tokens, per_die, True)
        channel += D * load
        die = [t + comp for t in die]
    return max(channel / max(len(channels), 1), max(die)) + fill


def slice_spans(
    target: Target, counts: Sequence[int], *, hidden: int, ffn: int, gated: bool,
    precision: str, col_bytes: float, expert_tokens: Sequence[int],
    shared: tuple[int, int, float] | None = None,
) -> list[float]:  # fmt: skip
    """:func:`slice_span` of every count in ``counts``, the same floats, in a few array
    operations: each distinct token count is costed once (:func:`_expert_costs`), and the sums
    over the experts run in expert order (``np.cumsum`` adds left to right, as the loop does;
    an expert with no tokens adds 0.0, which leaves a sum of non-negative terms unchanged)."""
    D = max(target.num_dies, 1)
    C = len(target.channels)
    turn = max(1, -(-D // max(C, 1)))
    tokens = np.maximum(np.asarray(expert_tokens, dtype=np.int64), 0)
    E = tokens.size
    pad = -(-max(E, 1) // D) * D  # experts padded to whole rows of D dies (die e % D: column)
    per = np.zeros((len(counts), pad, 2))
    for r, c in enumerate(counts):
        per[r, :E] = _expert_costs(target, c, tokens, ffn, gated, hidden, precision, col_bytes)
    per[:, :E][:, tokens == 0] = 0.0  # an expert with no tokens loads and computes nothing
    load, comp = per[:, :, 0], per[:, :, 1]
    channel = np.cumsum(load, axis=1)[:, -1]
    die = np.cumsum(comp.reshape(len(counts), pad // D, D), axis=1)[:, -1, :]
    fill = np.maximum(
        ((turn * load + comp) / np.asarray(counts, dtype=np.float64)[:, None]).max(axis=1), 0.0
    )
    out: list[float] = []
    for r, c in enumerate(counts):
        ch, dies = float(channel[r]), die[r]
        if shared is not None:
            s_tokens, cols, s_col = shared
            per_die = -(-cols // D)
            w = max(1, -(-per_die // c))
            ch += D * (c * _occupancy(target, w * s_col))
            s = _expert_costs(
                target, c, np.array([s_tokens]), per_die, True, hidden, precision, col_bytes
            )
            dies = dies + s[0, 1]
        out.append(max(ch / max(C, 1), float(dies.max())) + float(fill[r]))
    return out


def preferred_slices(
    target: Target, *, hidden: int, ffn: int, gated: bool, precision: str, col_bytes: float,
    expert_tokens: Sequence[int], shared: tuple[int, int, float] | None = None,
) -> int:  # fmt: skip
    """The count in ``1 .. MAX_SLICES`` with the smallest :func:`slice_span` (ties: fewer
    slices), slices no narrower than the MAC array's columns (a narrower slice leaves columns
    idle in every fold). Memoized per target."""
    memo = _memo(target)
    key = ("count", hidden, ffn, gated, precision, col_bytes, tuple(expert_tokens), shared)
    hit = memo.get(key)
    if hit is None:
        if len(memo) >= _MEMO_ENTRIES:  # many routings on one target (a search): start afresh
            memo.clear()
        hit = memo[key] = _preferred_slices(
            target, hidden=hidden, ffn=ffn, gated=gated, precision=precision,
            col_bytes=col_bytes, expert_tokens=expert_tokens, shared=shared,
        )  # fmt: skip
    return int(hit)


def _preferred_slices(
    target: Target, *, hidden: int, ffn: int, gated: bool, precision: str, col_bytes: float,
    expert_tokens: Sequence[int], shared: tuple[int, int, float] | None,
) -> int:  # fmt: skip
    finest = max(1, min(MAX_SLICES, ffn // target.die(0).array.cols))
    counts = range(1, finest + 1)
    spans = slice_spans(
        target, counts, hidden=hidden, ffn=ffn, gated=gated, precision=precision,
        col_bytes=col_bytes, expert_tokens=expert_tokens, shared=shared,
    )  # fmt: skip
    best, best_span = 1, math.inf
    for c, span in zip(counts, spans, strict=True):
        if span < best_span * (1.0 - 1e-9):
            best, best_span = c, span
    return best
