"""The compiled FSE-DP scheduler's kernel (numba): :class:`.fsedp_sched._Sim`, over arrays.

Imported only by :mod:`.fsedp_compiled`, and only when numba is installed. Each method of the
reference is a closure here with the same name and the same steps in the same order: the same
events pushed in the same order with the same ``(time, sequence number)`` keys, the same float
operations in the same order (a compute's end is ``now`` plus its ops' durations one by one; a
claim is ``s + occ``, then ``+ lat`` when ``lat > 0``), so the clock, the decisions and the
order each die writes its instructions in are the reference's to the bit. The kernel writes
each instruction as a record ``(die, kind, slot, peer or channel, trip)`` in the order the
reference appends it (:mod:`.fsedp_compiled` turns them into instructions).

The reference's objects become indices: a trip is its index in load order, its stay at hop
``h`` of its path the visit ``trip * V + h``; a die's free slots a stack, its ready and inbox
deques and a lane's outbox and entry deques ring buffers of ``K`` entries (each entry holds one
of the die's ``K`` slots); a route is memoized per (die, unit) as its first position, its last
hop and the hops it is computed at. The state is a few arrays, one row per attribute (the row
constants below: ``die[HELD, d]`` is the reference's ``dies[d].held``), the variable-length
tables in one list of ints and one of floats at offsets kept in ``sc``: every step takes them
all (:data:`State`), and a call passing an array costs about 6 ns, so a step that took one
array per attribute (about 90) would cost the kernel what the reference costs. Every step is
compiled without numba's reference counting (``_nrt=False``: the kernel allocates nothing; the
caller holds ``st`` for the run): counted, each step called copied and counted every array of
``st`` (about 40 atomic increments and decrements a call), which took two thirds of the time (507
against 159 ns an event on DeepSeek-V3 fsedp's 13 one-layer problems). An internal
error (no free slot) is recorded and ends the run after the event that met it; the caller
raises the reference's error.
"""

from __future__ import annotations

from typing import Any

import numba

#: every step's compile options: cached, without reference counting (module doc); the
#: relay's helpers (:mod:`moec.backends.interp.relay_kernel`) take the same
NO_NRT: dict[str, Any] = {"cache": True, "_nrt": False}
#: event kinds
CROSS, LOADED, COMPUTED, RELEASE_CHANNEL, SENT, HOPPED = range(6)
#: instruction record kinds (a slice compute writes its gemm, act and accum)
LOAD, GEMM, ACT, ACCUM, FREE, SEND, RECV = range(7)
#: their instructions' names (:func:`.fsedp_instrs.made`)
RECORD_NAMES = ("load", "gemm", "act", "accum", "free", "send", "recv")
#: outcome: done, a die had no free slot, the log's room was short (a caller's bug)
DONE, NO_SLOT, NO_ROOM = range(3)


@numba.njit(**NO_NRT)
def _heap_push(ht, hs, hk, ha, hb, size, t, s, kind, a, b):  # type: ignore[no-untyped-def]
    i = size
    while i > 0:
        up = (i - 1) >> 1
        if ht[up] < t or (ht[up] == t and hs[up] < s):
            break
        ht[i], hs[i], hk[i], ha[i], hb[i] = ht[up], hs[up], hk[up], ha[up], hb[up]
        i = up
    ht[i], hs[i], hk[i], ha[i], hb[i] = t, s, kind, a, b


@numba.njit(**NO_NRT)
def _heap_pop(ht, hs, hk, ha, hb, size):  # type: ignore[no-untyped-def]
    """Remove the least ``(time, seq)`` of a heap of ``size`` (the caller read it at 0)."""
    size -= 1
    t, s, kind, a, b = ht[size], hs[size], hk[size], ha[size], hb[size]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and (ht[c + 1] < ht[c] or (ht[c + 1] == ht[c] and hs[c + 1] < hs[c])):
            c += 1
        if t < ht[c] or (t == ht[c] and s < hs[c]):
            break
        ht[i], hs[i], hk[i], ha[i], hb[i] = ht[c], hs[c], hk[c], ha[c], hb[c]
        i = c
    if size > 0:
        ht[i], hs[i], hk[i], ha[i], hb[i] = t, s, kind, a, b


