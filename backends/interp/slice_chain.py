"""A streamed micro-slice in one step: ``load``, ``gemm``, ``act``, ``accum``, ``free`` on one slot.

EP, TP, Hydra and EPLB stream every micro-slice as the same five instructions, one after the
other in a die's stream (:func:`.expand.streaming.stream_runs`)::

    load s3 <- ch1 moe0.e7.s2 bytes 2359296
    gemm s3 tokens 0..15
    act s3 tokens 0..15
    accum s3 tokens 0..15
    free s3

:func:`slice_run` adds their ops, edges, energy charges and SRAM records, for a whole run of
such chains one after the other in a stream in one call, from one template memoized per shape
(channel, die, bytes, the slice's geometry, token counts; no layer in it, so the parts of a
layer-by-layer run share it): the read's chain
(:meth:`~.opgraph.Builder.read`), the slice's three compute ops (:func:`.timing_ops.slice_unit`)
and the ``free``. It is not a new model: every op, duration, resource, edge (in the same place of
the same successor list), charge (in the same order) and record is what the five handlers add
one at a time with :data:`~.opgraph.SLICE_UNIT`, so the event loop pops the same events in the
same order and the timeline is the same to the bit (``Builder.batch_slices = False`` is the
reference, compared on every tiny golden in ``tests/test_sim_speed.py``). What it saves is the
builder's Python per instruction: four handler calls, their lookups of the slot's state, the
slice's geometry, precision and costs, and the op-list appends one by one.

A chain whose load moves no bytes (a residency hit, timed at the expert's precision-table
entry) or holds no micro-slice is left to the handlers.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Sequence
from itertools import chain
from operator import attrgetter, itemgetter
from typing import Any

import numpy as np

from moec.backends.interp.chain_hints import take
from moec.backends.interp.opgraph import COMPUTE, LOAD, SLICE_CHAIN, SYNC, Builder, DieState
from moec.backends.interp.timing_ops import free, load, unit_costs
from moec.ir.stream.program import HOST_CHANNEL, Accum, Act, Free, Gemm, Instr, Load, SliceRef

_SLOT, _TOKENS = attrgetter("slot"), attrgetter("tokens")
#: whether a run of one chain takes :func:`_one_chain` (False: the arrays of any run, which
#: ``tests/test_slice_chain.py`` compares it with)
ONE_CHAIN = True


def _template(
    b: Builder, die: int, il: Load, c: SliceRef, geo: tuple[int, int, int, str, bool], ng: int,
    na: int, nc: int,
) -> tuple[Any, ...]:  # fmt: skip
    """What :func:`slice_run` appends for one chain of one shape: the read's template, the slice's
    precision, the three compute ops' durations and energy parts, and the bytes of the slice's
    ``h`` (the values the handlers compute, from the same memos). Nothing in it names the
    chain's layer (its ops' layer index is the run's, added by :func:`slice_run`), so the
    parts of a layer-by-layer run share the templates (:attr:`.cost_memo.CostMemo.chains`)."""
    nbytes = il.nbytes
    key = (LOAD, il.channel, die, nbytes)
    read = b.costs.read_ops.get(key)
    if read is None:
        read = b.costs.read_ops[key] = b._read_template(LOAD, il.channel, die, nbytes)
    prec = b.slice_precision(c, nbytes)
    hidden, w, _, dtype, gated = geo
    (dg, da, dc), _, _, _, hb, unit_charges = unit_costs(
        b, die, ng, na, nc, hidden, w, gated, prec, dtype
    )
    kinds, durs, res, backs, read_charges, links = read
    k = len(kinds)
    ops_kinds = kinds + (COMPUTE, COMPUTE, COMPUTE, SYNC)
    ops_durs = durs + (dg, da, dc, 0.0)
    ops_res = res + (die, die, die, -1)
    # the read's charges (Builder.read), then the three compute ops' (slice_unit), as one block
    charges = read_charges + tuple((k + o, d, part, j) for o, d, part, j in unit_charges)
    return (k, ops_kinds, ops_durs, ops_res, backs, charges, links, prec, hb, il.channel, nbytes)


def _slice_templates(b: Builder, die: int, c: SliceRef) -> tuple[Any, dict[Any, Any]]:
    """Slice ``c``'s geometry and its templates per shape on die ``die`` (shared by the slices
    of one geometry, and by the parts of a layer-by-layer run: ``b.costs``), memoized in
    ``b.chains`` under ``(die, layer, shared, slice)``."""
    geo = b.slice_geometry(c)
    shapes = b.costs.chains.setdefault((die, geo), {})
    hit = b.chains[(die, c.layer, c.expert is None, c.slice)] = (geo, shapes)
    return hit


def _lookup(b: Builder, die: int, il: Load, ng: int, na: int, nc: int) -> Any:
    """The template of the chain that ``il`` loads, for these token counts: per slice on this
    die, its geometry and the templates of its shapes (the geometry's, shared by an expert's
    slices of one width: two small keys rather than one nested), made when missing."""
    c = il.content
    of_slice = b.chains.get((die, c.layer, c.expert is None, c.slice))
    if of_slice is None:
        of_slice = _slice_templates(b, die, c)
    geo, shapes = of_slice
    key = (il.channel, il.nbytes, ng, na, nc)
    tpl = shapes.get(key)
    if tpl is None:
        tpl = shapes[key] = _template(b, die, il, c, geo, ng, na, nc)
    return tpl


def _chains(
    b: Builder, s: DieState, ins: Sequence[Instr], j: int
) -> tuple[list[Any], int, dict[int, list[Any]]]:  # fmt: skip
    """The templates of the chains from ``ins[j]`` on (one per chain, in order), the index
    after the last (plain streamed micro-slices of one layer, one after the other), and each
    template's ``[template, chains]`` by its id, in order of first use. A block the expansion
    made with its chains' shapes (:mod:`.chain_hints`) is taken whole, one lookup per shape;
    any other chain is checked and looked up on its own."""
    n = len(ins)
    die = s.die
    tpls: list[Any] = []
    uses: dict[int, list[Any]] = {}
    layer = None
    while j + 4 < n:
        il = ins[j]
        if type(il) is not Load:
            break
        c = il.content
        if type(c) is SliceRef and (layer is None or c.layer == layer):
            reps = take(ins, j)
            if reps is not None:  # the shapes' templates in order of first use, as below
                of = {}
                for r, m in Counter(reps).items():
                    ng = ins[j + 5 * r + 1].tokens.size  # a streamed slice's steps share a set
                    tpl = of[r] = _lookup(b, die, ins[j + 5 * r], ng, ng, ng)
                    _use(uses, tpl, m)
                tpls += map(of.__getitem__, reps)
                layer = c.layer
                j += 5 * len(reps)
                continue
        ig, ia, ic, ifr = ins[j + 1], ins[j + 2], ins[j + 3], ins[j + 4]
        slot = il.slot
        if not (
            type(ig) is Gemm and type(ia) is Act and type(ic) is Accum and type(ifr) is Free
            and slot == ig.slot == ia.slot == ic.slot == ifr.slot
        ):  # fmt: skip
            break
        if type(c) is not SliceRef or il.nbytes == 0:
            break
        if c.layer != layer:
            if layer is not None:
                break  # one layer a run: its activations' records and its latest x block
            layer = c.layer
        tg, ta, tc = ig.tokens, ia.tokens, ic.tokens
        # token counts: ``size`` is counted once per set (``len`` is a Python call), and the
        # three instructions of a streamed slice share one set
        ng = tg.size
        na = ng if ta is tg else ta.size
        nc = ng if tc is tg else tc.size
        tpl = _lookup(b, die, il, ng, na, nc)
        tpls.append(tpl)
        _use(uses, tpl, 1)
        j += 5
    return tpls, j, uses


def _use(uses: dict[int, list[Any]], tpl: Any, m: int) -> None:
    """Count ``m`` more chains of template ``tpl`` in ``uses``."""
    hit = uses.get(id(tpl))
    if hit is None:
        uses[id(tpl)] = [tpl, m]
    else:
        hit[1] += m


def _flat(*columns: np.ndarray) -> list[int]:
    """The columns' rows one after the other: ``a[0], b[0], .., a[1], b[1], ..``."""
    return np.stack(columns, axis=1).ravel().tolist()


