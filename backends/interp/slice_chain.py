"""A streamed micro-slice in one step: ``load``, ``gemm``, ``act``, ``accum``, ``free`` on one slot.

EP, TP, Hydra and EPLB stream every micro-slice as the same five instructions, one after the
other in a die's stream (:func:`.expand.ep._stream_slices`)::

    load s3 <- ch1 moe0.e7.s2 bytes 2359296
    gemm s3 tokens 0..15
    act s3 tokens 0..15
    accum s3 tokens 0..15
    free s3

:func:`slice_chain` adds their ops, edges, energy charges and SRAM records in one call, from one
template memoized per shape (channel, die, bytes, the slice's layer and geometry, token
counts): the read's chain
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

from typing import Any

from moec.backends.interp.opgraph import COMPUTE, LOAD, SLICE_CHAIN, SYNC, Builder, DieState
from moec.backends.interp.timing_ops import free, load, unit_costs
from moec.ir.stream.program import HOST_CHANNEL, Accum, Act, Free, Gemm, Load, SliceRef


def _template(
    b: Builder, die: int, il: Load, c: SliceRef, geo: tuple[int, int, int, str, bool], ng: int,
    na: int, nc: int,
) -> tuple[Any, ...]:  # fmt: skip
    """What :func:`slice_chain` appends for one shape: the read's template, the slice's
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
    kinds, durs, res, ndeps, backs, read_charges, links = read
    k = len(kinds)
    r = (die,)
    lk = b.layers[c.layer][0]
    ops_kinds = kinds + (COMPUTE, COMPUTE, COMPUTE, SYNC)
    ops_durs = durs + (dg, da, dc, 0.0)
    ops_res = res + (r, r, r, ())
    # the read's charges (Builder.read), then the three compute ops' (slice_unit), as one block
    charges = read_charges + tuple((k + o, d, part, j) for o, d, part, j in unit_charges)
    return (
        k, ops_kinds, ops_durs, ops_res, ndeps, backs, charges, links, prec, lk, hb,
        (die,) * (k + 4), (lk,) * (k + 4),
    )  # fmt: skip


def slice_chain(
    b: Builder, s: DieState, il: Load, ig: Gemm, ia: Act, ic: Accum, ifr: Free
) -> bool:  # fmt: skip
    """Add the five instructions' ops as their handlers would (module doc); False (nothing
    added) when the chain is not a plain streamed micro-slice."""
    c = il.content
    nbytes = il.nbytes
    if type(c) is not SliceRef or nbytes == 0:
        return False
    die, slot = s.die, il.slot
    tg, ta, tc = ig.tokens, ia.tokens, ic.tokens
    # token counts: ``size`` is counted once per set (``len`` is a Python call), and the three
    # instructions of a streamed slice share one set
    ng = tg.size
    na = ng if ta is tg else ta.size
    nc = ng if tc is tg else tc.size
    # the slice's geometry rather than its index in the key: an expert's slices share it
    geo = b.geometries.get((c.layer, c.expert is None, c.slice)) or b.slice_geometry(c)
    key = (il.channel, die, nbytes, c.layer, geo, ng, na, nc)
    memo = b.chains
    tpl = memo.get(key)
    if tpl is None:
        tpl = memo[key] = _template(b, die, il, c, geo, ng, na, nc)
    (k, kinds, durs, res, ndeps, backs, charges, links, prec, lk, hb, dies, layers) = tpl
    g = b.g
    first = len(g.kind)
    last = first + k - 1  # the read's arrival: the slot's fill
    op = first + k  # the gemm; act, accum and free follow
    free = op + 3
    g.kind += kinds
    g.dur += durs
    g.res += res
    succ = g.succ
    # the read's chain, then gemm -> act -> accum; free's successors come later
    if k == 2:  # a read from the die's own channel: its hold, then its latency
        succ += ([last], [], [op + 1], [op + 2], [], [])
    else:
        succ += [[x] for x in range(first + 1, first + k)]
        succ += ([], [op + 1], [op + 2], [], [])
    g.die += dies
    g.layer += layers
    g.instr += (il,) * k
    g.instr += (ig, ia, ic, ifr)
    for j, back in backs:
        g.back_of[first + j] = back
    b.energy.log(first, charges)
    link_bytes = b.link_bytes
    for x in links:
        link_bytes[x] += nbytes
    if il.channel == HOST_CHANNEL:
        b.host_bytes[die] += nbytes
    else:
        b.dram_bytes[il.channel] += nbytes
    # edges, in the order the handlers add them: load (fence, the slot's last free), gemm
    # (fence, latest compute, the slot's fill, the latest x block), free (fence, fill, accum)
    fence = s.fence
    d_first = 0
    if fence is not None:
        succ[fence].append(first)
        d_first = 1
    a = s.slot_free.get(slot)
    if a is not None:
        succ[a].append(first)
        d_first += 1
    d_gemm = 1
    if fence is not None:
        succ[fence].append(op)
        d_gemm = 2
    a = s.last_compute
    if a is not None:
        succ[a].append(op)
        d_gemm += 1
    succ[last].append(op)
    a = s.last_recv.get((c.layer, "x"))
    if a is not None:
        succ[a].append(op)
        d_gemm += 1
    d_free = 2
    if fence is not None:
        succ[fence].append(free)
        d_free = 3
    succ[last].append(free)
    succ[op + 2].append(free)
    g.ndeps += ndeps
    g.ndeps[first] += d_first
    g.ndeps += (d_gemm, 1, 1, d_free)
    # the die's state after the five: the slot filled, computed and freed
    s.slot_fill[slot] = last
    s.slot_fill_info[slot] = (c, prec)
    s.slot_uses.pop(slot, None)
    s.slot_fill_rec.pop(slot, None)
    s.pending_h.pop(slot, None)
    s.slot_free[slot] = free
    s.last_compute = op + 2
    s.since_signal += (last, op + 2, free)
    b.closed_fills += (die, first, free)
    # SRAM records of the layer's activations
    la = b.acts.get((die, lk)) or b.layer_acts(die, lk)
    la.ops += (first, last, op, op + 1, op + 2, free)
    la.x_uses.append((op, tg))
    la.accums.append((op + 2, tc))
    la.h += (op, op + 2, hb)
    return True


SLICE_CHAIN.append((slice_chain, (load, free)))