#: rows of ``die`` (per die): free slots left, held, peak, loading, started, computing, the
#: head and end of its R4 queue in ``ints``, the ready and inbox rings' heads and counts, its
#: channels with slices left (R5), prefetch slots, its first and second walk position (-1:
#: none), its first and last position (``ends``)
FN, HELD, PEAK, LOADING, STARTED, COMPUTING, DQ_HEAD, DQ_END = range(8)
RDY_H, RDY_N, IBX_H, IBX_N, FED, PREFETCH, LANE0, LANE1, END0, END1 = range(8, 18)
DIE_ROWS = 18
#: rows of ``lane`` (per walk position): its die, received held, link busy, outbox and entry
#: rings' heads and counts
WALK, PIPE, SENDING, OB_H, OB_N, EN_H, EN_N = range(7)
LANE_ROWS = 7
#: rows of ``trip``: unit, slice (unit's first slice's row in ``cd`` plus j), size index,
#: channel, load die (naive), entry slot, visits open, ended, entered, route die, load plan,
#: first walk position, last hop
UNIT, US, NB, CHAN, DIE, SLOT, OPEN, ENDED, ENTERED, ROUTE_DIE, PLAN, Q0, LAST = range(13)
TRIP_ROWS = 13
#: rows of ``chan``: its die, reads outstanding, head and end of its queue in ``ints``
CDIE, COUT, CQ_HEAD, CQ_END = range(4)
CHAN_ROWS = 4
#: rings (``ring[k, die or position]``): ready trips, inbox visits, outbox and entry visits,
#: free slots (a stack)
RDY, IBX, OB, EN, FREE_SLOTS = range(5)
#: routes (``route[k, die, unit]``): first position (-1: not yet found), last hop, whether the
#: die needs the unit
RQ0, RLAST, NEEDED = range(3)
#: ``sc``: trips on the walk, next sequence number, heap size, pass-throughs, whether a die is
#: unfed, records written, outcome, its die; then the problem's scalars; then offsets into
#: ``ints`` (R4 queues' trips, R5 queues' trips, per unit its needed dies' offsets and the dies,
#: the cycle order, the channels with a queue, per load plan its channel resource and its hops'
#: offset, per hop its link, per (position, size) the send's link) and into ``floats`` (the
#: engine's free times, per channel when it frees, the clock, per plan its hold and latency,
#: per hop its hold, back and latency, per (position, size) the send's hold and latency)
ACTIVE, SEQ, HEAP, PASSES, UNFED, RECORDS, OUTCOME, OUT_DIE = range(8)
K_, P_, CAP, PUSHES, NAIVE, V_, WRITE, N_ORDER, N_CHAN_ORDER, N_SIZES = range(8, 18)
O_DQ, O_CQ, O_NEED_PTR, O_NEED, O_ORDER, O_CHAN_ORDER, O_LP_RES, O_LP_HOPS = range(18, 26)
O_HOP_RES, O_SP_RES = range(26, 28)
O_FREE_AT, O_CHAN_FREE, O_CLOCK, O_LP_OCC, O_LP_LAT, O_HOP_DUR, O_HOP_BACK = range(28, 35)
O_HOP_LAT, O_SP_OCC, O_SP_LAT = range(35, 38)
SC_SIZE = 38

#: the simulation's state, in the order :func:`simulate` takes it: ``sc``, ``die``, ``lane``,
#: ``trip``, ``chan``, ``ring``, ``visit`` (slot and uses left per visit), ``route``, ``at``
#: (per die, unit and hop: whether the route from that die computes there), ``hops`` (between
#: two dies), ``load_plan`` (per channel, die and size), ``cd`` (per slice and die, its ops'
#: durations), ``ints``, ``floats``, the heap's times and its ``(seq, kind, a, b)``, ``log``
#: (int32 rows of die, kind, slot, peer or channel, trip), and the log's records die by die
#: (written at the end, :func:`_by_die`): their kinds (int8), their slot, peer and trip rows
#: (int32), and where each die's start
State = tuple