def _flat_bytes(*columns: np.ndarray) -> bytes:
    """:func:`_flat` as the bytes of int64s (what a typed column of the op graph appends)."""
    return np.stack(columns, axis=1).astype(np.int64, copy=False).tobytes()


def slice_run(b: Builder, s: DieState, ins: Sequence[Instr], j: int) -> int:
    """Add the chains of streamed micro-slices that start at ``ins[j]``, one after the other,
    as their handlers would (module doc); the index after the last one added (``j``: none,
    ``ins[j]`` does not start a plain streamed micro-slice).

    A run of chains (of one layer) is one call: each chain's template is looked up in turn,
    then the run's ops, edges, charges, records and the die's state are added column by
    column, from arrays over the run's chains. The edge log gets each source's edges in the
    order the handlers add them (the only order the event loop reads: it sorts the log by
    source, stably); the sources of the run's edges are the fence, the latest x block, the
    die's latest compute and slot frees before the run, and the run's own arrivals, accums and
    frees, each in one kind of edge only, so the edges may go kind by kind."""
    tpls, after, uses = _chains(b, s, ins, j)
    if not tpls:
        return j
    if len(tpls) == 1 and ONE_CHAIN:
        _one_chain(b, s, ins, j, tpls[0])
        return after
    die = s.die
    g = b.g
    n = len(tpls)
    first0 = len(g.kind)
    i64 = np.int64
    segments = _segments(tpls, uses)
    if len(segments) == 1:  # every chain's read has the same ops
        k = segments[0][2][0]
        ks = np.full(n, k, i64)
        firsts = np.arange(first0, first0 + (k + 4) * n, k + 4, dtype=i64)
    else:
        ks = np.empty(n, i64)
        for a, z, (k, _, _) in segments:
            ks[a:z] = k
        firsts = np.empty(n, i64)
        firsts[0] = first0
        np.cumsum(ks[:-1] + 4, out=firsts[1:])
        firsts[1:] += first0
    lasts = firsts + ks - 1  # each read's arrival: the slot's fill
    ops = firsts + ks  # the gemm; act, accum and free follow
    accums, frees = ops + 2, ops + 3
    for a, z, (k, kinds, res) in segments:  # the columns repeat along a segment
        g.kind += kinds * (z - a)
        g.res += res * (z - a)
        _instrs(g.instr, ins[j + 5 * a : j + 5 * z], k)
    g.dur += chain.from_iterable(map(itemgetter(2), tpls))
    width = int(frees[-1]) + 1 - first0  # the run's ops: one die, one layer
    g.die += [die] * width
    layer = ins[j].content.layer
    lk = b.layers[layer][0]
    g.layer.extend([lk] * width)
    loads, gemms, accs = ins[j:after:5], ins[j + 1 : after : 5], ins[j + 3 : after : 5]
    first_l, op_l = firsts.tolist(), ops.tolist()
    if any(u[0][4] for u in uses.values()):  # some read holds its channel back
        back_of = g.back_of
        for f, tpl in zip(first_l, tpls, strict=True):
            for o, back in tpl[4]:
                back_of[f + o] = back
    _count_bytes(b, die, uses)
    # edges, kind by kind (each source's in the handlers' order): the chains' runs (the
    # read's chain, its arrival -> gemm -> act -> accum -> free); the fence's (load, gemm,
    # free of each chain in turn); each load's from the slot's last free; each gemm's from
    # the latest compute and the latest x block; each free's from its read's arrival
    g.runs.frombytes(_flat_bytes(firsts, ks + 3))
    src, dst = g.src, g.dst
    fence = s.fence  # no chain waits: the same for the whole run
    if fence is not None:
        src += array("q", (fence,)) * (3 * len(tpls))
        dst.frombytes(_flat_bytes(firsts, ops, frees))
    # each load's edge from its slot's last free: the run's previous chain on the slot, or,
    # for a slot's first chain, the free before the run (none on a slot never freed)
    slots = np.fromiter(map(_SLOT, loads), i64, n)
    prev, first_c, last_c = _by_slot(slots)
    used = slots[first_c].tolist()  # the run's slots in order of first use
    slot_free = s.slot_free
    was = frees[prev]  # a slot's first chain: its entry is set next
    was[first_c] = [-1 if a is None else a for a in map(slot_free.get, used)]
    keep = was >= 0
    src.frombytes(was[keep].tobytes())
    dst.frombytes(firsts[keep].tobytes())
    slot_free.update(zip(used, frees[last_c].tolist(), strict=True))
    if s.last_compute is not None:
        src.append(s.last_compute)
        dst.append(op_l[0])
    src.frombytes(accums[:-1].tobytes())
    dst.frombytes(ops[1:].tobytes())
    a = s.last_recv.get((layer, "x"))
    if a is not None:
        src += array("q", (a,)) * len(tpls)
        dst.frombytes(ops.tobytes())
    src.frombytes(lasts.tobytes())
    dst.frombytes(frees.tobytes())
    # the die's state after the run: each slot filled, computed and freed
    s.slot_fill.update(zip(used, lasts[last_c].tolist(), strict=True))
    held_by = [(loads[c].content, tpls[c][7]) for c in last_c.tolist()]
    s.slot_fill_info.update(zip(used, held_by, strict=True))
    for held in (s.slot_uses, s.slot_fill_rec, s.pending_h):
        if held:
            for slot in used:
                held.pop(slot, None)
    s.last_compute = int(accums[-1])
    since = s.since_signal  # typed from here on: read by the ``signal`` as it is
    if type(since) is list:
        since = s.since_signal = array("q", since)
    since.frombytes(_flat_bytes(lasts, accums, frees))
    b.closed_fills += _flat(np.full(n, die, i64), firsts, frees)
    b.energy.log_run(first_l, list(map(itemgetter(5), tpls)))
    # SRAM records of the layer's activations
    la = b.acts.get((die, lk)) or b.layer_acts(die, lk)
    la.ops += _flat(firsts, lasts, ops, ops + 1, accums, frees)
    la.x_uses += zip(op_l, map(_TOKENS, gemms), strict=True)
    la.accums += zip(accums.tolist(), map(_TOKENS, accs), strict=True)
    hbs = np.fromiter(map(itemgetter(8), tpls), i64, n)
    la.h += _flat(ops, accums, hbs)
    return after


