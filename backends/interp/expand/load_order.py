"""The order in which each die of an EP-style layer streams its experts: against channel demand.

EP, Hydra and EPLB give every die a set of whole experts (:data:`.ep.Work` items). Which one a die
loads first does not change the bytes, but it decides when each DRAM channel is busy. Taking a
die's experts in ascending id can leave a channel idle for most of the layer and then hand it
several dies' experts at once: with Hydra's placement of Yuan2.0-M32 on the 2x2 package, die 0
holds one hot expert on channel 0 and dies 1-3 each one cold expert there with the highest id,
so channel 0 idles after the hot expert and receives three experts of demand at the end.

:func:`order_work` orders each die's items by a list schedule over an estimate of per-channel
demand over time (the same estimate for every die, so the order is one plan, not die-local):
the die that frees first (ties: lower id) takes next, among its remaining experts, the one whose
channel frees first; ties go to the channel with the most remaining demand (the one that would
otherwise end the layer), then to the lower expert id. Times come from the cost model
(:func:`~moec.ir.cost.dram_occupancy` per micro-slice, :func:`~moec.ir.cost.compute_time` for
the expert's FLOPs on its tokens); a die's loads overlap its compute (its slots double-buffer),
so an expert holds its die for the longer of the two. The shared experts' slices, which every
die streams first, are placed on the same timeline before the routed experts.

    die 1: e1 ch1, e4 ch1, e20 ch1, e25 ch1, e26 ch0       (ascending id: ch0 last)
      ==>  e1 ch1, e26 ch0, e4 ch1, e20 ch1, e25 ch1       (ch0 used while die 0 is done)
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import numpy as np

from moec.backends.interp.expand import ExpandContext
from moec.ir.cost import compute_time, dram_occupancy

#: One unit of routed work: (die, expert, DRAM channel, its tokens, sorted).
Work = tuple[int, int, int, np.ndarray]
#: A die's share of a split expert: (die, expert, DRAM channel, its tokens, its micro-slices).
Piece = tuple[int, int, int, np.ndarray, tuple[int, ...]]


def _expert_load_time(
    ctx: ExpandContext, expert: int, channel: int, memo: dict[tuple[int, tuple[int, ...]], float]
) -> float:
    """Seconds ``channel`` is held by ``expert``'s micro-slices, memoized per (channel, the
    slices' bytes): experts of one precision share theirs, the same floats summed in the same
    order."""
    key = (channel, ctx.expert_slice_bytes(expert))
    hit = memo.get(key)
    if hit is None:
        total: float = 0  # as sum() starts
        occ: dict[int, float] = {}
        for nbytes in key[1]:
            o = occ.get(nbytes)
            if o is None:
                o = occ[nbytes] = dram_occupancy(ctx.target, channel, nbytes)
            total += o
        hit = memo[key] = total
    return hit


def _expert_compute_time(ctx: ExpandContext, die: int, expert: int, tokens: int) -> float:
    m = ctx.layer
    mats = 3.0 if m.gated else 2.0  # gate, up, down; up and down without a gate
    flops = 2.0 * mats * tokens * m.hidden * m.ffn
    return compute_time(ctx.target, die, flops, ctx.precision(expert))


def _timeline(
    ctx: ExpandContext,
    work: Sequence[Work],
    shared: tuple[list[int], list[int]] | None,
    pieces: Sequence[Piece] = (),
) -> tuple[dict[int, float], dict[int, float], list[float], list[float]]:
    """Channel and die free times after the shared slices and the split experts' pieces (which
    every die streams first, in that order), and each item's load and busy time."""
    t = ctx.target
    chan_free = {c.id: 0.0 for c in t.channels}
    die_free = {d: 0.0 for d in range(t.num_dies)}
    if shared is not None:
        for j, (d, ch) in enumerate(zip(*shared, strict=True)):
            start = max(die_free[d], chan_free[ch])
            chan_free[ch] = die_free[d] = start + dram_occupancy(t, ch, ctx.slice_bytes(None, j))
    for d, e, ch, toks, js in pieces:
        load_s = sum(dram_occupancy(t, ch, ctx.slice_bytes(e, j)) for j in js)
        share = _expert_compute_time(ctx, d, e, int(toks.size)) * len(js) / ctx.layout.count
        start = max(die_free[d], chan_free[ch])
        chan_free[ch] = start + load_s
        die_free[d] = start + max(load_s, share)
    memo: dict[tuple[int, tuple[int, ...]], float] = {}
    per_expert: dict[tuple[int, int], float] = {}  # a replicated expert's items share theirs
    load = []
    for _, e, ch, _ in work:
        s = per_expert.get((e, ch))
        if s is None:
            s = per_expert[(e, ch)] = _expert_load_time(ctx, e, ch, memo)
        load.append(s)
    busy = [
        max(load[i], _expert_compute_time(ctx, d, e, int(toks.size)))
        for i, (d, e, _, toks) in enumerate(work)
    ]
    return chan_free, die_free, load, busy


