"""The compiled event loop's kernel (numba): :func:`.event_loop.loop_python`, over arrays.

Imported only by :mod:`.event_loop`, and only when numba is installed. Each op's fields (its
duration, back, ready time, resource, signal, successors' place, priority and unmet
dependencies) sit in one record of 64 bytes: the loop pops ops far apart in op order (a
DeepSeek-V3 layer's graph, 170k ops: 20k apart at the median), so a column per field cost a
cache miss per field, a record costs one. Events are kept in a
binary heap keyed ``(time, priority * 2**40 + push order)``, each entry's time, key and op side by
side in one array (a sift step reads one place, not three arrays): push orders are distinct, so
the pop order is the reference's ``(time, priority, push order, op)`` order whatever the heap's
layout. Every float operation is the reference's, in its order.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic

#: push orders stay below this (an op is pushed once), so ``priority * _SEQ + order`` sorts as
#: ``(priority, order)``
_SEQ = 1 << 40


#: an entry's place in the heap's one array: time (read as float64 through a view), key, op
_T, _K, _OP, _W = 0, 1, 2, 3


@intrinsic
def _prefetch(typingctx, array, index):  # type: ignore[no-untyped-def]
    """Start loading ``array[index]``'s cache line (LLVM's ``prefetch``: a read, kept close):
    nothing waits for it. The op at the heap's top after a pop is, most often, the next one
    popped: its record is on its way while this op's successors are released."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        kind = signature.args[0]
        data = context.make_array(kind)(context, builder, args[0])
        item = cgutils.get_item_pointer(
            context, builder, kind, data, [args[1]], wraparound=False, boundscheck=False
        )
        byte_ptr, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        fn = builder.module.declare_intrinsic(
            "llvm.prefetch", [byte_ptr], ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32])
        )
        # read (0), highest locality (3), data cache (1)
        builder.call(
            fn, [builder.bitcast(item, byte_ptr), *(ir.Constant(i32, v) for v in (0, 3, 1))]
        )
        return context.get_dummy_value()

    return numba.types.void(array, index), codegen


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


#: an op's record: its fields side by side in one row of ``_R`` int64 words (floats through a
#: view), so that popping an op or releasing it touches one cache line, not one per column (an
#: op graph's ops pop far apart in op order: a DeepSeek-V3 layer's, 20k ops apart at the
#: median); ``_READY`` becomes the op's start once it is popped, and its end is read back as
#: ``start + dur``, the addition the loop made
_DUR, _BACK, _READY, _RES, _SIG, _LO, _HI, _DEPS, _R = 0, 1, 2, 3, 4, 5, 6, 7, 8
#: ``_DEPS`` holds the op's priority times this plus its unmet dependencies
_PRIO = 1 << 32
_COUNT = _PRIO - 1