@numba.njit(**NO_NRT, inline="always")
def _at(st, t, kind, a, b):  # type: ignore[no-untyped-def]
    sc, ht, hi = st[0], st[14], st[15]
    if sc[HEAP] == ht.size:
        sc[OUTCOME] = NO_ROOM
        return
    _heap_push(ht, hi[0], hi[1], hi[2], hi[3], sc[HEAP], t, sc[SEQ], kind, a, b)
    sc[SEQ] += 1
    sc[HEAP] += 1


@numba.njit(**NO_NRT, inline="always")
def _record(st, d, kind, slot, peer, trip):  # type: ignore[no-untyped-def]
    sc, log = st[0], st[16]
    if sc[WRITE]:
        k = sc[RECORDS]
        if k == log.shape[0]:
            sc[OUTCOME] = NO_ROOM
            return
        log[k, 0], log[k, 1], log[k, 2], log[k, 3], log[k, 4] = d, kind, slot, peer, trip
        sc[RECORDS] = k + 1


@numba.njit(**NO_NRT, inline="always")
def _take_slot(st, d):  # type: ignore[no-untyped-def]
    sc, die = st[0], st[1]
    if die[FN, d] == 0:
        sc[OUTCOME], sc[OUT_DIE] = NO_SLOT, d
        return 0
    die[HELD, d] += 1
    if die[HELD, d] > die[PEAK, d]:
        die[PEAK, d] = die[HELD, d]
    die[FN, d] -= 1
    return st[5][FREE_SLOTS, d, die[FN, d]]


@numba.njit(**NO_NRT)
def _route_of(st, d, u):  # type: ignore[no-untyped-def]
    """:func:`.fsedp_sched.route` from die ``d`` through unit ``u``'s needed dies, memoized."""
    sc, die, lane, route, at, ints = st[0], st[1], st[2], st[7], st[8], st[12]
    if route[RQ0, d, u] >= 0:
        return
    W = lane.shape[1]
    lo, hi = ints[sc[O_NEED_PTR] + u], ints[sc[O_NEED_PTR] + u + 1]
    best, best_q0 = -1, 0
    for q0 in (die[LANE0, d], die[LANE1, d]):
        if q0 < 0:
            continue
        steps = 0
        for k in range(lo, hi):
            x = ints[sc[O_NEED] + k]
            a, b = die[END0, x], die[END1, x]
            if a < 0:
                steps = W - 1
                continue
            a, b = (a - q0 + W) % W, (b - q0 + W) % W
            if b < a:
                a = b
            if a > steps:
                steps = a
        if best < 0 or steps < best:
            best, best_q0 = steps, q0
    route[RQ0, d, u], route[RLAST, d, u] = best_q0, best
    for k in range(lo, hi):
        x = ints[sc[O_NEED] + k]
        a, b = die[END0, x], die[END1, x]
        if a >= 0:
            a, b = (a - best_q0 + W) % W, (b - best_q0 + W) % W
            at[d, u, b if b < a else a] = True


@numba.njit(**NO_NRT, inline="always")
def _set_path(st, tr, d):  # type: ignore[no-untyped-def]
    trip, route = st[3], st[7]
    u = trip[UNIT, tr]
    _route_of(st, d, u)
    trip[Q0, tr], trip[LAST, tr], trip[ROUTE_DIE, tr] = route[RQ0, d, u], route[RLAST, d, u], d


@numba.njit(**NO_NRT, inline="always")
def _computes(st, tr, hop):  # type: ignore[no-untyped-def]
    trip = st[3]
    return st[0][NAIVE] != 0 or st[8][trip[ROUTE_DIE, tr], trip[UNIT, tr], hop]