def _one_chain(b: Builder, s: DieState, ins: Sequence[Instr], j: int, tpl: Any) -> None:
    """:func:`slice_run`'s appends for a run of one chain (``ins[j : j + 5]``, template
    ``tpl``), with plain ints: the same ops, edges in the same order, charges, records and die
    state, without the arrays that pay only over many chains (naive FSE-DP's streams hold
    tens of thousands of lone chains, a load whose slice is computed and freed before the
    die's next load)."""
    die, g = s.die, b.g
    il, ig, _, ic, _ = ins[j : j + 5]
    k, kinds, durs, res, backs = tpl[:5]
    first = len(g.kind)
    last, op = first + k - 1, first + k  # the read's arrival (the slot's fill), the gemm
    accum, free_op = op + 2, op + 3
    g.kind += kinds
    g.res += res
    _instrs(g.instr, ins[j : j + 5], k)
    g.dur += durs
    g.die += [die] * (k + 4)
    layer = il.content.layer
    lk = b.layers[layer][0]
    g.layer.extend([lk] * (k + 4))
    if backs:
        for o, back in backs:
            g.back_of[first + o] = back
    _count_bytes(b, die, {id(tpl): [tpl, 1]})
    g.runs.extend((first, k + 3))
    src, dst = g.src, g.dst
    if s.fence is not None:
        src.extend((s.fence,) * 3)
        dst.extend((first, op, free_op))
    slot = il.slot
    was = s.slot_free.get(slot)
    if was is not None and was >= 0:
        src.append(was)
        dst.append(first)
    s.slot_free[slot] = free_op
    if s.last_compute is not None:
        src.append(s.last_compute)
        dst.append(op)
    x = s.last_recv.get((layer, "x"))
    if x is not None:
        src.append(x)
        dst.append(op)
    src.append(last)
    dst.append(free_op)
    s.slot_fill[slot] = last
    s.slot_fill_info[slot] = (il.content, tpl[7])
    for held in (s.slot_uses, s.slot_fill_rec, s.pending_h):
        if held:
            held.pop(slot, None)
    s.last_compute = accum
    since = s.since_signal
    if type(since) is list:
        since = s.since_signal = array("q", since)
    since.extend((last, accum, free_op))
    b.closed_fills.extend((die, first, free_op))
    b.energy.log_run([first], [tpl[5]])
    la = b.acts.get((die, lk)) or b.layer_acts(die, lk)
    la.ops.extend((first, last, op, op + 1, accum, free_op))
    la.x_uses.append((op, ig.tokens))
    la.accums.append((accum, ic.tokens))
    la.h.extend((op, accum, int(tpl[8])))


