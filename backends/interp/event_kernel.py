"""The compiled event loop's kernel (numba): :func:`.event_loop.loop_python`, over arrays.

Imported only by :mod:`.event_loop`, and only when numba is installed. Events are kept in a
binary heap keyed ``(time, priority * 2**40 + push order)``, each entry's time, key and op side by
side in one array (a sift step reads one place, not three arrays): push orders are distinct, so
the pop order is the reference's ``(time, priority, push order, op)`` order whatever the heap's
layout. Every float operation is the reference's, in its order.
"""

from __future__ import annotations

import numba
import numpy as np

#: push orders stay below this (an op is pushed once), so ``priority * _SEQ + order`` sorts as
#: ``(priority, order)``
_SEQ = 1 << 40


#: an entry's place in the heap's one array: time (read as float64 through a view), key, op
_T, _K, _OP, _W = 0, 1, 2, 3


@numba.njit(cache=True, inline="always")
def _push(hi, hf, size, t, k, op):  # type: ignore[no-untyped-def]
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        p = _W * parent
        pt, pk = hf[p + _T], hi[p + _K]
        if pt < t or (pt == t and pk < k):
            break
        q = _W * i
        hf[q + _T], hi[q + _K], hi[q + _OP] = pt, pk, hi[p + _OP]
        i = parent
    q = _W * i
    hf[q + _T], hi[q + _K], hi[q + _OP] = t, k, op
    return size + 1


@numba.njit(cache=True, inline="always")
def _pop(hi, hf, size):  # type: ignore[no-untyped-def]
    t0, op0 = hf[_T], hi[_OP]
    size -= 1
    q = _W * size
    t, k, op = hf[q + _T], hi[q + _K], hi[q + _OP]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size:
            a, b = _W * c, _W * (c + 1)
            ct, ck, dt, dk = hf[a + _T], hi[a + _K], hf[b + _T], hi[b + _K]
            if dt < ct or (dt == ct and dk < ck):
                c += 1
        a = _W * c
        ct, ck = hf[a + _T], hi[a + _K]
        if t < ct or (t == ct and k < ck):
            break
        q = _W * i
        hf[q + _T], hi[q + _K], hi[q + _OP] = ct, ck, hi[a + _OP]
        i = c
    if size > 0:
        q = _W * i
        hf[q + _T], hi[q + _K], hi[q + _OP] = t, k, op
    return t0, op0, size


@numba.njit(cache=True)
def loop(  # type: ignore[no-untyped-def]
    runs, src, dst, dur, res, prio, back, free_at, busy, clock, sig, w_ptr, w_count, w_op,
    watch, limit,
):  # fmt: skip
    """``(start, end, free_at, busy, stopped)``; the arguments as
    :func:`.event_loop.loop_compiled` packs them (``free_at`` and ``busy`` updated in place).
    ``runs``: the op graph's runs of chained ops, flat ``start, count`` (op ``start + j``
    releases op ``start + j + 1``, before its logged edges): counted per op, not sorted. The edge
    log ``src -> dst`` is sorted into CSR arrays first, each source's edges in log order (a
    counting sort: stable). ``stopped``: the loop stopped at the first watched op (``watch``)
    ending more than ``limit`` after the earliest start of those popped before it and itself,
    as :func:`.event_loop.loop_python` does."""
    n = dur.size
    succ_ptr = np.zeros(n + 1, np.int64)
    ndeps = np.zeros(n, np.int64)
    for k in range(src.size):
        succ_ptr[src[k] + 1] += 1
        ndeps[dst[k]] += 1
    for k in range(n):
        succ_ptr[k + 1] += succ_ptr[k]
    fill = succ_ptr[:-1].copy()
    succ_idx = np.empty(src.size, np.int64)
    for k in range(src.size):
        a = src[k]
        succ_idx[fill[a]] = dst[k]
        fill[a] += 1
    chained = np.zeros(n, np.int64)  # per op, its run edges to the next op (before its log's)
    for k in range(0, runs.size, 2):
        for x in range(runs[k], runs[k] + runs[k + 1]):
            chained[x] += 1
            ndeps[x + 1] += 1
    for k in range(w_op.size):  # a wait is released by its counter too
        ndeps[w_op[k]] += 1
    ready = np.zeros(n)
    start = np.zeros(n)
    end = np.full(n, -1.0)
    hi = np.empty(_W * n, np.int64)
    hf = hi.view(np.float64)
    size = 0
    seq = 0
    for op in range(n):
        if ndeps[op] == 0:
            size = _push(hi, hf, size, clock, prio[op] * _SEQ + seq, op)
            seq += 1
    counters = np.zeros(w_ptr.size - 1, np.int64)
    w_next = w_ptr[:-1].copy()
    earliest = np.inf  # the earliest start of the watched ops popped so far
    while size > 0:
        t, op, size = _pop(hi, hf, size)
        s = t - back[op]
        x = res[op]
        if x >= 0:
            if free_at[x] > s:
                s = free_at[x]
            e = s + dur[op]
            free_at[x] = e
            busy[x] += e - s
        else:
            e = s + dur[op]
        start[op] = s
        end[op] = e
        if watch[op]:
            if s < earliest:
                earliest = s
            if e - earliest > limit:
                return start, end, free_at, busy, True
        ev = sig[op]
        if ev >= 0:
            counters[ev] += 1
            c = counters[ev]
            j = w_next[ev]
            stop = w_ptr[ev + 1]
            while j < stop and w_count[j] < c:  # counts passed over: never released
                j += 1
            while j < stop and w_count[j] == c:
                w = w_op[j]
                if ready[w] < e:
                    ready[w] = e
                ndeps[w] -= 1
                if ndeps[w] == 0:
                    size = _push(hi, hf, size, ready[w] if ready[w] > t else t,
                                 prio[w] * _SEQ + seq, w)  # fmt: skip
                    seq += 1
                j += 1
            w_next[ev] = j
        first = succ_ptr[op]
        for j in range(first - chained[op], succ_ptr[op + 1]):  # the run edges, then the log's
            x = succ_idx[j] if j >= first else op + 1
            if ready[x] < e:
                ready[x] = e
            ndeps[x] -= 1
            if ndeps[x] == 0:
                size = _push(hi, hf, size, ready[x] if ready[x] > t else t,
                             prio[x] * _SEQ + seq, x)  # fmt: skip
                seq += 1
    return start, end, free_at, busy, False