# --- R4 / R5: loads ---
@numba.njit(**NO_NRT, inline="always")
def _load(st, d, tr):  # type: ignore[no-untyped-def]
    sc, die, trip, ints, fl = st[0], st[1], st[3], st[12], st[13]
    slot = _take_slot(st, d)
    trip[SLOT, tr] = slot
    die[LOADING, d] += 1
    c = trip[CHAN, tr]
    plan = trip[PLAN, tr] = st[10][c, d, trip[NB, tr]]
    res, now = sc[O_FREE_AT] + ints[sc[O_LP_RES] + plan], fl[sc[O_CLOCK]]
    start = fl[res]
    if start < now:
        start = now
    chan = fl[res] = start + fl[sc[O_LP_OCC] + plan]
    lat = fl[sc[O_LP_LAT] + plan]
    out = chan + lat if lat > 0.0 else chan
    fl[sc[O_CHAN_FREE] + c] = chan
    _record(st, d, LOAD, slot, c, tr)
    if ints[sc[O_LP_HOPS] + plan + 1] > ints[sc[O_LP_HOPS] + plan]:
        _at(st, out, CROSS, tr, 0)
    else:
        _at(st, out, LOADED, tr, 0)


@numba.njit(**NO_NRT)
def _pull(st, d):  # type: ignore[no-untyped-def]
    sc, die, ints = st[0], st[1], st[12]
    while (
        die[DQ_HEAD, d] < die[DQ_END, d]
        and die[FN, d] > 0
        and die[LOADING, d] + die[RDY_N, d] + die[STARTED, d] < die[PREFETCH, d]
    ):
        tr = ints[sc[O_DQ] + die[DQ_HEAD, d]]
        die[DQ_HEAD, d] += 1
        _load(st, d, tr)


@numba.njit(**NO_NRT, inline="always")
def _room(die, d):  # type: ignore[no-untyped-def]
    r = die[PREFETCH, d] - (die[LOADING, d] + die[RDY_N, d] + die[STARTED, d])
    return r if r < die[FN, d] else die[FN, d]


@numba.njit(**NO_NRT)
def _push_target(st, c, tr):  # type: ignore[no-untyped-def]
    sc, die, chan, route, ints = st[0], st[1], st[4], st[7], st[12]
    home = chan[CDIE, c]
    if _room(die, home) > 0:
        return home
    if chan[COUT, c] > 0 or not sc[UNFED]:
        return -1
    u = st[3][UNIT, tr]
    _route_of(st, home, u)
    longest = route[RLAST, home, u]
    best, bk0, bk1, bk2 = -1, 0, 0, 0
    for pos in range(sc[N_ORDER]):
        d = ints[sc[O_ORDER] + pos]
        if d == home or not route[NEEDED, d, u]:
            continue
        _route_of(st, d, u)
        length = route[RLAST, d, u]
        if length > longest or die[FED, d]:
            continue
        r = _room(die, d)
        if r <= 0:
            continue
        h = st[9][home, d]
        if best < 0 or (-r, h, length) < (bk0, bk1, bk2):
            best, bk0, bk1, bk2 = d, -r, h, length
    return best


@numba.njit(**NO_NRT)
def _push(st, c):  # type: ignore[no-untyped-def]
    sc, die, chan, ints, fl = st[0], st[1], st[4], st[12], st[13]
    while chan[CQ_HEAD, c] < chan[CQ_END, c]:
        d = _push_target(st, c, ints[sc[O_CQ] + chan[CQ_HEAD, c]])
        if d < 0:
            return
        tr = ints[sc[O_CQ] + chan[CQ_HEAD, c]]
        chan[CQ_HEAD, c] += 1
        if chan[CQ_HEAD, c] == chan[CQ_END, c]:
            home = chan[CDIE, c]
            die[FED, home] -= 1
            if die[FED, home] == 0:
                sc[UNFED] = 1
        _set_path(st, tr, d)
        chan[COUT, c] += 1
        _load(st, d, tr)
        _at(st, fl[sc[O_CHAN_FREE] + c], RELEASE_CHANNEL, c, 0)


@numba.njit(**NO_NRT)
def _refill(st, d):  # type: ignore[no-untyped-def]
    sc, die, chan, ints = st[0], st[1], st[4], st[12]
    if sc[PUSHES]:
        for i in range(sc[N_CHAN_ORDER]):
            c = ints[sc[O_CHAN_ORDER] + i]
            if chan[CQ_HEAD, c] < chan[CQ_END, c] and (
                _room(die, chan[CDIE, c]) > 0 or (sc[UNFED] and chan[COUT, c] == 0)
            ):
                _push(st, c)
    else:
        _pull(st, d)