def _by_slot(slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per chain of a run whose loads use ``slots``, the run's previous chain on the same slot
    (-1: none); and per slot the run uses, in order of first use, its first and last chain."""
    order = np.argsort(slots, kind="stable")
    grouped = slots[order]
    starts = np.empty(len(order), bool)
    starts[0] = True
    np.not_equal(grouped[1:], grouped[:-1], out=starts[1:])
    ends = np.empty(len(order), bool)
    ends[-1] = True
    ends[:-1] = starts[1:]
    before = np.empty_like(order)
    before[0] = -1
    before[1:] = order[:-1]
    prev = np.empty_like(order)
    prev[order] = np.where(starts, -1, before)
    first_c, last_c = order[starts], order[ends]
    by_use = np.argsort(first_c, kind="stable")
    return prev, first_c[by_use], last_c[by_use]


def _instrs(g_instr: list[Instr | None], run: Sequence[Instr], k: int) -> None:
    """Each op's instruction, for chains whose reads have ``k`` ops each (``run``: their five
    instructions each): a chain's load for its read's ops, then its gemm, act, accum and free,
    by strided slices."""
    width = k + 4
    out: list[Any] = [None] * (width * (len(run) // 5))
    loads = run[::5]
    for o in range(k):
        out[o::width] = loads
    for o in range(1, 5):
        out[k + o - 1 :: width] = run[o::5]
    g_instr += out


def _segments(
    tpls: list[Any], uses: dict[int, list[Any]]
) -> list[tuple[int, int, tuple[int, tuple[int, ...], tuple[int, ...]]]]:  # fmt: skip
    """The run's chains cut where their reads' ops change: per segment, its first chain, the
    chain after its last, and its reads' op count, op kinds and resources (a few segments per
    run: the shared experts' slices from a remote channel, an expert streamed from another)."""
    classes: dict[tuple[Any, ...], int] = {}
    class_of = {
        t: classes.setdefault((tpl[0], tpl[1], tpl[3]), len(classes))
        for t, (tpl, _) in uses.items()
    }
    shapes = list(classes)
    if len(shapes) == 1:
        return [(0, len(tpls), shapes[0])]
    cl = np.fromiter(map(class_of.__getitem__, map(id, tpls)), np.int64, len(tpls))
    bounds = [0, *(np.flatnonzero(cl[1:] != cl[:-1]) + 1).tolist(), len(tpls)]
    return [(a, z, shapes[cl[a]]) for a, z in zip(bounds, bounds[1:], strict=False)]


def _count_bytes(b: Builder, die: int, uses: dict[int, list[Any]]) -> None:
    """The bytes the run's reads move, per link, channel or host link (each template's bytes
    times its chains, links in the order the chains first cross them)."""
    link_bytes, dram_bytes = b.link_bytes, b.dram_bytes
    for tpl, m in uses.values():
        channel, nbytes = tpl[9], tpl[10]
        for x in tpl[6]:
            link_bytes[x] += m * nbytes
        if channel == HOST_CHANNEL:
            b.host_bytes[die] += m * nbytes
        else:
            dram_bytes[channel] += m * nbytes


SLICE_CHAIN.append((slice_run, (load, free)))