@numba.njit(cache=True)
def loop(  # type: ignore[no-untyped-def]
    runs, src, dst, dur, res, kind, priority, back_op, back, free_at, busy, clock, sig_op, sig,
    w_ptr, w_count, w_op, watch, limit,
):  # fmt: skip
    """``(start, end, free_at, busy, stopped)``; the arguments as
    :func:`.event_loop.loop_compiled` packs them (``free_at`` and ``busy`` updated in place):
    per op its duration, resource and kind (``priority[kind]`` its priority), ``back[k]`` for
    op ``back_op[k]`` (0 elsewhere), signal event ``sig[k]`` for op ``sig_op[k]``.
    ``runs``: the op graph's runs of chained ops, flat ``start, count`` (op ``start + j``
    releases op ``start + j + 1``, before its logged edges). The run edges and the edge log
    ``src -> dst`` are sorted into one CSR array first, each source's run edge then its logged
    edges in log order (a counting sort: stable). ``watch``: per op, whether it is watched, or
    empty (none is): ``stopped``, the loop stopped at the first watched op ending more than
    ``limit`` after the earliest start of those popped before it and itself, as
    :func:`.event_loop.loop_python` does."""
    n = dur.size
    rec = np.zeros(_R * n, np.int64)
    recf = rec.view(np.float64)
    for op in range(n):
        q = _R * op
        recf[q + _DUR] = dur[op]
        rec[q + _RES] = res[op]
        rec[q + _SIG] = -1
        rec[q + _DEPS] = priority[kind[op]] * _PRIO
    for k in range(back_op.size):
        recf[_R * back_op[k] + _BACK] = back[k]
    for k in range(sig_op.size):
        rec[_R * sig_op[k] + _SIG] = sig[k]
    for k in range(src.size):  # out-degrees (in _HI for now), in-degrees
        rec[_R * src[k] + _HI] += 1
        rec[_R * dst[k] + _DEPS] += 1
    for k in range(0, runs.size, 2):
        for x in range(runs[k], runs[k] + runs[k + 1]):
            rec[_R * x + _HI] += 1
            rec[_R * (x + 1) + _DEPS] += 1
    for k in range(w_op.size):  # a wait is released by its counter too
        rec[_R * w_op[k] + _DEPS] += 1
    at = 0
    for op in range(n):  # _LO the first successor's place, _HI the next free one
        q = _R * op
        count = rec[q + _HI]
        rec[q + _LO] = at
        rec[q + _HI] = at
        at += count
    succ = np.empty(at, np.int64)
    for k in range(0, runs.size, 2):
        for x in range(runs[k], runs[k] + runs[k + 1]):
            q = _R * x + _HI
            succ[rec[q]] = x + 1
            rec[q] += 1
    for k in range(src.size):
        q = _R * src[k] + _HI
        succ[rec[q]] = dst[k]
        rec[q] += 1
    hi = np.empty(_W * n, np.int64)
    hf = hi.view(np.float64)
    size = 0
    seq = 0
    for op in range(n):
        f = rec[_R * op + _DEPS]
        if f & _COUNT == 0:
            size = _push(hi, hf, size, clock, (f >> 32) * _SEQ + seq, op)
            seq += 1
    counters = np.zeros(w_ptr.size - 1, np.int64)
    w_next = w_ptr[:-1].copy()
    watching = watch.size > 0
    earliest = np.inf  # the earliest start of the watched ops popped so far
    stopped = False
    while size > 0:
        t, op, size = _pop(hi, hf, size)
        if size > 0:
            _prefetch(rec, _R * hi[_OP])
        q = _R * op
        s = t - recf[q + _BACK]
        x = rec[q + _RES]
        if x >= 0:
            if free_at[x] > s:
                s = free_at[x]
            e = s + recf[q + _DUR]
            free_at[x] = e
            busy[x] += e - s
        else:
            e = s + recf[q + _DUR]
        recf[q + _READY] = s
        if watching and watch[op]:
            if s < earliest:
                earliest = s
            if e - earliest > limit:
                stopped = True
                break
        ev = rec[q + _SIG]
        if ev >= 0:
            counters[ev] += 1
            c = counters[ev]
            j = w_next[ev]
            stop = w_ptr[ev + 1]
            while j < stop and w_count[j] < c:  # counts passed over: never released
                j += 1
            while j < stop and w_count[j] == c:
                w = w_op[j]
                p = _R * w
                if recf[p + _READY] < e:
                    recf[p + _READY] = e
                f = rec[p + _DEPS] - 1
                rec[p + _DEPS] = f
                if f & _COUNT == 0:
                    r = recf[p + _READY]
                    size = _push(hi, hf, size, r if r > t else t, (f >> 32) * _SEQ + seq, w)
                    seq += 1
                j += 1
            w_next[ev] = j
        for j in range(rec[q + _LO], rec[q + _HI]):  # the run edge, then the log's
            x = succ[j]
            p = _R * x
            if recf[p + _READY] < e:
                recf[p + _READY] = e
            f = rec[p + _DEPS] - 1
            rec[p + _DEPS] = f
            if f & _COUNT == 0:
                r = recf[p + _READY]
                size = _push(hi, hf, size, r if r > t else t, (f >> 32) * _SEQ + seq, x)
                seq += 1
    start = np.zeros(n)
    end = np.full(n, -1.0)
    for op in range(n):  # popped: released (no unmet dependency), the loop not stopped
        q = _R * op
        if rec[q + _DEPS] & _COUNT == 0:
            start[op] = recf[q + _READY]
            end[op] = recf[q + _READY] + recf[q + _DUR]
    return start, end, free_at, busy, stopped
