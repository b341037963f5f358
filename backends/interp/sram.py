"""SRAM over a timing run: slot holds and the activation buffers of each die's MoE layers.

:mod:`moec.ir.activations` states the model (sizes; ``docs/isa.md``, "SRAM: slots and
activations"); the timing builder records, per die and MoE layer, which ops read, receive,
accumulate and send which tokens (:class:`LayerActs`) and each slot's fill and free;
:func:`sram_peaks` turns those into allocation and release events at the ops' simulated times
and finds each die's peak (releases before allocations at equal times).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from moec.ir.activations import x_row_bytes, y_row_bytes
from moec.ir.stream.program import MoEDecl, TokenSet
from moec.ir.target import Target


@dataclass
class LayerActs:
    """What one die does with one MoE layer's activations (op ids and token sets)."""

    ops: list[int] = field(default_factory=list)
    #: x reads: gemm and send x
    x_uses: list[tuple[int, TokenSet]] = field(default_factory=list)
    #: x blocks received: (arrival op, tokens); ``recv_x_start``: (the link hold's op, tokens)
    recv_x: list[tuple[int, TokenSet]] = field(default_factory=list)
    recv_x_start: list[tuple[int, TokenSet]] = field(default_factory=list)
    accums: list[tuple[int, TokenSet]] = field(default_factory=list)
    #: y blocks received: (the link hold's op, arrival op, tokens, bytes)
    recv_y: list[tuple[int, int, TokenSet, int]] = field(default_factory=list)
    send_y: list[tuple[int, TokenSet]] = field(default_factory=list)
    #: slices in flight: (gemm op, accum op, bytes of h)
    h: list[tuple[int, int, int]] = field(default_factory=list)


def _ranges(sets: list[TokenSet]) -> tuple[np.ndarray, np.ndarray]:
    """Token indices covered by ``sets`` (one entry per set and token) and, per entry, the
    position of its set in ``sets``: the ranges expanded in one vectorized step (the range
    bounds are read in C, through ``chain``: a set may hold hundreds of ranges)."""
    counts = np.fromiter((len(ts.ranges) for ts in sets), dtype=np.int64, count=len(sets))
    total = int(counts.sum())
    if not total:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    bounds = np.fromiter(
        chain.from_iterable(chain.from_iterable(ts.ranges for ts in sets)),
        dtype=np.int64, count=2 * total,
    ).reshape(total, 2)  # fmt: skip
    firsts = bounds[:, 0]
    length = bounds[:, 1] - firsts + 1
    owner = np.repeat(np.arange(len(sets), dtype=np.int64), counts)
    offset = np.cumsum(length) - length  # where each range starts in the flat index
    idx = np.arange(int(length.sum()), dtype=np.int64) + np.repeat(firsts - offset, length)
    return idx, np.repeat(owner, length)


def _mask(sets: list[TokenSet], n: int) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    m[_ranges(list(dict.fromkeys(sets)))[0]] = True
    return m


def _first_last(
    items: list[tuple[int, TokenSet]], times: list[float], n: int, first: bool
) -> np.ndarray:  # fmt: skip
    """Per token, the earliest (``first``) or latest ``times[op]`` of the items covering it.

    Many ops share one token set (every slice of an expert reads the same tokens), so each
    distinct set's earliest or latest time is found first, in Python, and the sets are then
    spread over the tokens in one ``np.minimum.at`` / ``np.maximum.at``: min and max are exact,
    so the result is the same as per item."""
    best: dict[TokenSet, float] = {}
    for op, ts in items:
        t = times[op]
        old = best.get(ts)
        if old is None or (t < old if first else t > old):
            best[ts] = t
    out = np.full(n, np.inf if first else -np.inf)
    idx, owner = _ranges(list(best))
    vals = np.asarray(list(best.values()), dtype=np.float64)[owner]
    (np.minimum if first else np.maximum).at(out, idx, vals)
    return out


