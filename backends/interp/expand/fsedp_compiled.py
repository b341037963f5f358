"""The FSE-DP scheduler, compiled: :class:`.fsedp_sched._Sim`'s simulation as a numba kernel.

:func:`.fsedp_sched.schedule` plays a layer's rules with the reference (:class:`~.fsedp_sched._Sim`,
plain Python) or here with :func:`.fsedp_kernel.simulate`, the same simulation over flat arrays
(numba, ``pip install moec[fast]``). Both return the same :class:`~.fsedp_problem.Schedule`
(every die's instructions in the same order, the same paths, ``estimate_s`` to the bit, peak
slots, pass-throughs) and raise the same :class:`~moec.ir.errors.ScheduleError`;
``tests/test_fsedp_compiled.py`` compares them on every variant of the rules.

What stays in Python: the setup (the reference's own constructor: walk, slots; its plan, the
trips in the central load order, made as arrays by :func:`_plan`), the engine's cost plans
read into arrays before the kernel runs (:meth:`~.fsedp_engine.Engine.load_plan`,
:meth:`~.fsedp_engine.Engine.send_plan`, each slice compute's durations from the unit), and
each die's stream from the kernel's records (which the kernel leaves sorted die by die): a
:class:`~..relay_records.RecordStream` (its instructions made with the reference's makers,
:mod:`.fsedp_instrs`, only when read) where the compiled relay takes most of it, else the
instructions made at once; without streams (a prediction) none are made. The trips' paths
(:attr:`~.fsedp_problem.Schedule.paths`) are made only when read (:class:`_Paths`).

:data:`COMPILED` says which one :func:`.fsedp_sched.schedule` uses: True or False forces one
(the tests compare them); None (the default) starts with the reference and switches to the
kernel, when numba imports, once the process has scheduled :data:`COMPILE_AFTER` micro-slices
times dies (the event loop's rent-or-buy rule, :mod:`..event_loop`), for problems of at least
:data:`COMPILE_FROM` (the kernel and the Python around it cost less than the reference from
a few hundred): importing numba and the kernel and loading the kernel's cache cost about 0.5 to
0.75 s of CPU, about what the reference spends on that much work (4 to 8 us per slice and
die), so a one-layer point of the paper grid never loads it, and a whole-model run, told its
work before its first layer (:mod:`..ahead`), plays that layer with it. Once another kernel
has loaded numba, loading this one costs 40-80 ms, and :data:`COMPILE_WARM` work pays for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain, repeat
from typing import Any, NamedTuple

import numpy as np

from moec.backends.interp import relay_records
from moec.backends.interp.event_loop import OptionalKernel, numba_loaded
from moec.backends.interp.expand.fsedp_engine import Engine
from moec.backends.interp.expand.fsedp_order import central_order_arrays
from moec.backends.interp.expand.fsedp_problem import Problem, Schedule
from moec.backends.interp.timing_ops import SLICE_COSTS
from moec.ir.errors import ScheduleError
from moec.ir.stream.program import SliceRef

#: which simulation :func:`.fsedp_sched.schedule` plays: True the kernel, False the reference,
#: None the reference until :data:`COMPILE_AFTER` trips were scheduled, then the kernel when
#: numba imports
COMPILED: bool | None = None
#: micro-slices times dies an undecided process (:data:`COMPILED` None) schedules with the
#: reference
COMPILE_AFTER = 200_000
#: the least work (micro-slices times dies) of a problem an undecided process plays with the
#: kernel, once loaded: the kernel and the Python around it tie with the reference at about 130
#: (0.66 against 0.70 ms a problem, with streams) and are 17-20% faster at 250, 1.4x on 6k
#: (a layer of Qwen3-30B-A3B on 4x4 dies), 1.7-2.5x from 15k (``scripts/bench_fsedp_sched.py``)
COMPILE_FROM = 250
#: micro-slices times dies (played, and expected or at least the problem's own) from which an
#: undecided process plays with the kernel once another kernel has loaded numba
#: (:func:`~..event_loop.numba_loaded`): loading this one from its cache then costs 40-80 ms of
#: CPU (0.6 s cold), what the reference spends on about 10k
COMPILE_WARM = 10_000

_played = 0
#: micro-slices times dies said to be ahead (:func:`expect`) and not played yet
_expected = 0
_KERNEL = OptionalKernel("moec.backends.interp.expand.fsedp_kernel")


def available() -> bool:
    """Whether the kernel can run here (numba imports); imports it once."""
    return _KERNEL.available()


def offered(prob: Problem) -> bool:
    """Whether ``prob``'s records go to the compiled relay (:mod:`..relay_records`): when it
    wants them. Naive rules' streams too: their lone streamed micro-slices (a load computed
    and freed before the die's next load) no longer end a run (:func:`..relay_chain.
    chains_follow`), so a die's naive stream relays in one run, not in short ones between
    them (median 345 instructions on DeepSeek-V3, which cost more to read from the records
    than the kernel saved)."""
    del prob  # every rule's schedule is offered alike
    return relay_records.wanted() is not None


def wanted(prob: Problem) -> bool:
    """Whether :func:`.fsedp_sched.schedule` plays ``prob`` with the kernel (:data:`COMPILED`);
    counts its work (micro-slices times dies: the reference's events grow with both), taking
    it off what was said to be ahead (:func:`expect`)."""
    global _played, _expected
    work = sum(len(u.slice_bytes) for u in prob.units) * prob.num_dies
    use = COMPILED
    if use is None:
        ahead = _played + _expected
        warm = numba_loaded() and _played + max(_expected, work) >= COMPILE_WARM
        use = (ahead >= COMPILE_AFTER or warm) and work >= COMPILE_FROM and available()
    _played += work
    _expected = max(0, _expected - work)
    if use and not available():
        raise RuntimeError("the compiled FSE-DP scheduler needs numba (pip install moec[fast])")
    return bool(use) and isinstance(prob.machine, Engine)


def schedule(sim: Any) -> Schedule:
    """Play ``sim`` (a fresh :class:`~.fsedp_sched._Sim`, not yet planned) with the kernel."""
    available()
    k = _KERNEL.module
    prob: Problem = sim.p
    pl = _plan(sim)
    st = None if pl is None else _state(sim, pl)
    if pl is None or st is None:
        return type(sim)(prob, sim.write).run()  # the reference, on a fresh simulation
    outcome = k.simulate(st)
    sc, die, lane, trip, chan = st[:5]
    if outcome == k.NO_SLOT:
        raise ScheduleError(f"FSE-DP scheduler: die {sc[k.OUT_DIE]} has no free slot (internal)")
    if outcome != k.DONE:
        raise RuntimeError("the compiled FSE-DP scheduler ran out of room (internal)")
    stuck = (die[k.DQ_HEAD] < die[k.DQ_END]) | (die[k.RDY_N] > 0) | (die[k.IBX_N] > 0)
    stuck |= die[k.HELD] > 0
    stuck[lane[k.WALK][(lane[k.OB_N] > 0) | (lane[k.EN_N] > 0)]] = True
    left = int((chan[k.CQ_END] - chan[k.CQ_HEAD]).sum())
    if stuck.any() or left:
        raise ScheduleError(
            f"FSE-DP scheduler stalled on layer {prob.layer} (dies "
            f"{np.flatnonzero(stuck).tolist()}, {left} slices not loaded)"
        )
    fl, free_at = st[13], prob.machine.free_at  # type: ignore[attr-defined]
    free_at[:] = fl[sc[k.O_FREE_AT] : sc[k.O_FREE_AT] + len(free_at)].tolist()
    paths = _Paths(prob.units, sim.walk, pl.unit, pl.slice, trip[k.Q0].copy(), trip[k.LAST].copy())
    if sim.write:
        refs, sizes = _trip_slices(prob, pl, trip[k.US])
        cols = (st[17], *st[18])
        _instructions(sim.out, refs, sizes, prob.units, trip[k.UNIT], cols, st[19].tolist(),
                      offered(prob))  # fmt: skip
    peaks = dict(enumerate(die[k.PEAK].tolist()))
    clock = float(fl[sc[k.O_CLOCK]])
    return Schedule(sim.out, paths, clock, peaks, int(sc[k.PASSES]))  # type: ignore[arg-type]


class _Paths(Sequence[tuple[tuple[int | None, int], list[int]]]):
    """:attr:`~.fsedp_problem.Schedule.paths` from the kernel's arrays, the list made when
    first read (no decision reads them: the tests and ``scripts/bench_fsedp_sched.py`` do):
    per trip its unit's expert and slice, and the dies of its walk positions from its first
    (``q0``) over ``last`` hops."""

    __slots__ = ("_args", "_list")

    def __init__(
        self, units: list[Any], walk: list[int], unit: np.ndarray, slice: np.ndarray,
        q0: np.ndarray, last: np.ndarray,
    ) -> None:  # fmt: skip
        self._args: tuple[Any, ...] | None = (units, walk, unit, slice, q0, last)
        self._list: list[tuple[tuple[int | None, int], list[int]]] = []

    def _paths(self) -> list[tuple[tuple[int | None, int], list[int]]]:
        if self._args is not None:
            units, walk, unit, slice, q0, last = self._args
            walk2, experts = walk * 2, [u.expert for u in units]
            self._list = [
                ((experts[u], j), walk2[q : q + h + 1])
                for u, j, q, h in zip(
                    unit.tolist(), slice.tolist(), q0.tolist(), last.tolist(), strict=True
                )
            ]
            self._args = None
        return self._list

    def __len__(self) -> int:
        return len(self._paths())

    def __getitem__(self, k: Any) -> Any:
        return self._paths()[k]

    def __iter__(self) -> Iterator[tuple[tuple[int | None, int], list[int]]]:
        return iter(self._paths())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _Paths):
            other = other._paths()
        return isinstance(other, list) and self._paths() == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._paths())


def _trip_slices(prob: Problem, pl: _Planned, us: np.ndarray) -> tuple[list[SliceRef], list[int]]:
    """Per trip of ``pl`` its slice and bytes (``us``: per trip its slice's row, the units'
    slices end to end); the trips of one slice (naive rules) share its :class:`SliceRef`."""
    experts = map([u.expert for u in prob.units].__getitem__, pl.order_unit.tolist())
    refs = list(map(SliceRef, repeat(prob.layer), experts, pl.order_slice.tolist()))
    if pl.of is not None:
        refs = list(map(refs.__getitem__, pl.of.tolist()))
    nbytes = [b for u in prob.units for b in u.slice_bytes]  # the units' ints, not new ones
    return refs, list(map(nbytes.__getitem__, us.tolist()))


class _Planned(NamedTuple):
    """:meth:`~.fsedp_sched._Sim.plan`'s trips as arrays: per trip its unit (index), slice,
    channel and die (where the plan queues it: R4's home, naive's die; R5: -1); the trips
    each die pulls and each channel pushes, in order, laid end to end with each one's end;
    the channels that push, ascending; per unit and die, whether the unit needs the die; the
    slices in the central load order (units with tokens only: unit, slice) and, under naive
    rules, each trip's slice among them (else None: trip ``i`` is slice ``i``)."""

    unit: np.ndarray
    slice: np.ndarray
    chan: np.ndarray
    die: np.ndarray
    dq: np.ndarray
    dq_end: np.ndarray
    cq: np.ndarray
    cq_end: np.ndarray
    pushing: list[int]
    needed: np.ndarray
    order_unit: np.ndarray
    order_slice: np.ndarray
    of: np.ndarray | None


def _plan(sim: Any) -> _Planned | None:
    """Plan fresh ``sim`` as :meth:`~.fsedp_sched._Sim.plan` does (its routes left to the
    kernel), in arrays: each slice in the central load order is one trip, queued on its
    channel's die (R4) or channel (R5); under naive rules each needed die loads the slices
    itself (die by die, each in the load order; those trips share the slice's
    :class:`SliceRef`, :func:`_trip_slices`). None when a slice's channel is not one of the
    arrays' (the host)."""
    prob: Problem = sim.p
    n, units, chan_die = sim.n, prob.units, prob.channel_die
    s_unit, s_slice = central_order_arrays(prob)
    held = np.fromiter((bool(u.tokens) for u in units), np.bool_, len(units))
    s_unit, s_slice = s_unit[held[s_unit]], s_slice[held[s_unit]]
    S = len(s_unit)
    first = np.cumsum([0] + [len(u.channels) for u in units])[:-1]
    channels = np.fromiter((c for u in units for c in u.channels), np.int64)
    s_chan = channels[first[s_unit] + s_slice] if S else s_unit
    if S and (s_chan.min() < 0 or s_chan.max() >= len(chan_die)):
        return None
    needed = np.zeros((n, len(units)), np.bool_)
    for i, u in enumerate(units):
        needed[list(u.tokens), i] = True
    none = np.zeros(0, np.int64)
    if sim.naive:
        at = np.flatnonzero(needed[:, s_unit].ravel())  # die by die, slices in load order
        die, of = at // max(S, 1), at % max(S, 1)
        dq = np.arange(len(at), dtype=np.int64)
        dq_end = np.cumsum(np.bincount(die, minlength=n), dtype=np.int64)
        return _Planned(
            s_unit[of], s_slice[of], s_chan[of], die, dq, dq_end, none, np.zeros(len(chan_die),
            np.int64), [], needed, s_unit, s_slice, of,
        )  # fmt: skip
    cd = np.asarray(chan_die, np.int64)
    if prob.r5:
        by_chan = np.argsort(s_chan, kind="stable")
        cq_end = np.cumsum(np.bincount(s_chan, minlength=len(chan_die)), dtype=np.int64)
        return _Planned(
            s_unit, s_slice, s_chan, np.full(S, -1, np.int64), none, np.zeros(n, np.int64),
            by_chan, cq_end, np.unique(s_chan).tolist(), needed, s_unit, s_slice, None,
        )  # fmt: skip
    home = cd[s_chan] if S else none
    dq_end = np.cumsum(np.bincount(home, minlength=n), dtype=np.int64)
    return _Planned(
        s_unit, s_slice, s_chan, home, np.argsort(home, kind="stable"), dq_end, none,
        np.zeros(len(chan_die), np.int64), [], needed, s_unit, s_slice, None,
    )  # fmt: skip


def _state(sim: Any, pl: _Planned) -> tuple[Any, ...] | None:
    """The kernel's state (:data:`.fsedp_kernel.State`) for ``sim`` planned as ``pl``; None
    where the kernel cannot play it (computes of different op counts)."""
    k = _KERNEL.module
    prob: Problem = sim.p
    engine: Engine = prob.machine  # type: ignore[assignment]
    n, W, units, K = sim.n, len(sim.walk), prob.units, sim.K
    T, U, V, C = len(pl.unit), len(units), 1 if sim.naive else W, len(prob.channel_die)
    u_off = np.cumsum([0] + [len(u.slice_bytes) for u in units]).tolist()
    sizes = sorted({b for u in units for b in u.slice_bytes})
    # each unit's slices' size indices, end to end (as u_off lays them out)
    us_nb = np.searchsorted(sizes, [b for u in units for b in u.slice_bytes]).astype(np.int64)
    trip = np.zeros((k.TRIP_ROWS, T), np.int64)
    trip[k.UNIT], trip[k.CHAN], trip[k.DIE] = pl.unit, pl.chan, pl.die
    trip[k.US] = np.asarray(u_off[:-1], np.int64)[pl.unit] + pl.slice if T else 0
    trip[k.NB] = us_nb[trip[k.US]]
    t_chan, t_die, t_nb = trip[k.CHAN], trip[k.DIE], trip[k.NB]
    cd = _durations(units, u_off, n)
    if cd is None:
        return None  # not the interpreter's ops
    # the engine's load plans each trip may claim (R5: its channel's die or any needed die)
    chan_die = prob.channel_die
    if sim.pushes:
        anywhere = {d for u in units for d in u.tokens}
        keys = sorted(
            (c, x, nb)
            for c, nb in set(zip(t_chan.tolist(), t_nb.tolist(), strict=True))
            for x in anywhere | {chan_die[c]}
        )
    else:
        # (channel, die, size) as one int each, ascending as the triples
        flat = np.unique((t_chan * n + t_die) * len(sizes) + t_nb).tolist()
        keys = [(f // (n * len(sizes)), f // len(sizes) % n, f % len(sizes)) for f in flat]
    load_plan = np.full((C, n, len(sizes)), -1, np.int64)
    plans: list[tuple[int, float, float]] = []
    hop_ptr, hops = [0], []
    for c, x, nb in keys:
        load_plan[c, x, nb] = len(plans)
        res, occ, lat, route = engine.load_plan(c, x, sizes[nb])
        plans.append((res, occ, lat))
        hops += route
        hop_ptr.append(len(hops))
    sends = [
        engine.send_plan(sim.walk[q], sim.walk[(q + 1) % W], size) if W > 1 else (0, 0.0, 0.0)
        for q in range(W)
        for size in sizes
    ]
    needed = pl.needed
    hops_nn = np.zeros((n, n), np.int64)
    if sim.pushes:
        for h in sorted(set(chan_die)):
            for d in np.flatnonzero(needed.any(axis=1)).tolist():
                hops_nn[h, d] = sim.hops(h, d)
    # the variable-length tables, at offsets kept in sc
    sc = np.zeros(k.SC_SIZE, np.int64)
    sc[k.K_ : k.N_SIZES + 1] = [K, sim.P, sim.cap, sim.pushes, sim.naive, V, sim.write,
                                len(prob.order), len(pl.pushing), len(sizes)]  # fmt: skip
    ints: list[int] = []
    for at, values in (
        (k.O_DQ, pl.dq.tolist()), (k.O_CQ, pl.cq.tolist()),
        (k.O_NEED_PTR, np.cumsum([0] + [len(u.tokens) for u in units]).tolist()),
        (k.O_NEED, [d for u in units for d in u.tokens]), (k.O_ORDER, list(prob.order)),
        (k.O_CHAN_ORDER, pl.pushing), (k.O_LP_RES, [p[0] for p in plans]),
        (k.O_LP_HOPS, hop_ptr), (k.O_HOP_RES, [h[0] for h in hops]),
        (k.O_SP_RES, [p[0] for p in sends]),
    ):  # fmt: skip
        sc[at] = len(ints)
        ints += values
    floats: list[float] = []
    for at, fvalues in (
        (k.O_FREE_AT, engine.free_at), (k.O_CHAN_FREE, [0.0] * C), (k.O_CLOCK, [0.0]),
        (k.O_LP_OCC, [p[1] for p in plans]), (k.O_LP_LAT, [p[2] for p in plans]),
        (k.O_HOP_DUR, [h[1] for h in hops]), (k.O_HOP_BACK, [h[2] for h in hops]),
        (k.O_HOP_LAT, [h[3] for h in hops]), (k.O_SP_OCC, [p[1] for p in sends]),
        (k.O_SP_LAT, [p[2] for p in sends]),
    ):  # fmt: skip
        sc[at] = len(floats)
        floats += fvalues
    die = np.zeros((k.DIE_ROWS, n), np.int64)
    die[k.FN], die[k.PREFETCH] = K, sim.prefetch
    die[k.DQ_HEAD], die[k.DQ_END] = _starts(pl.dq_end), pl.dq_end
    die[k.LANE0], die[k.LANE1] = np.asarray(
        [(v + [-1, -1])[:2] for v in sim.positions.values()], np.int64
    ).T
    die[k.END0], die[k.END1] = np.asarray(sim.ends, np.int64).reshape(n, 2).T
    lane = np.zeros((k.LANE_ROWS, W), np.int64)
    lane[k.WALK] = sim.walk
    chan = np.zeros((k.CHAN_ROWS, C), np.int64)
    chan[k.CDIE] = chan_die
    chan[k.CQ_HEAD], chan[k.CQ_END] = _starts(pl.cq_end), pl.cq_end
    ring = np.zeros((5, max(n, W), K), np.int64)
    ring[k.FREE_SLOTS, :n] = [list(d.free) for d in sim.dies]
    route = np.zeros((3, n, U), np.int64)
    route[k.RQ0], route[k.NEEDED] = -1, needed
    # events outstanding at most: a load stage, a hop and a channel release per trip, a
    # compute per die, a link release per lane; records: a load and per hop 6 per trip
    H = 3 * T + n + W + 16
    R = T * (1 + 6 * V) if sim.write else 0
    return (
        sc, die, lane, trip, chan, ring, np.zeros((2, T * V), np.int64), route,
        np.zeros((1 if sim.naive else n, U, W), np.bool_), hops_nn, load_plan, cd,
        np.asarray(ints, np.int64), np.asarray(floats, np.float64), np.zeros(H),
        np.zeros((4, H), np.int64), np.empty((R, 5), np.int32), np.empty(R, np.int8),
        np.empty((3, R), np.int32), np.zeros(n + 1, np.int64),
    )  # fmt: skip


def _durations(units: list[Any], u_off: list[int], n: int) -> np.ndarray | None:
    """Per slice (the units' slices end to end, from ``u_off``) and die, its compute's
    durations as the unit gives them, asked once per die and distinct slice
    (:attr:`~.fsedp_problem.Unit.alike`); None when a compute is not the interpreter's ops."""
    asked: list[tuple[float, ...]] = []  # per unit, distinct slice and needed die
    at: list[int] = []  # per slice of a unit with tokens: its dies' first entry of ``asked``
    row: list[int] = []  # and its row of the table
    dies: list[int] = []  # per such unit, its needed dies
    nds: list[int] = []  # per such slice, its unit's number of them, and where they start
    die_at: list[int] = []
    for u, base in zip(units, u_off, strict=False):
        nd = len(u.tokens)
        if not nd:
            continue
        ds = list(u.tokens)
        first: dict[int, int] = {}  # per distinct slice, its dies' first entry of ``asked``
        alike = u.alike or range(len(u.slice_bytes))
        for f in alike:
            hit = first.get(f)
            if hit is None:
                hit = first[f] = len(asked)
                asked += map(u.compute, ds, repeat(f))
            at.append(hit)
        m = len(alike)
        row += range(base, base + m)
        nds += [nd] * m
        die_at += [len(dies)] * m
        dies += ds
    ops = len(SLICE_COSTS)
    if asked and set(map(len, asked)) != {ops}:
        return None
    cd = np.zeros((u_off[-1] * n, ops))
    if asked:
        # per (slice, needed die), the slice's dies in order: its entry and row
        per = np.asarray(nds, np.int64)
        of = np.repeat(np.arange(len(per)), per)
        k = np.arange(len(of)) - np.repeat(np.cumsum(per) - per, per)
        take = np.asarray(at, np.int64)[of] + k
        die = np.asarray(dies, np.int64)[np.asarray(die_at, np.int64)[of] + k]
        durations = np.fromiter(chain.from_iterable(asked), np.float64, ops * len(asked))
        cd[np.asarray(row, np.int64)[of] * n + die] = durations.reshape(-1, ops)[take]
    return cd.reshape(u_off[-1], n, ops)


def _starts(ends: np.ndarray) -> np.ndarray:
    """Each group's start, from each one's end, the groups laid end to end."""
    return np.concatenate([[0], ends[:-1]]).astype(np.int64)


def _instructions(
    out: dict[int, list[Any]], refs: list[SliceRef], sizes: list[int], units: list[Any],
    unit_of: np.ndarray, cols: tuple[np.ndarray, ...], ends: list[int], offer: bool = False,
) -> None:  # fmt: skip
    """Each die's stream from the kernel's instruction records (each trip's slice, bytes and
    unit in ``refs``, ``sizes``, ``unit_of``), die by die (``cols``: their kind, slot, peer
    and trip; die ``d``'s from ``ends[d]`` to ``ends[d + 1]``, in record order): with ``offer``
    (:func:`offered`), a :class:`~..relay_records.RecordStream` (its instructions made when
    read) where the compiled relay will read most of it as columns, else the instructions
    themselves (made in one go: the Python relay reads each)."""
    n = len(out)
    # per unit and die, its tokens there (a compute's, for its gemm, act and accum)
    held: list[Any] = [None] * (len(units) * n)
    for i, u in enumerate(units):
        for d, tokens in u.tokens.items():
            held[i * n + d] = tokens
    src = relay_records.Source(refs, sizes, held, unit_of, n)
    min_run = relay_records.wanted() if offer else None
    for d in range(n):
        if ends[d + 1] > ends[d]:
            a, b = ends[d], ends[d + 1]
            stream = relay_records.RecordStream(src, d, *(c[a:b] for c in cols))
            if min_run and stream.lazy(min_run):
                out[d] = stream  # type: ignore[assignment]
            else:
                out[d] += stream


def expect(work: int) -> None:
    """Say that about ``work`` more micro-slices times dies are about to be scheduled in this
    process (a caller that knows: the FSE-DP slice choice, its counts that fit): counted toward
    :data:`COMPILE_AFTER` now, so an undecided process plays its problems of at least
    :data:`COMPILE_FROM` with the kernel from the first one, not only after the reference has
    played that much (the event loop's :func:`~..event_loop.expect`). Each problem played
    comes off the expectation (:func:`wanted`), so work said to be ahead and then played is
    counted once: a choice of less work than :data:`COMPILE_AFTER` (a one-layer point on 4x4
    dies at 256 tokens, about 100k) does not load the kernel it would not pay for. Which
    simulation plays never changes a number (module doc). Each call says it anew (0: nothing
    more is ahead; the choice says so when it ends)."""
    global _expected
    _expected = max(0, work)


def expected() -> tuple[int, int]:
    """What was said to be ahead (:func:`expect`) and is not played yet, and the work played so
    far in this process (micro-slices times dies)."""
    return _expected, _played