# --- R1 / R2 / R3: compute and forward ---
@numba.njit(**NO_NRT, inline="always")
def _append(ring, k, x, head, count, item):  # type: ignore[no-untyped-def]
    """Append ``item`` to ring ``k`` of ``x`` whose head and count are ``head``, ``count``."""
    ring[k, x, (head + count) % ring.shape[2]] = item


@numba.njit(**NO_NRT, inline="always")
def _arrive(st, v):  # type: ignore[no-untyped-def]
    sc, die, lane, trip, ring, visit = st[0], st[1], st[2], st[3], st[5], st[6]
    V = sc[V_]
    tr, hop = v // V, v % V
    q = (trip[Q0, tr] + hop) % lane.shape[1]
    if _computes(st, tr, hop):
        visit[1, v] += 1
        d = lane[WALK, q]
        _append(ring, IBX, d, die[IBX_H, d], die[IBX_N, d], v)
        die[IBX_N, d] += 1
    else:
        sc[PASSES] += 1
    if hop < trip[LAST, tr]:
        visit[1, v] += 1
        if hop:
            _append(ring, OB, q, lane[OB_H, q], lane[OB_N, q], v)
            lane[OB_N, q] += 1
        else:
            _append(ring, EN, q, lane[EN_H, q], lane[EN_N, q], v)
            lane[EN_N, q] += 1


@numba.njit(**NO_NRT, inline="always")
def _compute(st, d, v):  # type: ignore[no-untyped-def]
    sc, cd = st[0], st[11]
    st[1][COMPUTING, d] = 1
    tr = v // sc[V_]
    slot = st[6][0, v]
    _record(st, d, GEMM, slot, 0, tr)
    _record(st, d, ACT, slot, 0, tr)
    _record(st, d, ACCUM, slot, 0, tr)
    end = st[13][sc[O_CLOCK]]
    us = st[3][US, tr]
    for i in range(cd.shape[2]):
        end += cd[us, d, i]
    _at(st, end, COMPUTED, d, v)


@numba.njit(**NO_NRT, inline="always")
def _forward(st, d, q):  # type: ignore[no-untyped-def]
    sc, lane, trip, ring, visit, ints, fl = st[0], st[2], st[3], st[5], st[6], st[12], st[13]
    K, V, W = sc[K_], sc[V_], lane.shape[1]
    if lane[OB_N, q]:
        v = ring[OB, q, lane[OB_H, q]]
        lane[OB_H, q], lane[OB_N, q] = (lane[OB_H, q] + 1) % K, lane[OB_N, q] - 1
    else:
        v = ring[EN, q, lane[EN_H, q]]
        lane[EN_H, q], lane[EN_N, q] = (lane[EN_H, q] + 1) % K, lane[EN_N, q] - 1
    tr = v // V
    hop = v % V + 1
    if not trip[ENTERED, tr]:
        trip[ENTERED, tr] = 1
        sc[ACTIVE] += 1
    lane[SENDING, q] = 1
    nq = (q + 1) % W
    lane[PIPE, nq] += 1
    nxt = lane[WALK, nq]
    slot = _take_slot(st, nxt)
    trip[OPEN, tr] += 1
    if hop == trip[LAST, tr]:
        trip[ENDED, tr] = 1
    nv = tr * V + hop
    visit[0, nv], visit[1, nv] = slot, 0
    _record(st, d, SEND, visit[0, v], nxt, tr)
    _record(st, nxt, RECV, slot, d, tr)
    k, now = q * sc[N_SIZES] + trip[NB, tr], fl[sc[O_CLOCK]]
    res = sc[O_FREE_AT] + ints[sc[O_SP_RES] + k]
    start = fl[res]
    if start < now:
        start = now
    e = fl[res] = start + fl[sc[O_SP_OCC] + k]
    lat = fl[sc[O_SP_LAT] + k]
    _at(st, e, SENT, q, 0)
    _at(st, e + lat if lat > 0.0 else e, HOPPED, v, nv)