def _entries(
    items: list[tuple[int, TokenSet]], pos: dict[int, int], times: list[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """One row per (item, token): the token, the item's program position on the die, its
    ``times[op]``, and the item's index."""
    idx, owner = _ranges([ts for _, ts in items])
    p = np.fromiter((pos[op] for op, _ in items), dtype=np.int64, count=len(items))
    t = np.fromiter((times[op] for op, _ in items), dtype=np.float64, count=len(items))
    return idx, p[owner], t[owner], owner


def _x_per_reception(
    acts: LayerActs, pos: dict[int, int], start: list[float], end: list[float], xb: int
) -> tuple[list[float], list[int]]:  # fmt: skip
    """Received inputs when a token is received more than once (chunked dispatch): each
    reception holds the row from its link hold's start to the later of its arrival and the end
    of the last use before the token's next reception in program order."""
    r_tok, r_pos, r_arr, r_item = _entries(acts.recv_x, pos, end)
    holds = np.fromiter((start[h] for h, _ in acts.recv_x_start), dtype=np.float64)
    r_open = holds[r_item]
    u_tok, u_pos, u_end, _ = _entries(acts.x_uses, pos, end)
    nr = r_tok.size
    tok = np.concatenate([r_tok, u_tok])
    order = np.lexsort((np.concatenate([r_pos, u_pos]), tok))
    at = np.arange(order.size)
    last = np.maximum.accumulate(np.where(order < nr, at, -1))  # latest reception at or before
    is_use = order >= nr
    prev, use = last[is_use], order[is_use] - nr
    ok = prev >= 0
    owner, use = order[prev[ok]], use[ok]
    ok = r_tok[owner] == u_tok[use]
    close = r_arr.copy()
    np.maximum.at(close, owner[ok], u_end[use[ok]])
    return r_open.tolist() + close.tolist(), [xb] * nr + [-xb] * nr


def _y_per_send(
    acts: LayerActs, pos: dict[int, int], start: list[float], end: list[float],
    remote: np.ndarray, hi: float, yb: int,
) -> tuple[list[float], list[int]]:  # fmt: skip
    """Other dies' partial outputs when a token's are sent more than once (chunked dispatch):
    each ``send y`` ends the row opened by the earliest write (an ``accum``'s start, a ``recv
    y``'s arrival) since the token's previous send in program order; writes never sent are
    held to the end of the layer (``hi``). Only ``remote`` tokens (not the die's own)."""
    writes = [(acts.accums, start), ([(op, ts) for _, op, ts, _ in acts.recv_y], end)]
    parts = [_entries(items, pos, t) for items, t in writes if items]
    o_tok = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    o_pos = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
    o_t = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0)
    c_tok, c_pos, c_end, _ = _entries(acts.send_y, pos, end)
    keep = remote[o_tok]
    o_tok, o_pos, o_t = o_tok[keep], o_pos[keep], o_t[keep]
    keep = remote[c_tok]
    c_tok, c_pos, c_end = c_tok[keep], c_pos[keep], c_end[keep]
    nc = c_tok.size
    tok = np.concatenate([c_tok, o_tok])
    order = np.lexsort((np.concatenate([c_pos, o_pos]), tok))
    at = np.arange(order.size)
    big = order.size
    nxt = np.minimum.accumulate(np.where(order < nc, at, big)[::-1])[::-1]  # next send at/after
    is_w = order >= nc
    after, w = nxt[is_w], order[is_w] - nc
    sent = after < big
    owner = order[after[sent]]
    ws = w[sent]
    same = c_tok[owner] == o_tok[ws]
    opened = np.full(nc, np.inf)
    np.minimum.at(opened, owner[same], o_t[ws[same]])
    live = np.isfinite(opened)
    f, e = opened[live], np.maximum(c_end[live], opened[live])
    unsent = np.ones(w.size, dtype=bool)
    unsent[np.nonzero(sent)[0][same]] = False
    # writes after a token's last send (none in a well-formed program) are held to the end
    left: dict[int, float] = {}
    for tk, tw in zip(o_tok[w[unsent]].tolist(), o_t[w[unsent]].tolist(), strict=True):
        left[tk] = min(tw, left.get(tk, np.inf))
    k = f.size + len(left)
    times = f.tolist() + list(left.values()) + e.tolist() + [hi] * len(left)
    return times, [yb] * k + [-yb] * k


def _activation_events(
    acts: LayerActs, tokens: int, hidden: int, dtype: str, start: list[float],
    end: list[float], span: tuple[float, float],
) -> tuple[list[float], list[int]]:  # fmt: skip
    """Allocation (+bytes) and release (-bytes) events of one die's activations of one layer
    (the rules of :mod:`moec.ir.activations`); ``span``: the earliest start and latest end of
    ``acts.ops``."""
    times: list[float] = []
    deltas: list[int] = []
    if not acts.ops:
        return times, deltas
    lo, hi = span
    xb, yb = x_row_bytes(hidden, dtype), y_row_bytes(hidden)
    n = tokens
    received = _mask([ts for _, ts in acts.recv_x], n)
    home = _mask([ts for _, ts in acts.x_uses], n) & ~received
    if acts.recv_y:
        sent_y = _mask([ts for _, ts in acts.send_y], n)
        home |= _mask([ts for _, _, ts, _ in acts.recv_y], n) & ~sent_y & ~received
    k = int(home.sum())
    if k:
        times += [lo, hi]
        deltas += [k * (xb + yb), -k * (xb + yb)]
    rx = _ranges([ts for _, ts in acts.recv_x])[0] if acts.recv_x else None
    sy = _ranges([ts for _, ts in acts.send_y])[0] if acts.send_y else None
    again_x = rx is not None and rx.size > np.unique(rx).size
    again_y = sy is not None and sy.size > np.unique(sy).size
    if again_x or again_y:  # chunked dispatch: a token's rows come and go more than once
        pos = {op: i for i, op in enumerate(acts.ops)}
    if again_x:
        t, d = _x_per_reception(acts, pos, start, end, xb)
        times += t
        deltas += d
    elif acts.recv_x:  # other dies' inputs: first recv to last use
        first = _first_last(acts.recv_x_start, start, n, True)
        last = _first_last(acts.x_uses, end, n, False)
        arrived = _first_last(acts.recv_x, end, n, True)
        idx = np.nonzero(received)[0]
        f, last_use = first[idx], np.maximum(last[idx], arrived[idx])
        times += f.tolist() + last_use.tolist()
        deltas += [xb] * idx.size + [-xb] * idx.size
    if again_y:
        t, d = _y_per_send(acts, pos, start, end, ~home, hi, yb)
        times += t
        deltas += d
    elif acts.recv_x or acts.recv_y:  # other dies' partial outputs: first write to last send
        first = np.minimum(
            _first_last(acts.accums, start, n, True),
            _first_last([(op, ts) for _, op, ts, _ in acts.recv_y], end, n, True),
        )
        last = _first_last(acts.send_y, end, n, False)
        idx = np.nonzero(~home & np.isfinite(first))[0]
        f = first[idx]
        release = np.where(np.isfinite(last[idx]), np.maximum(last[idx], f), hi)
        times += f.tolist() + release.tolist()
        deltas += [yb] * idx.size + [-yb] * idx.size
    for hold, op, _, nbytes in acts.recv_y:  # landing buffer while the block crosses the link
        times += [start[hold], end[op]]
        deltas += [nbytes, -nbytes]
    for g, a, nbytes in acts.h:
        times += [start[g], end[a]]
        deltas += [nbytes, -nbytes]
    return times, deltas


def sram_peaks(
    num_dies: int,
    pools: dict[int, int],
    fills: Sequence[tuple[int, int, list[int]]],
    acts: dict[tuple[int, int], LayerActs],
    layers: Sequence[MoEDecl],
    start: list[float],
    end: list[float],
    makespan: float,
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Per die: peak SRAM (slots + activations), its slot and activation parts at the peak,
    and the peak of slots alone.

    ``pools``: slot bytes per die; ``fills``: ``(die, fill op, [fill op, free op])`` per slot
    fill (no free op: held to the end); ``acts``: per (die, layer index) what it did.
    """
    D = num_dies
    start_a, end_a = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    times: dict[int, list[np.ndarray]] = defaultdict(list)
    slot_d: dict[int, list[np.ndarray]] = defaultdict(list)
    act_d: dict[int, list[np.ndarray]] = defaultdict(list)
    if fills:
        # each fill is two events, (fill start, +size) and (free end or makespan, -size), in
        # fills order within each die (the order ties are broken in)
        f_die = np.fromiter((f[0] for f in fills), dtype=np.int64, count=len(fills))
        f_op = np.fromiter((f[1] for f in fills), dtype=np.int64, count=len(fills))
        f_free = np.fromiter(
            (rec[1] if len(rec) > 1 else -1 for _, _, rec in fills), dtype=np.int64,
            count=len(fills),
        )  # fmt: skip
        f_t = np.empty((len(fills), 2), dtype=np.float64)
        f_t[:, 0] = start_a[f_op]
        f_t[:, 1] = np.where(f_free >= 0, end_a[f_free], makespan)
        sizes = np.asarray([pools.get(int(d), 0) for d in f_die], dtype=np.int64)
        f_s = np.stack([sizes, -sizes], axis=1)
        order = np.argsort(f_die, kind="stable")
        dies, first = np.unique(f_die[order], return_index=True)
        for die, rows in zip(dies.tolist(), np.split(order, first[1:]), strict=True):
            times[die].append(f_t[rows].ravel())
            slot_d[die].append(f_s[rows].ravel())
            act_d[die].append(np.zeros(2 * rows.size, dtype=np.int64))
    for (die, k), la in sorted(acts.items()):
        m = layers[k]
        span = (0.0, 0.0)
        if la.ops:
            ops = np.asarray(la.ops, dtype=np.int64)
            span = (float(start_a[ops].min()), float(end_a[ops].max()))
        ts, ds = _activation_events(la, m.tokens, m.hidden, m.dtype, start, end, span)
        times[die].append(np.asarray(ts, dtype=np.float64))
        act_d[die].append(np.asarray(ds, dtype=np.int64))
        slot_d[die].append(np.zeros(len(ds), dtype=np.int64))
    peak, slots, act, slot_peak = [0] * D, [0] * D, [0] * D, [0] * D
    for die, tv in times.items():
        s_arr = np.concatenate(slot_d[die])
        a_arr = np.concatenate(act_d[die])
        order = np.lexsort((s_arr + a_arr, np.concatenate(tv)))  # releases first at equal times
        cs, ca = np.cumsum(s_arr[order]), np.cumsum(a_arr[order])
        total = cs + ca
        j = int(np.argmax(total))
        peak[die], slots[die], act[die] = int(total[j]), int(cs[j]), int(ca[j])
        slot_peak[die] = int(cs.max())
    return peak, slots, act, slot_peak


def sram_overflow(
    target: Target,
    peak: Sequence[int],
    slots: Sequence[int],
    acts: Sequence[int],
    part: str = "",
) -> str | None:
    """Why a run did not fit SRAM (the die furthest past it: its peak, split into slots and
    activations at that moment), or None when every die's peak fits. A run that does not fit
    reports no latency unless the user allows the overflow (``--allow-overflow``). ``part``
    names the layer the peak is in, when the run knows it (a layer-by-layer run)."""
    over = [(pk - target.die(d).sram_bytes, d) for d, pk in enumerate(peak)]
    worst, d = max(over, key=lambda x: (x[0], -x[1]), default=(0, 0))
    if worst <= 0:
        return None
    at = f" in {part}" if part else ""
    return (
        f"does not fit SRAM: die {d} holds {peak[d]} bytes at its peak{at} ({slots[d]} of slots, "
        f"{acts[d]} of activations), target {target.name} has {target.die(d).sram_bytes} bytes "
        "per die (--allow-overflow runs it anyway)"
    )
