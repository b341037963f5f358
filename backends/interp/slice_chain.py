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
(channel, die, bytes, the slice's layer and geometry, token counts): the read's chain
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

from collections.abc import Sequence
from typing import Any

from moec.backends.interp.opgraph import COMPUTE, LOAD, SLICE_CHAIN, SYNC, Builder, DieState
from moec.backends.interp.timing_ops import free, load, unit_costs
from moec.ir.stream.program import HOST_CHANNEL, Accum, Act, Free, Gemm, Instr, Load, SliceRef


def _template(
    b: Builder, die: int, il: Load, c: SliceRef, geo: tuple[int, int, int, str, bool], ng: int,
    na: int, nc: int,
) -> tuple[Any, ...]:  # fmt: skip
    """What :func:`slice_run` appends for one chain of one shape: the read's template, the slice's
    precision and layer index, the three compute ops' durations and energy parts, and the bytes
    of the slice's ``h`` (the values the handlers compute, from the same memos)."""
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
    lk = b.layers[c.layer][0]
    ops_kinds = kinds + (COMPUTE, COMPUTE, COMPUTE, SYNC)
    ops_durs = durs + (dg, da, dc, 0.0)
    ops_res = res + (die, die, die, -1)
    # the read's charges (Builder.read), then the three compute ops' (slice_unit), as one block
    charges = read_charges + tuple((k + o, d, part, j) for o, d, part, j in unit_charges)
    return (
        k, ops_kinds, ops_durs, ops_res, backs, charges, links, prec, lk, hb, (die,) * (k + 4),
        (lk,) * (k + 4),
    )  # fmt: skip


def slice_run(b: Builder, s: DieState, ins: Sequence[Instr], j: int) -> int:
    """Add the chains of streamed micro-slices that start at ``ins[j]``, one after the other,
    as their handlers would (module doc); the index after the last one added (``j``: none,
    ``ins[j]`` does not start a plain streamed micro-slice).

    A run of chains is one call: what stays the same from one chain to the next (the graph's
    lists, the die's fence, the memos) is looked up once, and the energy charges are logged as
    one run (:meth:`~.energy.EnergyLedger.log_run`, in chain order)."""
    n = len(ins)
    die = s.die
    g = b.g
    kind, dur, res, src, dst, runs = g.kind, g.dur, g.res, g.src, g.dst, g.runs
    g_die, g_layer, g_instr, back_of = g.die, g.layer, g.instr, g.back_of
    memo, geometries, acts = b.chains, b.geometries, b.acts
    link_bytes, dram_bytes = b.link_bytes, b.dram_bytes
    slot_free, slot_fill, slot_fill_info = s.slot_free, s.slot_fill, s.slot_fill_info
    slot_uses, slot_fill_rec, pending_h = s.slot_uses, s.slot_fill_rec, s.pending_h
    last_recv = s.last_recv
    fence = s.fence  # no chain waits: the same for the whole run
    last_compute = s.last_compute
    firsts: list[int] = []
    blocks: list[Any] = []
    since: list[int] = []
    closed: list[int] = []
    la_key: tuple[int, int] | None = None
    la: Any = None
    first = len(kind)
    while j + 4 < n:
        il = ins[j]
        if type(il) is not Load:
            break
        ig, ia, ic, ifr = ins[j + 1], ins[j + 2], ins[j + 3], ins[j + 4]
        slot = il.slot
        if not (
            type(ig) is Gemm and type(ia) is Act and type(ic) is Accum and type(ifr) is Free
            and slot == ig.slot == ia.slot == ic.slot == ifr.slot
        ):  # fmt: skip
            break
        c = il.content
        nbytes = il.nbytes
        if type(c) is not SliceRef or nbytes == 0:
            break
        tg, ta, tc = ig.tokens, ia.tokens, ic.tokens
        # token counts: ``size`` is counted once per set (``len`` is a Python call), and the
        # three instructions of a streamed slice share one set
        ng = tg.size
        na = ng if ta is tg else ta.size
        nc = ng if tc is tg else tc.size
        # the slice's geometry rather than its index in the key: an expert's slices share it
        geo = geometries.get((c.layer, c.expert is None, c.slice)) or b.slice_geometry(c)
        key = (il.channel, die, nbytes, c.layer, geo, ng, na, nc)
        tpl = memo.get(key)
        if tpl is None:
            tpl = memo[key] = _template(b, die, il, c, geo, ng, na, nc)
        (k, kinds, durs, ress, backs, charges, links, prec, lk, hb, dies, layers) = tpl
        last = first + k - 1  # the read's arrival: the slot's fill
        op = first + k  # the gemm; act, accum and free follow
        free = op + 3
        kind += kinds
        dur += durs
        res += ress
        g_die += dies
        g_layer += layers
        g_instr += (il,) * k
        g_instr += (ig, ia, ic, ifr)
        for o, back in backs:
            back_of[first + o] = back
        firsts.append(first)
        blocks.append(charges)
        for x in links:
            link_bytes[x] += nbytes
        if il.channel == HOST_CHANNEL:
            b.host_bytes[die] += nbytes
        else:
            dram_bytes[il.channel] += nbytes
        # edges, each source's in the order the handlers add them: one run, the read's chain,
        # its arrival -> gemm -> act -> accum -> free (each the first successor of its
        # source); load (fence, the slot's last free), gemm (fence, latest compute, the latest
        # x block), free (fence, the read's arrival)
        runs += (first, k + 3)
        if fence is not None:
            src += (fence, fence, fence)
            dst += (first, op, free)
        a = slot_free.get(slot)
        if a is not None:
            src.append(a)
            dst.append(first)
        if last_compute is not None:
            src.append(last_compute)
            dst.append(op)
        a = last_recv.get((c.layer, "x"))
        if a is not None:
            src.append(a)
            dst.append(op)
        src.append(last)
        dst.append(free)
        # the die's state after the five: the slot filled, computed and freed
        slot_fill[slot] = last
        slot_fill_info[slot] = (c, prec)
        slot_uses.pop(slot, None)
        slot_fill_rec.pop(slot, None)
        pending_h.pop(slot, None)
        slot_free[slot] = free
        last_compute = op + 2
        since += (last, op + 2, free)
        closed += (die, first, free)
        # SRAM records of the layer's activations
        if la_key != (die, lk):
            la_key = (die, lk)
            la = acts.get(la_key) or b.layer_acts(die, lk)
        la.ops += (first, last, op, op + 1, op + 2, free)
        la.x_uses.append((op, tg))
        la.accums.append((op + 2, tc))
        la.h += (op, op + 2, hb)
        first = free + 1
        j += 5
    if firsts:
        b.energy.log_run(firsts, blocks)
        s.last_compute = last_compute
        s.since_signal += since
        b.closed_fills += closed
    return j


SLICE_CHAIN.append((slice_run, (load, free)))
