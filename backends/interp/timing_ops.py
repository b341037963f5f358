"""Timing handlers: what each opcode adds to the op graph (one handler per opcode).

Each handler receives the :class:`~.opgraph.Builder` (costs, resources, SRAM records), the die's
:class:`~.opgraph.DieState` and the instruction, and adds the instruction's ops and their edges,
in the rules of :mod:`.timing`'s docstring. A new opcode registers its handler with
``@TIMING.register("name")``; an opcode without one fails this module's import (or, declared
later, the next run).

**A micro-slice at once.** A slice's ``gemm``, ``act`` and ``accum`` on one slot, one after the
other in a die's stream, are added by :func:`slice_unit` in one call: the same three ops,
durations, charges and SRAM records as the three handlers, in the same order, but only the
edges that can release an op. The ``act``'s other edges (the die's fence, the slot's fill) and
the ``accum``'s come from ops the ``gemm`` already waits for, so they end no later than the
``gemm`` and are popped before it: the op that releases the ``act`` is always the ``gemm``
(and the ``accum``'s the ``act``), at the same time, from the same place in its successors.
Likewise the slot's ``free`` and the die's next ``signal`` wait for the ``accum`` alone, not
for the ``gemm`` and ``act`` that precede it. So every op is pushed at the same time, by the
same pop, in the same order as with the handlers one by one, and the run is the same to the
bit (``Builder.batch_slices = False`` is the reference, compared in ``tests/test_timing.py``).
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any

from moec.backends.interp.energy import charge_dense, slice_energy_parts
from moec.backends.interp.opgraph import (
    COMPUTE,
    DENSE_DRAM,
    LOAD,
    SLICE_UNIT,
    SYNC,
    TIMING,
    Builder,
    DieState,
)
from moec.backends.interp.sram import LayerActs
from moec.ir import cost
from moec.ir.activations import h_bytes
from moec.ir.errors import ScheduleError
from moec.ir.stream.printer import instr as instr_text
from moec.ir.stream.program import (
    Accum,
    Act,
    Dense,
    Free,
    Gemm,
    Load,
    MoE,
    Recv,
    Send,
    Signal,
    SliceRef,
    Wait,
)
from moec.ir.target import Target

#: Seconds of one slice compute: ``cost(target, die, tokens, hidden, width, gated, precision)``.
SliceCost = Callable[[Target, int, int, int, int, bool, str], float]


def slice_compute(
    b: Builder, s: DieState, i: Any, kind: str, cost_fn: SliceCost
) -> tuple[int, SliceRef, LayerActs, int, int, bool]:  # fmt: skip
    """A compute op of opcode ``kind`` on the micro-slice in ``i.slot`` for ``i.tokens``, timed by
    ``cost_fn`` (a :mod:`moec.ir.cost` formula), after the die's latest wait and compute and the
    slot's fill, and charged its energy (:func:`~.energy.slice_energy_parts`, with the weights
    at the precision the slot was filled with). Returns ``(op, slice, the layer's activation
    record, tokens, width, gated)``; the caller adds its own edges and then calls
    :func:`computed`."""
    content, prec = s.slot_fill_info.get(i.slot, (None, "fp16"))
    if content is None:
        raise ScheduleError(f"die {s.die}: '{instr_text(i)}' needs a micro-slice in s{i.slot}")
    hidden, w, _, dtype, gated = b.slice_geometry(content)
    n = len(i.tokens)
    lk = b.layers[content.layer][0]
    g = b.g
    die = s.die
    # duration and energy parts, memoized per shape (ops repeat a few shapes many times)
    key = (kind, die, n, hidden, w, gated, prec, dtype)
    hit = b.slice_costs.get(key)
    if hit is None:
        t = b.t
        hit = b.slice_costs[key] = (
            cost_fn(t, die, n, hidden, w, gated, prec),
            slice_energy_parts(t, kind, n, hidden, w, gated, prec, dtype),
        )
    dur, parts = hit
    op = g.add(COMPUTE, dur, die, die, i, lk)
    b.energy.charge_indexed(die, parts, op)
    la = b.acts.get((die, lk)) or b.layer_acts(die, lk)
    la.ops.append(op)
    # edges from the die's fence, latest compute and the slot's fill (op is new: no self edge)
    src, dst = g.src, g.dst
    for a in (s.fence, s.last_compute, s.slot_fill.get(i.slot)):
        if a is not None:
            src.append(a)
            dst.append(op)
    return op, content, la, n, w, gated


def _gemm_cost(t: Target, die: int, n: int, d: int, w: int, gated: bool, prec: str) -> float:
    """Gate and up projections as one ``[T, d] x [d, w]`` GEMM (``[d, 2w]`` when gated)."""
    return cost.gemm_time(t, die, n, d, w * (2 if gated else 1), prec)


def _act_cost(t: Target, die: int, n: int, d: int, w: int, gated: bool, prec: str) -> float:
    """The activation on the vector unit (:func:`moec.ir.cost.slice_activation`: a program does
    not name the experts' activation)."""
    return cost.act_time(t, die, n, w, prec, cost.slice_activation(gated), gated)


def _accum_cost(t: Target, die: int, n: int, d: int, w: int, gated: bool, prec: str) -> float:
    """The down projection ``[T, w] x [w, d]`` and the gate-weighted add into the outputs."""
    return cost.accum_time(t, die, n, w, d, prec)


#: Each slice opcode and its cost, in the order a slice runs them (the FSE-DP scheduler plays
#: the same costs, :mod:`.expand.fsedp_engine`).
SLICE_COSTS: tuple[tuple[str, SliceCost], ...] = (
    ("gemm", _gemm_cost), ("act", _act_cost), ("accum", _accum_cost),
)  # fmt: skip


def computed(s: DieState, slot: int, op: int) -> None:
    """``op`` is the die's latest compute and a use of ``slot``."""
    s.last_compute = op
    s.slot_uses[slot].append(op)
    s.since_signal.append(op)


@TIMING.register("gemm")
def gemm(b: Builder, s: DieState, i: Gemm) -> None:
    """Gate/up projections (:func:`moec.ir.cost.gemm_time`; ideal: ``2 T d w`` FLOPs each, two
    if gated); also waits for the die's
    latest ``x`` block of the layer; its ``h`` is held until the slot's ``accum``."""
    op, content, la, n, w, gated = slice_compute(b, s, i, "gemm", _gemm_cost)
    la.x_uses.append((op, i.tokens))
    s.pending_h[i.slot] = (op, h_bytes(n, w, gated))
    b.g.edge(s.last_recv.get((content.layer, "x")), op)
    computed(s, i.slot, op)


@TIMING.register("act")
def act(b: Builder, s: DieState, i: Act) -> None:
    """The activation (:func:`moec.ir.cost.act_time`; ideal: ``2 T w`` FLOPs at peak)."""
    op, *_ = slice_compute(b, s, i, "act", _act_cost)
    computed(s, i.slot, op)


@TIMING.register("accum")
def accum(b: Builder, s: DieState, i: Accum) -> None:
    """The down-projection into the outputs (:func:`moec.ir.cost.accum_time`; ideal: ``2 T w d``
    FLOPs); releases the slice's ``h``."""
    op, _, la, *_ = slice_compute(b, s, i, "accum", _accum_cost)
    la.accums.append((op, i.tokens))
    pending = s.pending_h.pop(i.slot, None)
    if pending is not None:
        la.h += (pending[0], op, pending[1])
    computed(s, i.slot, op)


def _slice_cost(
    b: Builder, kind: str, cost_fn: SliceCost, die: int, n: int, hidden: int, w: int,
    gated: bool, prec: str, dtype: str,
) -> tuple[float, tuple[tuple[int, float], ...]]:  # fmt: skip
    """A slice op's duration and energy parts, memoized on :func:`slice_compute`'s key."""
    key = (kind, die, n, hidden, w, gated, prec, dtype)
    hit = b.slice_costs.get(key)
    if hit is None:
        t = b.t
        hit = b.slice_costs[key] = (
            cost_fn(t, die, n, hidden, w, gated, prec),
            slice_energy_parts(t, kind, n, hidden, w, gated, prec, dtype),
        )
    return hit


def unit_costs(
    b: Builder, die: int, ng: int, na: int, nc: int, hidden: int, w: int, gated: bool,
    prec: str, dtype: str,
) -> tuple[Any, ...]:  # fmt: skip
    """A micro-slice's ``gemm``, ``act``, ``accum`` on ``die`` for ``ng``, ``na``, ``nc``
    tokens, memoized: their durations, their energy parts, the bytes of the slice's ``h``, and
    the three ops' charges as one ledger block (offsets 0, 1, 2)."""
    key = (die, ng, na, nc, hidden, w, gated, prec, dtype)
    hit = b.unit_costs.get(key)
    if hit is None:
        (dg, pg), (da, pa), (dc, pc) = (
            _slice_cost(b, kind, fn, die, n, hidden, w, gated, prec, dtype)
            for (kind, fn), n in zip(SLICE_COSTS, (ng, na, nc), strict=True)
        )
        charges = tuple(
            (o, die, k, j) for o, parts in enumerate((pg, pa, pc)) for k, j in parts
        )  # EnergyLedger.charge_indexed of the three ops, in op order
        hit = b.unit_costs[key] = ((dg, da, dc), pg, pa, pc, h_bytes(ng, w, gated), charges)
    return hit


def slice_unit(b: Builder, s: DieState, ig: Gemm, ia: Act, ic: Accum) -> bool:
    """``gemm``, ``act`` and ``accum`` on one slot as one step (module doc); False (nothing
    added) when the slot holds no micro-slice, so that the handlers report it."""
    slot = ig.slot
    content, prec = s.slot_fill_info.get(slot, (None, "fp16"))
    if content is None:
        return False
    hidden, w, _, dtype, gated = b.slice_geometry(content)
    die = s.die
    tg, ta, tc = ig.tokens, ia.tokens, ic.tokens
    durs, _, _, _, hb, charges = unit_costs(
        b, die, len(tg), len(ta), len(tc), hidden, w, gated, prec, dtype
    )
    lk = b.layers[content.layer][0]
    g = b.g
    op = len(g.kind)
    g.kind += (COMPUTE, COMPUTE, COMPUTE)
    g.dur += durs
    g.res += (die, die, die)
    g.die += (die, die, die)
    g.instr += (ig, ia, ic)
    g.layer.extend((lk, lk, lk))
    # gemm -> act -> accum, then the gemm's edges: the die's fence, latest compute, the slot's
    # fill, the latest x block
    g.runs.append(op)
    g.runs.append(2)
    src, dst = g.src, g.dst
    for a in (
        s.fence,
        s.last_compute,
        s.slot_fill.get(slot),
        s.last_recv.get((content.layer, "x")),
    ):
        if a is not None:
            src.append(a)
            dst.append(op)
    b.energy.log(op, charges)
    la = b.acts.get((die, lk)) or b.layer_acts(die, lk)
    la.ops += (op, op + 1, op + 2)
    la.x_uses.append((op, tg))
    la.accums.append((op + 2, tc))
    s.pending_h.pop(slot, None)
    la.h += (op, op + 2, hb)
    computed(s, slot, op + 2)
    return True


SLICE_UNIT.append((slice_unit, (gemm, act, accum)))


@TIMING.register("load")
def load(b: Builder, s: DieState, i: Load) -> None:
    """A DRAM (or host) read into the slot, once the slot's last free has completed, at the
    precision its bytes imply."""
    tag = -1
    prec = b.dense_precision
    c = i.content
    sref: SliceRef | None = None
    if isinstance(c, SliceRef):
        tag = b.layers[c.layer][0]
        prec = b.slice_precision(c, i.nbytes)
        sref = c
    first, op = b.read(LOAD, i.channel, s.die, i.nbytes, i, tag)
    if tag >= 0:
        b.layer_acts(s.die, tag).ops += [first, op]
    g = b.g
    g.edge(s.fence, first)
    g.edge(s.slot_free.get(i.slot), first)
    s.fill(i.slot, op, sref, prec)
    s.slot_fill_rec[i.slot] = b.record_fill(s.die, first)
    s.since_signal.append(op)


@TIMING.register("send")
def send(b: Builder, s: DieState, i: Send) -> None:
    """The sending side of a link transfer (the k-th send a->b and the k-th recv on b from a
    are one transfer, :meth:`~.opgraph.Builder.transfer`): edges in go to the link hold (the
    sent slot's fill; for a block the die's latest block of the layer received, and for a
    ``y`` block its latest compute), edges out leave from the arrival."""
    die = s.die
    hold, op = b.transfer((die, i.peer), True, i, die)
    g = b.g
    blk = i.block
    if blk is not None:
        tag = b.layers[blk.layer][0]
        layer = g.layer
        if layer[op] < 0:
            layer[hold] = layer[op] = tag
        la = b.acts.get((die, tag)) or b.layer_acts(die, tag)
        la.ops += (hold, op)
        (la.x_uses if blk.which == "x" else la.send_y).append((op, blk.tokens))
    src, dst = g.src, g.dst
    a = s.fence  # a wait's op: never the hold itself
    if a is not None:
        src.append(a)
        dst.append(hold)
    if i.slot is not None:
        a = s.slot_fill.get(i.slot)
        if a is not None and a != hold:
            src.append(a)
            dst.append(hold)
        s.slot_uses[i.slot].append(op)
    elif blk is not None:
        g.edge(s.last_recv.get((blk.layer, blk.which)), hold)
        if blk.which == "y":
            g.edge(s.last_compute, hold)
    s.since_signal.append(op)


@TIMING.register("recv")
def recv(b: Builder, s: DieState, i: Recv) -> None:
    """The receiving side of a link transfer: into a slot (its fill, once the slot's last free
    has completed), or a block of tokens (the die's latest block of its layer)."""
    die = s.die
    hold, op = b.transfer((i.peer, die), False, i, die)
    g = b.g
    blk = i.block
    c = i.content
    sref = c if isinstance(c, SliceRef) else None
    tag = -1
    if blk is not None:
        tag = b.layers[blk.layer][0]
    elif sref is not None:
        tag = b.layers[sref.layer][0]
    if tag >= 0:
        layer = g.layer
        if layer[op] < 0:
            layer[hold] = layer[op] = tag
        la = b.acts.get((die, tag)) or b.layer_acts(die, tag)
        la.ops += (hold, op)
        if blk is not None:
            ts = blk.tokens
            if blk.which == "x":
                la.recv_x.append((op, ts))
                la.recv_x_start.append((hold, ts))
            else:
                la.recv_y.append((hold, op, ts, i.nbytes))
    src, dst = g.src, g.dst
    a = s.fence  # a wait's op: never the hold itself
    if a is not None:
        src.append(a)
        dst.append(hold)
    slot = i.slot
    if slot is not None:
        a = s.slot_free.get(slot)
        if a is not None and a != hold:
            src.append(a)
            dst.append(hold)
        prec = b.dense_precision
        if sref is not None:
            prec = b.slice_precision(sref, i.nbytes)
        s.fill(slot, op, sref, prec)
        s.slot_fill_rec[slot] = b.record_fill(die, hold)
    elif blk is not None:
        s.last_recv[(blk.layer, blk.which)] = op
    s.since_signal.append(op)


@TIMING.register("free")
def free(b: Builder, s: DieState, i: Free) -> None:
    """Completes when the slot's fill and every use since have."""
    content, _ = s.slot_fill_info.get(i.slot, (None, ""))
    tag = b.layers[content.layer][0] if content is not None else -1
    g = b.g
    op = g.add(SYNC, 0.0, -1, s.die, i, tag)
    if tag >= 0:
        b.layer_acts(s.die, tag).ops.append(op)
    # edges from the fence, the slot's fill and every use since (op is new: no self edge)
    src, dst = g.src, g.dst
    for a in (s.fence, s.slot_fill.get(i.slot)):
        if a is not None:
            src.append(a)
            dst.append(op)
    uses = s.slot_uses.pop(i.slot, None)
    if uses:
        src.fromlist(uses)
        dst.fromlist([op] * len(uses))
    s.slot_free[i.slot] = op
    rec = s.slot_fill_rec.pop(i.slot, None)
    if rec is not None:
        b.fills[rec] = op
    s.since_signal.append(op)


@TIMING.register("signal")
def signal(b: Builder, s: DieState, i: Signal) -> None:
    """Completes when everything the die issued before it has, then counts its event."""
    g = b.g
    op = g.add(SYNC, 0.0, -1, s.die, i)
    g.edge(s.fence, op)
    g.edge(s.last_signal, op)
    since = s.since_signal  # earlier ops (op is new: no self edge), in issue order
    if type(since) is list:
        g.src.fromlist(since)
    else:  # typed by a run of streamed slices (:func:`.slice_chain.slice_run`)
        g.src += since
    g.dst += array("q", (op,)) * len(since)
    s.since_signal = []
    s.last_signal = op
    b.signal_event[op] = i.event


@TIMING.register("wait")
def wait(b: Builder, s: DieState, i: Wait) -> None:
    """Released by its event's counter; nothing after it issues before."""
    g = b.g
    op = g.add(SYNC, 0.0, -1, s.die, i)
    g.edge(s.fence, op)
    # released by the counter (one more dependency than its edges)
    b.waiters[i.event][i.count].append(op)
    s.fence = op


@TIMING.register("dense")
def dense(b: Builder, s: DieState, i: Dense) -> None:
    """The compute unit for :func:`moec.ir.cost.dense_time` of ``flops`` at the layer dtype, and a read of ``bytes`` from the
    die's nearest channel, in parallel."""
    g = b.g
    isl = b.islands.get(i.island, -1)
    die, prec, flops = s.die, b.dense_precision, float(i.flops)
    dur = b.compute_cost(
        ("dense", die, flops, prec), lambda: cost.dense_time(b.t, die, flops, prec)
    )
    comp = g.add(COMPUTE, dur, die, die, i, -1, isl)
    charge_dense(b, s, comp, flops)
    g.edge(s.fence, comp)
    g.edge(s.last_compute, comp)
    s.last_compute = comp
    s.since_signal.append(comp)
    if i.nbytes > 0:
        ch = b.t.nearest_channel(s.die)
        first, mem = b.read(DENSE_DRAM, ch.id, s.die, i.nbytes, i, -1, isl)
        g.edge(s.fence, first)
        s.since_signal.append(mem)


@TIMING.register("moe")
def moe(b: Builder, s: DieState, i: MoE) -> None:
    """A placeholder cannot be timed: the runtime part must be expanded first."""
    raise ScheduleError(
        f"die {s.die}: 'moe {i.layer}' must be expanded before timing "
        "(the runtime part needs a routing)"
    )


TIMING.check()
