"""The timing machine's event loop: the op graph's ops popped in time order, each holding its resource.

Two implementations of one loop. :func:`loop_python` is the reference: plain Python over the op
graph's lists (:class:`~.opgraph.OpGraph`), ``heapq`` for the events. :func:`loop_compiled` is
the same loop, statement for statement, over a compact array form of the graph (the successors
in CSR arrays, the signal/wait counters as integer ids), compiled with numba when it is
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
(the rent-or-buy rule), and a one-layer point of the paper grid never imports numba. Once
another kernel has loaded numba (:func:`numba_loaded`: the FSE-DP scheduler's, on an FSE-DP
point), loading this one costs about 10 ms, and a run of :data:`COMPILE_WARM` ops pays for it.
A caller that does know tells it (:func:`expect`: a layer-by-layer run, before its first MoE
part that part's instructions times the MoE parts from it on, after each part the ops its later
parts will time at that part's size), and the switch comes as soon as the ops timed and
expected reach :data:`COMPILE_AFTER`. The kernel is JIT-compiled on its first call and cached
on disk (numba's ``cache=True``, in ``__pycache__`` beside :mod:`.event_kernel` or numba's own
cache directory), so only a process that finds no cache pays the compile (about 2 s of CPU).

A caller that only needs to know whether some ops span more than a limit (the FSE-DP slice
choice, timing a count that can only win below the fastest measured so far) passes them as
``watch`` with that ``limit``: both loops stop, raising :class:`PastLimit`, at the first
watched op whose end is more than ``limit`` after the earliest start of the watched ops popped
so far, the same op in both (they pop in the same order and compute the same floats).
"""

from __future__ import annotations

import heapq
import importlib
import math
import sys
from array import array
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from moec.backends.interp.opgraph import PRIORITY

#: which loop :func:`run_events` uses: True the compiled one, False the reference, None the
#: reference until :data:`COMPILE_AFTER` ops were timed in this process, then the compiled one
#: when numba imports
COMPILED: bool | None = None
#: ops timed by the reference before an undecided process (:data:`COMPILED` None) switches
COMPILE_AFTER = 300_000
#: ops (timed, and expected or at least this run's) from which an undecided process times with
#: the kernel once another kernel has loaded numba (:func:`numba_loaded`): then loading this
#: one from its cache costs about 10 ms of CPU (0.6 s with numba's import and first dispatch),
#: what the reference spends on about 7k ops
COMPILE_WARM = 10_000

_timed = 0
#: ops the caller expects this process still to time (:func:`expect`)
_expected = 0

_kernel: Any = None
_PRIORITY = np.asarray(PRIORITY, dtype=np.int64)
#: the kernel's ``watch`` when no op is watched
_NO_WATCH = np.zeros(0, np.bool_)

#: a per-op column: a list, a numpy array (a part of a layer-by-layer run), or a typed
#: ``array('q')`` (the op graph's edge log)
Ints = Sequence[int] | np.ndarray
Floats = Sequence[float] | np.ndarray


class PastLimit(Exception):
    """A run stopped by its caller's ``limit`` (:func:`run_events`): its watched ops span more
    than ``limit`` seconds, whatever the ops not yet timed do. ``ops``: the graph's ops."""

    def __init__(self, limit: float, ops: int) -> None:
        super().__init__(f"the watched ops span more than {limit!r} s")
        self.limit = limit
        self.ops = ops


def expect(ops: int) -> None:
    """Say that about ``ops`` more ops are still to be timed in this process (0: nothing known):
    an undecided process switches to the compiled loop once the ops timed and these reach
    :data:`COMPILE_AFTER`, not only after it has timed them. Which loop runs never changes a
    number (module doc)."""
    global _expected
    _expected = max(0, ops)


def expected() -> int:
    """The ops said to be ahead (:func:`expect`)."""
    return _expected


def optional_kernel(module: str) -> Any:
    """The compiled kernel module ``module`` (it imports numba), or False when it does not
    import (numba, ``moec[fast]``, not installed)."""
    try:
        _numba_without_blas_probe()
        return importlib.import_module(module)
    except ImportError:
        return False


#: what numba imports to learn whether BLAS is there (:mod:`numba.np.arraymath`, on import)
BLAS_PROBE = "scipy.linalg.cython_blas"