@numba.njit(**NO_NRT, inline="always")
def _can_forward(sc, lane, q):  # type: ignore[no-untyped-def]
    return lane[PIPE, (q + 1) % lane.shape[1]] < sc[P_] and (
        lane[OB_N, q] > 0 or (lane[EN_N, q] > 0 and sc[ACTIVE] < sc[CAP])
    )


@numba.njit(**NO_NRT)
def _kick(st, d):  # type: ignore[no-untyped-def]
    sc, die, lane, trip, ring, visit = st[0], st[1], st[2], st[3], st[5], st[6]
    K = sc[K_]
    while (die[IBX_N, d] or die[RDY_N, d]) and not sc[OUTCOME]:
        if die[IBX_N, d] and not die[COMPUTING, d]:
            v = ring[IBX, d, die[IBX_H, d]]
            die[IBX_H, d], die[IBX_N, d] = (die[IBX_H, d] + 1) % K, die[IBX_N, d] - 1
            _compute(st, d, v)  # R1
        elif die[RDY_N, d]:
            tr = ring[RDY, d, die[RDY_H, d]]
            if _computes(st, tr, 0) and (die[COMPUTING, d] or die[IBX_N, d]):
                break
            die[RDY_H, d], die[RDY_N, d] = (die[RDY_H, d] + 1) % K, die[RDY_N, d] - 1  # R2
            die[STARTED, d] += 1
            trip[OPEN, tr] += 1  # visit()
            if trip[LAST, tr] == 0:
                trip[ENDED, tr] = 1
            v = tr * sc[V_]
            visit[0, v], visit[1, v] = trip[SLOT, tr], 0
            _arrive(st, v)
        else:
            break
    for q in (die[LANE0, d], die[LANE1, d]):
        if q >= 0 and not lane[SENDING, q] and _can_forward(sc, lane, q):
            _forward(st, d, q)


@numba.njit(**NO_NRT)
def _release(st, d, v):  # type: ignore[no-untyped-def]
    sc, die, lane, trip, ring, visit = st[0], st[1], st[2], st[3], st[5], st[6]
    visit[1, v] -= 1
    if visit[1, v]:
        return
    slot = visit[0, v]
    _record(st, d, FREE, slot, 0, 0)
    die[HELD, d] -= 1
    if die[FN, d] < sc[K_]:
        ring[FREE_SLOTS, d, die[FN, d]] = slot
        die[FN, d] += 1
    tr, hop = v // sc[V_], v % sc[V_]
    trip[OPEN, tr] -= 1
    if trip[ENDED, tr] and trip[OPEN, tr] == 0 and trip[ENTERED, tr]:
        sc[ACTIVE] -= 1
        if sc[ACTIVE] == sc[CAP] - 1:
            for other in range(die.shape[1]):
                if other != d:
                    _kick(st, other)
    if hop == 0:
        die[STARTED, d] -= 1
        _refill(st, d)
    else:
        W = lane.shape[1]
        q = (trip[Q0, tr] + hop) % W
        lane[PIPE, q] -= 1
        _kick(st, lane[WALK, (q - 1 + W) % W])


@numba.njit(**NO_NRT, inline="always")
def _cross(st, tr, k):  # type: ignore[no-untyped-def]
    sc, ints, fl = st[0], st[12], st[13]
    plan = st[3][PLAN, tr]
    h = ints[sc[O_LP_HOPS] + plan] + k
    res = sc[O_FREE_AT] + ints[sc[O_HOP_RES] + h]
    start = fl[sc[O_CLOCK]] - fl[sc[O_HOP_BACK] + h]
    if fl[res] > start:
        start = fl[res]
    e = fl[res] = start + fl[sc[O_HOP_DUR] + h]
    lat = fl[sc[O_HOP_LAT] + h]
    end = e + lat if lat > 0.0 else e
    if h + 1 == ints[sc[O_LP_HOPS] + plan + 1]:
        _at(st, end, LOADED, tr, 0)
    else:
        _at(st, end, CROSS, tr, k + 1)


