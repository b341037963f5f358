"""FSE-DP, expert streaming (``strategy fsedp``): tokens stay home, expert micro-slices travel.

The runtime half of arXiv 2603.27624's Fully Sharded Expert Data Parallelism. Once routing is
known, each expert with routed tokens is needed by the dies holding those tokens; every
micro-slice of it makes one trip along the trajectory (the Hamiltonian cycle, or a path walked
there and back) through those dies, computed on each against that die's own tokens (:mod:`.fsedp_sched` plays the rules R1-R5 and writes the streams).

Parameters read from the runtime policy (written by ``compiler/lower/fsedp.py``; typed and
checked by :class:`moec.ir.stream.params.FSEDPParams`):

* ``trajectory``: the die order (a Hamiltonian cycle, or a path when ``closed`` is false);
* ``closed``: whether the last die of ``trajectory`` neighbours the first (default true);
* ``channels``: the DRAM channel of each expert's slice 0; slice j lives on channel
  ``(channels[e] + j) % C`` (weights are interleaved over all channels, so every expert's stream
  draws on all of them); default ``e % C``;
* ``rules``: ``r1-r4`` (default) or ``naive`` (every die loads what it needs itself);
* ``order``: the central load order, ``natural`` (ascending expert id), ``paired`` (hottest,
  coldest, 2nd hottest, 2nd coldest, ... by routed-token count, the slices of each pair
  interleaved) or ``balanced`` (compute kept in step with DRAM, see :mod:`.fsedp_sched`); the
  shared experts go first;
* ``r5``: DRAM pushes each slice to the channel's die, or, when that is full and the channel
  would otherwise idle, to the needed die with the most free slots that no channel of its own
  still feeds (default false; the precise rule is in :mod:`.fsedp_sched`);
* ``slack``: QoS token buffering, 0 (default) to 1: the (token, expert) pairs of the coldest
  experts, whole experts at a time and at most ``slack x tokens`` pairs, are deferred.

**Deferred pairs.** The paper computes deferred pairs in the next iteration. So that one
iteration still produces every output (``moec check``), the expansion ends, after a
``signal``/``wait <layer>.deferred`` barrier on every die, with a *catch-up* step that streams
the deferred experts to their dies the same way: that is the next iteration's work, and
:mod:`.fsedp_deferred` takes it out of the layer's timing and reports ``deferred_pairs``.

Before/after on die 0 of ``fsedp-2x2``, expert 3 needed by dies 0 (tokens 0..1) and 1
(token 5), one slice::

    moe moe0              load s0 <- ch3 moe0:e3:s0 bytes 49152
                ==>       gemm s0 tokens 0..1 / act s0 tokens 0..1 / accum s0 tokens 0..1
                          send s0 -> 1 bytes 49152
                          free s0
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from moec.backends.interp import relay_records
from moec.backends.interp.expand import (
    ExpandContext,
    layer_context,
    layouts_for,
    register,
)
from moec.backends.interp.expand.fsedp_deferred import deferred_event
from moec.backends.interp.expand.fsedp_engine import Engine
from moec.backends.interp.expand.fsedp_sched import Problem, Schedule, Unit, check_fits, schedule
from moec.backends.interp.opgraph import precision_of
from moec.ir.cost import GB, dram_occupancy
from moec.ir.errors import ScheduleError
from moec.ir.routing import LayerRouting
from moec.ir.stream.params import FSEDP_ORDERS, FSEDPParams
from moec.ir.stream.program import Instr, Program, Signal, TokenSet, Wait
from moec.ir.target import Target

ORDERS = FSEDP_ORDERS


def paired_order(load: Sequence[int]) -> list[int]:
    """Experts with load, hottest, coldest, 2nd hottest, 2nd coldest, ... (ties: lower id).

    >>> paired_order([5, 0, 9, 1, 3])
    [2, 3, 0, 4]
    """
    hot = sorted((e for e, n in enumerate(load) if n > 0), key=lambda e: (-load[e], e))
    out: list[int] = []
    lo, hi = 0, len(hot) - 1
    while lo <= hi:
        out.append(hot[lo])
        if lo != hi:
            out.append(hot[hi])
        lo, hi = lo + 1, hi - 1
    return out


def natural_order(load: Sequence[int]) -> list[int]:
    """Experts with load, ascending id."""
    return [e for e, n in enumerate(load) if n > 0]


def deferred_experts(load: Sequence[int], tokens: int, slack: float) -> list[int]:
    """The coldest experts whose pairs, together, stay within ``slack x tokens`` (ascending id).

    Whole experts go coldest first (ties: lower id), so a deferred expert is not loaded at all
    in this iteration; the first that does not fit ends the selection.

    >>> deferred_experts([5, 1, 9, 2, 1], tokens=10, slack=0.3)
    [1, 4]
    """
    budget = math.floor(slack * tokens + 1e-9)
    out: list[int] = []
    used = 0
    for e in sorted((e for e, n in enumerate(load) if n > 0), key=lambda e: (load[e], e)):
        if used + load[e] > budget:
            break
        out.append(e)
        used += load[e]
    return sorted(out)


#: a kind of slices' widths, bytes and precisions, and per slice the first alike
#: (:attr:`Unit.alike`)
Shape = tuple[list[int], tuple[int, ...], list[str], tuple[int, ...]]


def _units(
    ctx: ExpandContext, engine: Engine, experts: list[int], home: np.ndarray,
    channels: list[int], with_shared: bool,
) -> list[Unit]:  # fmt: skip
    t, m, r = ctx.target, ctx.layer, ctx.routing
    C = len(t.channels)
    units: list[Unit] = []
    mats = 3 if m.gated else 2  # shared experts are gated exactly when the routed ones are
    gated = m.gated  # the shared experts too (the ISA's ``gated`` covers both)
    hidden, slice_compute = m.hidden, engine.slice_compute
    #: per precision-table entry (None: the layer's list), the slices' bytes and precisions
    shapes: dict[tuple[bool, str | None], Shape] = {}

    def shape_of(expert: int | None) -> Shape:
        prec = ctx.policy.precision[expert] if expert is not None and ctx.policy.precision else None
        key = (expert is None, prec)
        hit = shapes.get(key)
        if hit is None:
            lay = ctx.layout if expert is not None else ctx.shared_layout
            assert lay is not None
            widths = [lay.width(j) for j in range(lay.count)]
            nbytes = tuple(ctx.slice_bytes(expert, j) for j in range(lay.count))
            # the precision the interpreter reads off each slice's load bytes
            precs = [precision_of(nbytes[j], mats * m.hidden * widths[j], m.dtype)
                     for j in range(lay.count)]  # fmt: skip
            # per slice, the first of its width and precision (the same compute durations)
            firsts: dict[tuple[int, str], int] = {}
            alike = tuple(
                firsts.setdefault(wp, j) for j, wp in enumerate(zip(widths, precs, strict=True))
            )
            hit = shapes[key] = (widths, nbytes, precs, alike)
        return hit

    def make(
        expert: int | None, per_die: dict[int, TokenSet], counts: dict[int, int], base: int
    ) -> Unit:
        widths, nbytes, precs, alike = shape_of(expert)

        def compute(d: int, j: int, _c: dict[int, int] = counts) -> tuple[float, ...]:
            return slice_compute(d, _c[d], hidden, widths[j], gated, precs[j])

        return Unit(expert, per_die, nbytes, tuple((base + j) % C for j in range(len(nbytes))),
                    compute, alike)  # fmt: skip

    if with_shared and m.shared_ffn and ctx.shared_layout is not None:
        everyone = _groups(r, None, home)
        per_die, counts = everyone.get(0, ({}, {}))
        units.append(make(None, per_die, counts, 0))
    groups = _groups(r, experts, home)
    for e in experts:
        per_die, counts = groups.get(e, ({}, {}))
        units.append(make(e, per_die, counts, channels[e]))
    return units


#: per expert, per home die, its tokens and their number (:func:`_tokens_per_die`)
Groups = dict[int, tuple[dict[int, TokenSet], dict[int, int]]]
#: :func:`_groups`' results while :func:`plans_shared` is active: per (routing object id,
#: experts), that routing and home array (kept alive, so an id is not reused) and the groups
_GROUPS: dict[tuple[int, tuple[int, ...] | None], tuple[LayerRouting, np.ndarray, Groups]] | None
_GROUPS = None


def _groups(r: LayerRouting, experts: list[int] | None, home: np.ndarray) -> Groups:
    """The pairs of routing ``r`` of ``experts`` grouped by expert and home die
    (:func:`_tokens_per_die`); with ``experts`` None, every token as expert 0's (the shared
    experts'). The same for every slice count of a layer: inside :func:`plans_shared` grouped
    once per routing object, home array and experts, and the candidate programs share the
    token sets (within one program each expert and die still has its own set, as the SRAM
    accounting's identity keys expect)."""
    key = (id(r), None if experts is None else tuple(experts))
    if _GROUPS is not None:
        hit = _GROUPS.get(key)
        if hit is not None and hit[0] is r and hit[1] is home:
            return hit[2]
    T, k = r.ids.shape
    if experts is None:
        out = _tokens_per_die(np.zeros(T, np.int64), np.arange(T, dtype=np.int64), home)
    else:
        flat_e = r.ids.reshape(-1).astype(np.int64)
        flat_t = np.repeat(np.arange(T, dtype=np.int64), k)
        flat_t, flat_e = flat_t[flat_e >= 0], flat_e[flat_e >= 0]  # -1: dropped by a skip rule
        # only the pairs of ``experts`` grouped (a catch-up's are a few experts of all)
        wanted = np.zeros(max([r.num_experts, *(e + 1 for e in experts)]), np.bool_)
        wanted[experts] = True
        at = wanted[flat_e]
        out = _tokens_per_die(flat_e[at], flat_t[at], home)
    if _GROUPS is not None:
        _GROUPS[key] = (r, home, out)
    return out


def _tokens_per_die(
    experts: np.ndarray, tokens: np.ndarray, home: np.ndarray
) -> dict[int, tuple[dict[int, TokenSet], dict[int, int]]]:
    """Per expert of the (expert, token) pairs, per home die of its tokens (ascending), the
    die's tokens as a :class:`TokenSet` and their number (a pair given twice counts once):
    one sort of all pairs instead of a pass per expert and die, and each group's ranges,
    set and view of the tokens made by ``map`` (in C) rather than in a loop per group."""
    die = home[tokens]
    order = np.lexsort((tokens, die, experts))
    e, d, tok = experts[order], die[order], tokens[order]
    keep = np.ones(e.size, dtype=bool)
    keep[1:] = (e[1:] != e[:-1]) | (tok[1:] != tok[:-1])  # a pair's duplicates: adjacent
    e, d, tok = e[keep], d[keep], tok[keep]
    n = int(e.size)
    if n == 0:
        return {}
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = (e[1:] != e[:-1]) | (d[1:] != d[:-1])
    new_run = new_group.copy()
    new_run[1:] |= tok[1:] != tok[:-1] + 1
    run_first = np.flatnonzero(new_run)
    run_last = np.append(run_first[1:], n) - 1
    ranges = list(zip(tok[run_first].tolist(), tok[run_last].tolist(), strict=True))
    # per group (expert, die): its pairs ``g_first .. g_end - 1``, its runs ``cut[g] ..
    # cut[g + 1] - 1``
    g_first = np.flatnonzero(new_group)
    g_end = np.append(g_first[1:], n)
    cut = np.searchsorted(run_first, g_first).tolist()
    cut.append(len(ranges))
    runs = map(ranges.__getitem__, map(slice, cut[:-1], cut[1:]))
    # each set keeps its tokens (a view of one array): the SRAM accounting reads them
    tok64 = tok.astype(np.int64, copy=False)
    views = map(tok64.__getitem__, map(slice, g_first.tolist(), g_end.tolist()))
    sets = map(TokenSet.keep_indices, map(TokenSet, map(tuple, runs)), views)
    out: dict[int, tuple[dict[int, TokenSet], dict[int, int]]] = {}
    sizes = (g_end - g_first).tolist()
    groups = zip(e[g_first].tolist(), d[g_first].tolist(), sets, sizes, strict=True)
    for ex, di, ts, size in groups:
        hit = out.get(ex)
        if hit is None:
            hit = out[ex] = ({}, {})
        hit[0][di] = ts
        hit[1][di] = size
    return out


def _problem(ctx: ExpandContext, engine: Engine, units: list[Unit], order: tuple[int, ...],
             closed: bool, rules: str, r5: bool, order_kind: str) -> Problem:  # fmt: skip
    t = ctx.target
    slots = {d: ctx.slots_of(d) for d in range(t.num_dies)}
    return Problem(
        ctx.layer.name, t.num_dies, order, closed, slots, units, engine, rules=rules, r5=r5,
        channel_die=tuple(c.die for c in t.channels), hops=t.hops, paired=order_kind == "paired",
        balanced=order_kind == "balanced", dram_bytes_per_s=t.total_dram_gbps() * GB,
    )  # fmt: skip


Plan = tuple[Schedule, Schedule | None, list[int]]
#: plan()'s results while :func:`plans_shared` is active: per (program, layer, target, routing)
#: object ids, those objects (kept alive, so an id is not reused), the plan (None until
#: scheduled; its catch-up None until asked for) and the iteration it is scheduled from (built
#: once, for :func:`iteration_bound` and the schedule alike)
Plans = dict[tuple[int, str, int, int], tuple[tuple[object, ...], "Plan | None", "_Iteration"]]
_PLANS: Plans | None = None


@contextmanager
def plans_shared() -> Iterator[Plans]:
    """Within the block, :func:`plan` of one program object's layer for one target and routing
    object is computed once: a caller that predicts a program's span
    (:func:`predicted_span`) and then times it (``moec.fsedp_slices``) schedules it once, and
    its iteration (:func:`iteration_bound`'s too) is built once; the pairs of one routing
    object are grouped by expert and die once for every program (:func:`_groups`). Yields the
    plans (a caller may drop the entries it no longer needs); nested uses share the outer
    ones."""
    global _PLANS, _GROUPS
    outer, outer_groups = _PLANS, _GROUPS
    if outer is None:
        _PLANS, _GROUPS = {}, {}
    try:
        yield _PLANS  # type: ignore[misc]
    finally:
        _PLANS, _GROUPS = outer, outer_groups


def _key(ctx: ExpandContext) -> tuple[tuple[object, ...], tuple[int, str, int, int]]:
    objs = (ctx.program, ctx.target, ctx.routing)
    return objs, (id(ctx.program), ctx.layer.name, id(ctx.target), id(ctx.routing))


def _shared(ctx: ExpandContext) -> tuple[Plan | None, _Iteration] | None:
    """The plan (or None) and iteration kept for ``ctx`` inside :func:`plans_shared`, if any."""
    if _PLANS is None:
        return None
    objs, key = _key(ctx)
    hit = _PLANS.get(key)
    if hit is None or not all(a is b for a, b in zip(hit[0], objs, strict=True)):
        return None
    return hit[1], hit[2]


def _shared_iteration(ctx: ExpandContext) -> _Iteration:
    """:func:`_iteration` of ``ctx``, kept inside :func:`plans_shared` for the schedule."""
    hit = _shared(ctx)
    if hit is not None:
        return hit[1]
    it = _iteration(ctx)
    if _PLANS is not None:
        objs, key = _key(ctx)
        _PLANS[key] = (objs, None, it)
    return it


def plan(ctx: ExpandContext, streams: bool = True, catchup: bool = True) -> Plan:
    """The iteration's schedule, the catch-up schedule of the deferred experts (or None), and
    the deferred experts (the whole plan computed once per program, layer, target and routing
    object inside :func:`plans_shared`). Without ``streams`` the schedules hold no instructions
    (their estimate, paths and peaks only); without ``catchup`` the catch-up need not be
    scheduled (None; inside :func:`plans_shared` it is scheduled when first asked for, so a
    prediction that is never timed does not schedule it)."""
    if _PLANS is None:
        return _plan(_iteration(ctx), ctx, streams, catchup)
    objs, key = _key(ctx)
    hit = _shared(ctx)
    if not streams:
        # an iteration kept but not yet scheduled is played here; scheduling moves its
        # engine's clocks, so the entry goes (a timing then builds and schedules its own)
        if hit is not None and hit[0] is None:
            del _PLANS[key]
            return _plan(hit[1], ctx, streams, catchup)
        return _plan(_iteration(ctx), ctx, streams, catchup)
    got, it = hit if hit is not None else (None, _iteration(ctx))
    if got is None:
        got = (schedule(it.problem, True), None, it.deferred)
        _PLANS[key] = (objs, got, it)
    main, late, deferred = got
    if catchup and deferred and late is None:
        late = _catchup(ctx, it, True)
        _PLANS[key] = (objs, (main, late, deferred), it)
    return main, late, deferred


@dataclass(frozen=True)
class _Iteration:
    """What :func:`_plan` reads off a layer's context: the iteration's problem (the experts
    not deferred), and what the catch-up step needs."""

    problem: Problem
    deferred: list[int]
    load: list[int]
    home: np.ndarray
    channels: list[int]
    params: FSEDPParams


def _iteration(ctx: ExpandContext) -> _Iteration:
    m, r, t = ctx.layer, ctx.routing, ctx.target
    E, C = m.experts, len(t.channels)
    params = ctx.typed(FSEDPParams)  # the trajectory is checked there: a Hamiltonian cycle/path
    order = params.trajectory if params.trajectory is not None else tuple(range(t.num_dies))
    channels = list(params.channels) if params.channels is not None else [e % C for e in range(E)]
    home = np.asarray(r.home_die, dtype=np.int64)
    load = np.bincount(r.ids[r.ids >= 0], minlength=E).astype(np.int64).tolist()
    deferred = deferred_experts(load, r.tokens, params.slack) if params.slack > 0 else []
    kept = [n if e not in deferred else 0 for e, n in enumerate(load)]
    experts = paired_order(kept) if params.order == "paired" else natural_order(kept)
    engine = Engine(ctx.program, t)
    units = _units(ctx, engine, experts, home, channels, True)
    prob = _problem(ctx, engine, units, order, params.closed, params.rules, params.r5, params.order)
    return _Iteration(prob, deferred, load, home, channels, params)


def _plan(it: _Iteration, ctx: ExpandContext, streams: bool, catchup: bool) -> Plan:
    main = schedule(it.problem, streams)
    late = _catchup(ctx, it, streams) if it.deferred and catchup else None
    return main, late, it.deferred


def _catchup(ctx: ExpandContext, it: _Iteration, streams: bool) -> Schedule:
    """The catch-up step's schedule of iteration ``it``'s deferred experts."""
    params, load, deferred = it.params, it.load, it.deferred
    late = paired_order([load[e] if e in deferred else 0 for e in range(ctx.layer.experts)])
    if params.order != "paired":
        late = sorted(late)
    # the catch-up step starts after the iteration's barrier: an idle package again
    engine = Engine(ctx.program, ctx.target)
    units = _units(ctx, engine, late, it.home, it.channels, False)
    order = it.problem.order
    return schedule(
        _problem(ctx, engine, units, order, params.closed, params.rules, params.r5,
                 params.order), streams,
    )  # fmt: skip


def iteration_bound(p: Program, target: Target, layer: str, routing: LayerRouting) -> float:
    """A lower bound (seconds) on what the interpreter measures for FSE-DP ``layer``'s iteration
    under ``routing``, found without scheduling it: the larger of the most any DRAM channel is
    held by the iteration's reads and the most any die's compute unit is held by its slice
    computes. Both are fixed by the routing before any rule is played: each micro-slice of an
    expert with tokens is read once from its channel (under naive rules once by each die that
    needs it), whichever die it enters, and computed once by each die that needs it; the
    interpreter's channel and compute unit each serve one op at a time, every one of them within
    the layer's span, whatever order they take (deferred pairs' catch-up is outside that span
    and not counted). The channel term is :func:`moec.fsedp_slices.channel_bound` of the
    schedule's streams, summed in another order. Raises the :class:`ScheduleError` the
    scheduler would when the layer's slots do not fit its trajectory."""
    ctx = _context(p, target, layer, routing)
    prob = _shared_iteration(ctx).problem
    try:
        check_fits(prob)
    except ScheduleError:
        if _PLANS is not None:  # never scheduled: not kept
            _PLANS.pop(_key(ctx)[1], None)
        raise
    held = [0.0] * len(target.channels)
    busy = [0.0] * target.num_dies
    occupancy: dict[tuple[int, int], float] = {}  # per (channel, bytes): one read's hold
    reads = 1
    for u in prob.units:
        if not u.tokens:
            continue
        if prob.rules == "naive":
            reads = len(u.tokens)
        for ch, nbytes in zip(u.channels, u.slice_bytes, strict=True):
            hold = occupancy.get((ch, nbytes))
            if hold is None:
                hold = occupancy[ch, nbytes] = dram_occupancy(target, ch, nbytes)
            held[ch] += reads * hold
        # slices alike (``Unit.alike``) compute alike: each die's sum once per kind of slice,
        # then added slice by slice in order, the same float sums as one call per slice
        alike = u.alike or range(len(u.slice_bytes))
        kinds = sorted(set(alike))
        for d in u.tokens:
            per_kind = {a: sum(u.compute(d, a)) for a in kinds}
            b = busy[d]
            for a in alike:
                b += per_kind[a]
            busy[d] = b
    return max(max(held, default=0.0), max(busy, default=0.0))


def _context(p: Program, target: Target, layer: str, routing: LayerRouting) -> ExpandContext:
    m = next(m for m in p.layers if m.name == layer)
    lays = layouts_for(p, target)
    return layer_context(p, target, m, routing, lays[(layer, False)], lays.get((layer, True)))


def predicted_span(p: Program, target: Target, layer: str, routing: LayerRouting) -> float:
    """The scheduler's own estimate (seconds, on the interpreter's clock from an idle package)
    of FSE-DP ``layer``'s iteration under ``routing``: what its streams take, without writing
    them into a program or timing them (the interpreter agrees to within a few tenths of a
    percent, ``scripts/fsedp_sched_gap.py``). Deferred pairs' catch-up is not counted, as the
    layer's timing does not count it. Outside :func:`plans_shared` it schedules without
    instructions or catch-up (cheaper); inside, the whole plan, which the timing then reuses."""
    if _PLANS is not None:
        return predicted_schedule(p, target, layer, routing).estimate_s
    return plan(_context(p, target, layer, routing), streams=False, catchup=False)[0].estimate_s


def predicted_schedule(
    p: Program, target: Target, layer: str, routing: LayerRouting, streams: bool = True
) -> Schedule:
    """The schedule of FSE-DP ``layer``'s iteration under ``routing`` (its ``estimate_s`` is
    :func:`predicted_span`; its ``streams`` what the expansion writes before the catch-up).
    Without ``streams``: the same schedule with every die's stream empty, about half the cost,
    and not kept by :func:`plans_shared` (a timing then schedules the layer again)."""
    return plan(_context(p, target, layer, routing), streams=streams, catchup=False)[0]


@register("fsedp")
def expand(ctx: ExpandContext) -> dict[int, list[Instr]]:
    main, catchup, _ = plan(ctx)
    D = ctx.target.num_dies
    if catchup is None:
        return {d: relay_records.joined([main.streams.get(d, [])]) for d in range(D)}
    ev = deferred_event(ctx.layer.name)
    late = catchup.streams
    return {
        d: relay_records.joined(
            [main.streams.get(d, []), [Signal(ev), Wait(ev, D)], late.get(d, [])]
        )
        for d in range(D)
    }