def _numba_without_blas_probe() -> None:
    """Import numba's array functions (:mod:`numba.np.arraymath`) with scipy's BLAS hidden,
    once per process. Numba imports them on its first cache load or compile, and on import
    they probe for BLAS by importing ``scipy.linalg`` (0.12-0.13 s of CPU; 5% of a one-layer
    8x8 point's samples): for the inner products of a few functions (``np.cov``-like) no kernel
    of moec calls, which without BLAS compile as loops. ``np.dot`` still asks for BLAS when
    compiled, and ``scipy.linalg`` imports as usual once this returns (the entry hiding it is
    gone); the kernels' cached code is the same (numba keys it by the function's source)."""
    if "numba.np.arraymath" in sys.modules or BLAS_PROBE in sys.modules:
        return
    sys.modules[BLAS_PROBE] = None  # type: ignore[assignment]  # an import of it fails at once
    try:
        importlib.import_module("numba.np.arraymath")
    finally:
        if BLAS_PROBE in sys.modules and sys.modules[BLAS_PROBE] is None:
            del sys.modules[BLAS_PROBE]


class OptionalKernel:
    """A compiled kernel module, imported on the first :meth:`available` (:func:`optional_kernel`):
    ``module`` is None before, then the module or False (numba does not import)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.module: Any = None

    def available(self) -> bool:
        """Whether the kernel can run here; imports it once."""
        global _numba_loaded
        if self.module is None:
            self.module = optional_kernel(self.name)
            _numba_loaded = _numba_loaded or self.module is not False
        return self.module is not False


#: whether a kernel module was imported in this process (numba with it)
_numba_loaded = False


def numba_loaded() -> bool:
    """Whether some kernel (this loop's, the FSE-DP scheduler's, the relay's) was imported in
    this process: numba's import and first dispatch (about 0.6 s) are paid, and loading
    another kernel from its cache costs tens of milliseconds."""
    return _numba_loaded


def compiled_available() -> bool:
    """Whether the compiled loop can run here (numba imports); imports it once."""
    global _kernel, _numba_loaded
    if _kernel is None:
        kernel = optional_kernel("moec.backends.interp.event_kernel")
        _kernel = kernel and kernel.loop
        _numba_loaded = _numba_loaded or _kernel is not False
    return _kernel is not False


def run_events(
    src: Ints, dst: Ints, runs: Ints, dur: Floats, res: Ints, kind: Ints,
    back: Mapping[int, float], free_at: list[float], busy: list[float],
    clock: float, signal_event: dict[int, str], waiters: dict[str, dict[int, list[int]]],
    watch: Ints | None = None, limit: float = math.inf,
) -> tuple[Floats, Floats]:  # fmt: skip
    """Every op's ``(start, end)`` (end -1 for an op never released: a deadlock), with
    ``free_at`` and ``busy`` (per resource) updated in place.

    ``watch`` (per op, true for a watched op) and ``limit`` (seconds): raise
    :class:`PastLimit` as soon as a watched op ends more than ``limit`` after the earliest
    start of the watched ops popped so far, ``end - earliest > limit`` in floats. Then the
    watched ops' span (latest end minus earliest start, in floats) is above ``limit`` too:
    the earliest start popped is not before the earliest of all, and a rounded difference
    never falls when the exact one grows.

    The graph is :class:`~.opgraph.OpGraph`'s: the runs of chained ops (``runs``) and the
    edge log ``src[k] -> dst[k]`` (an op's successors are released in the order its edges
    were added, its run's first), per op its duration, resource
    (-1: none) and kind, ``back`` where not 0; a ``wait`` op (in ``waiters``, a ``defaultdict``
    of ``defaultdict(list)`` as the builder keeps them, consumed) is released by its counter
    after its edges. The columns are lists or numpy arrays; the reference returns lists, the
    compiled loop numpy arrays."""
    global _timed
    use = COMPILED
    if use is None:
        warm = numba_loaded() and _timed + max(_expected, len(kind)) >= COMPILE_WARM
        use = (_timed + _expected >= COMPILE_AFTER or warm) and compiled_available()
    _timed += len(kind)
    loop = loop_compiled if use else loop_python
    return loop(
        src, dst, runs, dur, res, kind, back, free_at, busy, clock, signal_event, waiters,
        watch, limit,
    )  # fmt: skip


def as_list(values: Floats) -> list[Any]:
    """A column as a list (the reference loop reads Python numbers); a list as it is."""
    if isinstance(values, list):
        return values
    return values.tolist() if isinstance(values, np.ndarray | array) else list(values)


def loop_python(
    src: Ints, dst: Ints, runs: Ints, dur: Floats, res: Ints, kind: Ints,
    back: Mapping[int, float], free_at: list[float], busy: list[float],
    clock: float, signal_event: dict[int, str], waiters: dict[str, dict[int, list[int]]],
    watch: Ints | None = None, limit: float = math.inf,
) -> tuple[list[float], list[float]]:  # fmt: skip
    """The reference loop (see :func:`run_events`)."""
    n = len(kind)
    watching = watch is not None and limit < math.inf
    watched = as_list(watch) if watch is not None and watching else []
    earliest = math.inf  # the earliest start of the watched ops popped so far
    dur, res = as_list(dur), as_list(res)
    prio = list(map(PRIORITY.__getitem__, as_list(kind)))
    # each op's successors in the order its edges were added
    succ = chained_successors(n, runs, src, dst)
    ndeps = [0] * n
    for out in succ:
        for x in out:
            ndeps[x] += 1
    for by_count in waiters.values():  # a wait is released by its counter too
        for ops in by_count.values():
            for op in ops:
                ndeps[op] += 1
    back_l = [0.0] * n
    for op, v in back.items():
        back_l[op] = v
    ready = [0.0] * n
    start = [0.0] * n
    end = [-1.0] * n
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
        s = t - back_l[op]
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
        if watching and watched[op]:
            if s < earliest:
                earliest = s
            if e - earliest > limit:
                raise PastLimit(limit, n)
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


def chained_successors(n: int, runs: Ints, src: Ints, dst: Ints) -> list[list[int]]:
    """Per op of ``n``, its successors: its run edge (``runs``, :class:`~.opgraph.OpGraph`) first, then
    its logged edges ``src -> dst`` in log order."""
    out: list[list[int]] = [[] for _ in range(n)]
    for k in range(0, len(runs), 2):
        start = runs[k]
        for x in range(start, start + runs[k + 1]):
            out[x].append(x + 1)
    targets: Iterable[int] = dst
    if not isinstance(dst, list):  # a typed log: one int object per op, not one per edge
        targets = map(list(range(n)).__getitem__, dst)
    for a, b in zip(src, targets, strict=True):
        out[a].append(b)
    return out


def _int_array(values: Ints) -> np.ndarray:
    """A column as an int64 array: a typed column (``array('q')``, the op graph's edge log)
    read in place, a list converted."""
    if isinstance(values, np.ndarray):
        return values.astype(np.int64, copy=False)
    if isinstance(values, array):
        return np.frombuffer(values, np.int64) if values.typecode == "q" else np.array(values)
    return np.fromiter(values, np.int64, len(values))


def _float_array(values: Floats) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=False)
    return np.fromiter(values, np.float64, len(values))


def loop_compiled(
    src: Ints, dst: Ints, runs: Ints, dur: Floats, res: Ints, kind: Ints,
    back: Mapping[int, float], free_at: list[float], busy: list[float],
    clock: float, signal_event: dict[int, str], waiters: dict[str, dict[int, list[int]]],
    watch: Ints | None = None, limit: float = math.inf,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """The compiled loop (see :func:`run_events`): the graph's columns handed over as arrays
    (the kernel packs them into one record per op and sorts the runs' edges and the edge log
    into one CSR array itself), the kernel run, ``start`` and ``end`` handed back as arrays."""
    if not compiled_available():
        raise RuntimeError("the compiled event loop needs numba (pip install moec[fast])")
    n = len(kind)
    i64, f64 = np.int64, np.float64
    # signals and waits: events as ids; per event its waiters by count (list order kept)
    names = {ev: k for k, ev in enumerate(sorted(set(waiters) | set(signal_event.values())))}
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
    signals = len(signal_event)
    sig_op = np.fromiter(signal_event.keys(), i64, signals)
    sig = np.fromiter(map(names.__getitem__, signal_event.values()), i64, signals)
    back_op, back_s = (
        np.fromiter(back.keys(), i64, len(back)),
        np.fromiter(back.values(), f64, len(back)),
    )
    watching = watch is not None and limit < math.inf
    start, end, fa, bz, stopped = _kernel(
        _int_array(runs), _int_array(src), _int_array(dst), _float_array(dur), _int_array(res),
        _int_array(kind), _PRIORITY, back_op, back_s, np.asarray(free_at, f64),
        np.asarray(busy, f64), float(clock), sig_op, sig, w_ptr, np.asarray(w_count, i64),
        np.asarray(w_op, i64), np.asarray(watch, np.bool_) if watching else _NO_WATCH,
        float(limit),
    )  # fmt: skip
    if stopped:
        raise PastLimit(limit, n)
    free_at[:] = fa.tolist()
    busy[:] = bz.tolist()
    return start, end