def _list_schedule(
    work: Sequence[Work],
    timeline: tuple[dict[int, float], dict[int, float], list[float], list[float]],
    greedy: bool,
) -> tuple[float, list[Work]]:
    """The estimated makespan and each die's order, from :func:`_timeline`'s estimate (not
    changed): ``greedy`` picks against channel demand, else each die keeps ``work``'s order.

    The greedy pick is the first of the die's remaining items with the least (channel free
    time, minus the channel's remaining demand, expert id): the first two depend on the channel
    alone, so each channel's candidate is its least (expert id, position), kept in a heap per
    (die, channel), and the pick is the least of those candidates. The die that frees first
    (ties: lower id) comes from a heap of (free time, die)."""
    chan_free, die_free = dict(timeline[0]), dict(timeline[1])
    load, busy = timeline[2], timeline[3]
    remaining = {c: 0.0 for c in chan_free}
    pending: dict[int, list[int]] = {}
    by_channel: dict[int, dict[int, list[tuple[int, int]]]] = {}
    for i, (d, e, ch, _) in enumerate(work):
        remaining[ch] += load[i]
        pending.setdefault(d, []).append(i)
        by_channel.setdefault(d, {}).setdefault(ch, []).append((e, i))
    for heaps in by_channel.values():
        for h in heaps.values():
            heapq.heapify(h)
    left = {d: len(items) for d, items in pending.items()}
    out: dict[int, list[Work]] = {d: [] for d in pending}
    free = [(die_free[d], d) for d in pending]  # only the die that takes an item moves
    heapq.heapify(free)
    while free:
        now, d = heapq.heappop(free)
        if greedy:
            heaps = by_channel[d]
            ch = min(heaps, key=lambda c: (max(now, chan_free[c]), -remaining[c], heaps[c][0]))
            i = heapq.heappop(heaps[ch])[1]
            if not heaps[ch]:
                del heaps[ch]
        else:
            i = pending[d][len(out[d])]
            ch = work[i][2]
        start = max(now, chan_free[ch])
        chan_free[ch] = start + load[i]
        die_free[d] = start + busy[i]
        remaining[ch] -= load[i]
        out[d].append(work[i])
        left[d] -= 1
        if left[d]:
            heapq.heappush(free, (die_free[d], d))
    span = max([*chan_free.values(), *die_free.values()], default=0.0)
    return span, [w for d in sorted(out) for w in out[d]]


def order_work(
    ctx: ExpandContext,
    work: Sequence[Work],
    shared: tuple[list[int], list[int]] | None = None,
    pieces: Sequence[Piece] = (),
) -> list[Work]:
    """``work`` with each die's items reordered against channel demand (module docstring), or
    in the order given when the estimate says that finishes no later; ``shared``: the (die,
    channel) of each split shared micro-slice, streamed first, then the split experts'
    ``pieces``."""
    timeline = _timeline(ctx, work, shared, pieces)
    given, _ = _list_schedule(work, timeline, False)
    span, ordered = _list_schedule(work, timeline, True)
    return ordered if span < given else list(work)
