"""The timing machine's event loop: the op graph's ops popped in time order, each holding its resource.

Two implementations of one loop. :func:`loop_python` is the reference: plain Python over the op
graph's lists (:class:`~.opgraph.OpGraph`), ``heapq`` for the events. :func:`loop_compiled` is
the same loop, statement for statement, over a compact array form of the graph (successors and
resources in CSR arrays, the signal/wait counters as integer ids), compiled with numba when it is
installed (``pip install moec[fast]``; numba ships wheels for every supported platform). Both
pop events ``(time, priority, push order, op)`` in the same order and do the same float
operations in the same order (no fast-math), so their start and end times, resources' free and
busy times are the same to the bit; ``tests/test_event_loop.py`` compares them on every tiny
golden, chunked dispatch and a layered whole-model run.

:data:`COMPILED` says which one :func:`run_events` uses: True or False forces one (the tests
compare them); None (the default) starts with the reference and switches to the compiled loop,
when numba imports, once the process has timed :data:`COMPILE_AFTER` ops. Importing numba and
loading the cached kernel cost about 0.4 s of CPU per process, the compiled loop saves about
0.8 us per op (array packing included): worth it on a whole-model run (millions of ops), not on
a one-layer point (tens of thousands). A process cannot know how many ops are still to come, so
it switches when the reference has spent about what the switch costs (300k ops at about 1.3 us
each): a run then never spends more than twice what the better choice in hindsight would have
(the rent-or-buy rule), and a one-layer point of the paper grid never imports numba. The
kernel is JIT-compiled on its first call and cached on disk (numba's ``cache=True``, in
``__pycache__`` beside :mod:`.event_kernel` or numba's own cache directory), so only a process
that finds no cache pays the compile (about 2 s of CPU).
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Sequence
from functools import reduce
from operator import iadd
from typing import Any

import numpy as np

from moec.backends.interp.opgraph import PRIORITY

#: which loop :func:`run_events` uses: True the compiled one, False the reference, None the
#: reference until :data:`COMPILE_AFTER` ops were timed in this process, then the compiled one
#: when numba imports
COMPILED: bool | None = None
#: ops timed by the reference before an undecided process (:data:`COMPILED` None) switches
COMPILE_AFTER = 300_000

_timed = 0

_kernel: Any = None
_PRIORITY = np.asarray(PRIORITY, dtype=np.int64)


def compiled_available() -> bool:
    """Whether the compiled loop can run here (numba imports); imports it once."""
    global _kernel
    if _kernel is None:
        try:
            from moec.backends.interp import event_kernel
        except ImportError:
            _kernel = False
        else:
            _kernel = event_kernel.loop
    return _kernel is not False


def run_events(
    ndeps: list[int], succ: list[list[int]], dur: list[float], res: list[tuple[int, ...]],
    kind: list[int], back: list[float], free_at: list[float], busy: list[float],
    clock: float, signal_event: dict[int, str], waiters: dict[str, dict[int, list[int]]],
) -> tuple[list[float], list[float]]:  # fmt: skip
    """Every op's ``(start, end)`` (end -1 for an op never released: a deadlock), with
    ``free_at`` and ``busy`` (per resource) updated in place. ``ndeps`` and ``waiters`` (a
    ``defaultdict`` of ``defaultdict(list)``, as the builder keeps them) are consumed."""
    global _timed
    use = COMPILED
    if use is None:
        use = _timed >= COMPILE_AFTER and compiled_available()
    _timed += len(ndeps)
    if use:
        return loop_compiled(
            ndeps, succ, dur, res, kind, back, free_at, busy, clock, signal_event, waiters
        )
    return loop_python(
        ndeps, succ, dur, res, kind, back, free_at, busy, clock, signal_event, waiters
    )


def loop_python(
    ndeps: list[int], succ: list[list[int]], dur: list[float], res: list[tuple[int, ...]],
    kind: list[int], back: list[float], free_at: list[float], busy: list[float],
    clock: float, signal_event: dict[int, str], waiters: dict[str, dict[int, list[int]]],
) -> tuple[list[float], list[float]]:  # fmt: skip
    """The reference loop (see :func:`run_events`)."""
    n = len(ndeps)
    prio = list(map(PRIORITY.__getitem__, kind))
    ready = [0.0] * n
    start = [0.0] * n
    end = [-1.0] * n
    # every op the handlers make holds at most one resource: its id (-1: none), -2 for an op
    # holding several (taken the long way)
    single = [(r[0] if len(r) == 1 else -2) if r else -1 for r in res]
    heappush, heappop = heapq.heappush, heapq.heappop
    # engine.EventQueue's discipline, inlined (its two method calls per op were a fifth of the
    # loop): events (time, priority, push order, op), all distinct, so the pop order is theirs
    roots = [op for op in range(n) if ndeps[op] == 0]
    heap = [(clock, prio[op], seq, op) for seq, op in enumerate(roots)]
    seq = len(heap)
    heapq.heapify(heap)
    counters: dict[str, int] = defaultdict(int)
    while heap:
        t, _, _, op = heappop(heap)
        s = t - back[op]
        x = single[op]
        if x >= 0:
            if free_at[x] > s:
                s = free_at[x]
            e = s + dur[op]
            free_at[x] = e
            busy[x] += e - s
        elif x == -1:
            e = s + dur[op]
        else:
            r = res[op]
            for x in r:
                if free_at[x] > s:
                    s = free_at[x]
            e = s + dur[op]
            for x in r:
                free_at[x] = e
                busy[x] += e - s
        start[op] = s
        end[op] = e
        if op in signal_event:
            ev = signal_event[op]
            counters[ev] += 1
            for w in waiters[ev].pop(counters[ev], ()):
                if ready[w] < e:
                    ready[w] = e
                ndeps[w] -= 1
                if ndeps[w] == 0:
                    heappush(heap, (ready[w] if ready[w] > t else t, prio[w], seq, w))
                    seq += 1
        for x in succ[op]:
            if ready[x] < e:
                ready[x] = e
            ndeps[x] -= 1
            if ndeps[x] == 0:
                # a tail reservation (back == dur) can end an ulp before the clock: not earlier
                heappush(heap, (ready[x] if ready[x] > t else t, prio[x], seq, x))
                seq += 1
    return start, end


def loop_compiled(
    ndeps: list[int], succ: list[list[int]], dur: list[float], res: list[tuple[int, ...]],
    kind: list[int], back: list[float], free_at: list[float], busy: list[float],
    clock: float, signal_event: dict[int, str], waiters: dict[str, dict[int, list[int]]],
) -> tuple[list[float], list[float]]:  # fmt: skip
    """The compiled loop (see :func:`run_events`): the graph packed into arrays, the kernel
    run, the results handed back as the reference's lists."""
    if not compiled_available():
        raise RuntimeError("the compiled event loop needs numba (pip install moec[fast])")
    n = len(ndeps)
    i64, f64 = np.int64, np.float64
    succ_ptr, succ_idx = _csr(succ, n)
    res_ptr, res_idx = _csr(res, n)
    # signals and waits: events as ids; per event its waiters by count (list order kept)
    names = {ev: k for k, ev in enumerate(sorted(set(waiters) | set(signal_event.values())))}
    sig = np.full(n, -1, i64)
    for op, ev in signal_event.items():
        sig[op] = names[ev]
    w_ptr = np.zeros(len(names) + 1, i64)
    w_count: list[int] = []
    w_op: list[int] = []
    for ev, k in names.items():
        by_count = waiters.get(ev, {})
        for c in sorted(by_count):
            ops = by_count[c]
            w_count += [c] * len(ops)
            w_op += ops
        w_ptr[k + 1] = len(w_op)
    start, end, fa, bz = _kernel(
        np.asarray(ndeps, i64), succ_ptr, succ_idx, np.asarray(dur, f64), res_ptr, res_idx,
        _PRIORITY[np.asarray(kind, i64)], np.asarray(back, f64), np.asarray(free_at, f64),
        np.asarray(busy, f64), float(clock), sig, w_ptr, np.asarray(w_count, i64),
        np.asarray(w_op, i64),
    )  # fmt: skip
    free_at[:] = fa.tolist()
    busy[:] = bz.tolist()
    return start.tolist(), end.tolist()


def _csr(rows: Sequence[Sequence[int]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` as CSR arrays: row k is ``idx[ptr[k]:ptr[k + 1]]``."""
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.fromiter(map(len, rows), np.int64, n), out=ptr[1:])
    # the rows concatenated by C calls only (``list += row`` per row, through ``reduce``): no
    # Python step per row, unlike a loop of ``extend`` or ``itertools.chain``
    flat: list[int] = reduce(iadd, rows, [])
    return ptr, np.fromiter(flat, np.int64, len(flat))