@numba.njit(**NO_NRT)
def simulate(st):  # type: ignore[no-untyped-def]
    """Play the rules on state ``st`` (:data:`State`); returns the outcome (:data:`DONE` or an
    internal error), leaves each trip's first position and last hop, the peaks, the records
    (in the order written, then die by die) and the engine's free times in it."""
    sc, die, lane, trip, chan, ring, visit = st[0], st[1], st[2], st[3], st[4], st[5], st[6]
    ints, fl, ht, hi = st[12], st[13], st[14], st[15]
    W, T = lane.shape[1], trip.shape[1]
    if sc[NAIVE]:
        for tr in range(T):
            trip[Q0, tr], trip[LAST, tr] = die[LANE0, trip[DIE, tr]], 0
    elif not sc[PUSHES]:
        for tr in range(T):
            _set_path(st, tr, chan[CDIE, trip[CHAN, tr]])
    if sc[PUSHES]:
        for i in range(sc[N_CHAN_ORDER]):
            die[FED, chan[CDIE, ints[sc[O_CHAN_ORDER] + i]]] += 1
        for d in range(die.shape[1]):
            if not die[FED, d]:
                sc[UNFED] = 1
        for i in range(sc[N_CHAN_ORDER]):
            _push(st, ints[sc[O_CHAN_ORDER] + i])
    else:
        for d in range(die.shape[1]):
            _pull(st, d)
    clock = sc[O_CLOCK]
    while sc[HEAP] and not sc[OUTCOME]:
        t, kind, a, b = ht[0], hi[1, 0], hi[2, 0], hi[3, 0]
        _heap_pop(ht, hi[0], hi[1], hi[2], hi[3], sc[HEAP])
        sc[HEAP] -= 1
        fl[clock] = t
        if kind == CROSS:
            _cross(st, a, b)
        elif kind == LOADED:
            d = lane[WALK, trip[Q0, a]]
            die[LOADING, d] -= 1
            _append(ring, RDY, d, die[RDY_H, d], die[RDY_N, d], a)
            die[RDY_N, d] += 1
            _kick(st, d)
        elif kind == COMPUTED:
            die[COMPUTING, a] = 0
            _release(st, a, b)
            _kick(st, a)
        elif kind == RELEASE_CHANNEL:
            chan[COUT, a] -= 1
            _push(st, a)
        elif kind == SENT:
            lane[SENDING, a] = 0
            if _can_forward(sc, lane, a):
                _forward(st, lane[WALK, a], a)
        else:  # HOPPED: b arrived, a's slot has one use less
            tr, hop = b // sc[V_], b % sc[V_]
            nd = lane[WALK, (trip[Q0, tr] + hop) % W]
            _arrive(st, b)
            if visit[1, a] > 1:
                visit[1, a] -= 1
            else:
                _release(st, lane[WALK, (trip[Q0, tr] + hop - 1) % W], a)
            _kick(st, nd)
    if sc[WRITE] and not sc[OUTCOME]:
        _by_die(st[16], sc[RECORDS], st[17], st[18], st[19])
    return sc[OUTCOME]


@numba.njit(**NO_NRT)
def _by_die(log, m, kind, cols, ends):  # type: ignore[no-untyped-def]
    """The first ``m`` records of ``log`` die by die, each die's in log order (a counting
    sort: what a stable sort on the die column gives), as columns: ``kind``, and ``cols``'
    rows slot, peer or channel, trip; where each die's records start in ``ends`` (``ends[d]``
    to ``ends[d + 1]``: die ``d``'s)."""
    n = ends.size - 1
    for d in range(n + 1):
        ends[d] = 0
    for k in range(m):
        ends[log[k, 0] + 1] += 1
    for d in range(1, n + 1):
        ends[d] += ends[d - 1]
    for k in range(m):  # ends[d]: die d's next record (its end once all are written)
        d = log[k, 0]
        i = ends[d]
        ends[d] = i + 1
        kind[i] = log[k, 1]
        for c in range(3):
            cols[c, i] = log[k, c + 2]
    for d in range(n, 0, -1):
        ends[d] = ends[d - 1]
    ends[0] = 0
