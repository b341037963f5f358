"""A relayed stream in one step: a die's run of ``recv``, ``send``, ``free``, ``load`` and slices.

FSE-DP's streams (:mod:`.expand.fsedp`) are long runs of the same few instructions on slots, the
slices of several trajectories interleaved in the order the scheduler issued them::

    free s3
    recv s3 <- 2 moe0:e33:s5 bytes 11010048
    free s2
    send s0 -> 4 bytes 11010048
    gemm s3 tokens 384,386,389
    act s3 tokens 384,386,389
    accum s3 tokens 384,386,389
    send s3 -> 4 bytes 11010048

A slice's instructions are not next to each other, so they cannot be added as one template per
slice without renumbering the ops (and the event loop breaks ties by op). :func:`relay_run`
takes the whole run instead, up to the next instruction it does not cover (a ``signal``,
``wait``, ``dense``, an activation block's transfer, a run of streamed micro-slices for
:mod:`.slice_chain`: a lone one it takes, :func:`chains_follow`), in one call: the handlers of
:mod:`.timing_ops` inlined into one loop over the die's state held in locals, and what each
instruction costs memoized per shape (a transfer's link, duration, latency and charges with the
slice's layer and precision; a slice's three compute ops). It is not a new model: every op,
duration, resource, edge (in the same place of the same successor list), energy charge (in the
same order), SRAM record and transfer pairing is what the handlers add one instruction at a
time, with :func:`.timing_ops.slice_unit` for a slice's ``gemm``, ``act``, ``accum`` (a lone
streamed micro-slice's fill goes to ``fills``, not ``closed_fills``: the SRAM peaks read both
alike); ``Builder.batch_slices = False`` is the reference, compared on every tiny golden in
``tests/test_sim_speed.py``, and ``tests/test_relay_chain.py`` compares the builder's graph and
records with and without the relay.

The run's edges from the die's latest ``wait`` (the fence, the same for the whole run) and its
energy charges are added when the run ends: the event loop reads the edge log only source by
source, each in log order, and the fence's edges keep theirs.

An instruction it does not cover plainly (a transfer of no bytes, a slot holding no micro-slice,
a ``gemm`` without its ``act`` and ``accum``) ends the run, and the handlers take it.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import Any

from moec.backends.interp.opgraph import (
    COMPUTE,
    DELAY,
    LOAD,
    RELAY,
    SYNC,
    XFER,
    Builder,
    DieState,
)
from moec.backends.interp.sram import LayerActs
from moec.backends.interp.timing_ops import free, load, recv, send, slice_unit, unit_costs
from moec.ir.stream.program import (
    HOST_CHANNEL,
    Accum,
    Act,
    Free,
    Gemm,
    Instr,
    Load,
    Recv,
    Send,
    SliceRef,
)


def _registered(b: Builder, charges: tuple[Any, ...]) -> tuple[Any, ...]:
    """``charges``, registered with the builder's energy ledger: a template's block is known
    by the time :func:`relay_run` logs its run (``EnergyLedger.log_run`` looks every block up
    in C when all are known; the ledger forgets its blocks only between parts, each built by
    its own builder, with its own templates)."""
    b.energy.register(charges)
    return charges


def _transfer(b: Builder, key: tuple[Any, ...], a: int, d: int, nbytes: int) -> tuple[Any, ...]:
    """A transfer's template: (link resource, hold, latency, charges), memoized in ``b.chains``
    under ``key`` (the values :meth:`~.opgraph.Builder.transfer` uses)."""
    res, occ, lat, _, _, _, charges = b.transfer_costs(a, d, nbytes)
    hit = b.chains[key] = (res[0], occ, lat, _registered(b, charges))
    return hit


def _recv_template(b: Builder, key: tuple[Any, ...], i: Recv, c: SliceRef, die: int) -> Any:
    """A slot ``recv``'s template: its transfer's, then the slice's layer index, the
    precision its bytes imply (:meth:`~.opgraph.Builder.slice_precision`) and what the slot
    holds for its ``free`` and ``gemm`` (:func:`_held`)."""
    res, occ, lat, charges = _transfer(b, ("xfer", i.peer, die, i.nbytes), i.peer, die, i.nbytes)
    tag = b.layers[c.layer][0]
    hit = b.chains[key] = (
        res, occ, lat, charges, tag, b.slice_precision(c, i.nbytes), _held(b, tag, c, die),
    )  # fmt: skip
    return hit


def _held(b: Builder, tag: int, c: SliceRef, die: int) -> tuple[int, dict[Any, Any]]:
    """What a slot filled with slice ``c`` on die ``die`` holds for the ops that use it:
    the layer index (a ``free``'s) and the compute templates (a ``gemm``'s, :func:`_units_of`),
    kept in the fill's template so a run reads them by slot."""
    skey = ("unit", die, c.layer, c.expert is None, c.slice)
    return tag, b.chains.get(skey) or _units_of(b, skey, c, die)


def _units_of(b: Builder, key: tuple[Any, ...], c: SliceRef, die: int) -> dict[Any, Any]:
    """Slice ``c``'s compute templates on die ``die``, memoized in ``b.chains`` under ``key``:
    one dict per geometry (shared by the slices of one width, an expert's slices most often),
    keyed by precision and token counts."""
    units = b.chains.setdefault(("units", die, c.layer, b.slice_geometry(c)), {})
    b.chains[key] = units
    return units


def _unit_template(b: Builder, units: dict[Any, Any], key: tuple[Any, ...], c: SliceRef,
                   die: int) -> Any:  # fmt: skip
    """A slice's three compute ops (:func:`.timing_ops.slice_unit`) for ``key``, its precision
    and token counts: durations, ``h`` bytes, charges, the layer index."""
    prec, ng, na, nc = key
    hidden, w, _, dtype, gated = b.slice_geometry(c)
    durs, _, _, _, hb, charges = unit_costs(b, die, ng, na, nc, hidden, w, gated, prec, dtype)
    lk = b.layers[c.layer][0]
    hit = units[key] = (durs, hb, _registered(b, charges), lk, (lk, lk, lk))
    return hit


#: what a slot holds before its first fill: nothing, at the handlers' default precision
_EMPTY: tuple[None, str] = (None, "fp16")


def _load_template(
    b: Builder, key: tuple[Any, ...], c: SliceRef, channel: int, die: int, nbytes: int
) -> Any:
    """A slice ``load``'s read (:meth:`~.opgraph.Builder.read`'s template: the ops' kinds,
    durations, resources, dies and layer, the hops' ``back``, the charges, the resources the
    bytes are counted on), its layer index and the precision its bytes imply."""
    rkey = (LOAD, channel, die, nbytes)
    read = b.costs.read_ops.get(rkey)
    if read is None:
        read = b.costs.read_ops[rkey] = b._read_template(LOAD, channel, die, nbytes)
    kinds, durs, res, backs, charges, links = read
    tag, k = b.layers[c.layer][0], len(kinds)
    hit = b.chains[key] = (
        tag, b.slice_precision(c, nbytes), k, kinds, durs, res, (die,) * k, (tag,) * k, backs,
        _registered(b, charges), links, _held(b, tag, c, die),
    )  # fmt: skip
    return hit


def relay_run(b: Builder, s: DieState, ins: Sequence[Instr], j: int) -> int:
    """Add the ops of ``ins[j:]`` up to the first instruction not covered (module doc) as
    their handlers would; returns that instruction's index (``j``: nothing added). A long run
    goes to the compiled relay when it is wanted (:mod:`.relay_compiled`)."""
    n = len(ins)
    if COMPILED_RUN:
        wanted, compiled = COMPILED_RUN[0]
        if wanted(n - j):
            k = compiled(b, s, ins, j)
            if k is not None:
                return k
    g = b.g
    kind, dur, res_l, gdie, instr, layer = g.kind, g.dur, g.res, g.die, g.instr, g.layer
    # the run's edges and chains, appended to the graph's typed columns when the run ends
    # (a list's append is cheaper than an array's; the ints are read back while still cached)
    src: list[int] = []
    dst: list[int] = []
    runs: list[int] = []
    edge_from, edge_to = src.append, dst.append
    die = s.die
    d2, d3 = (die, die), (die, die, die)
    # the latest wait: an edge into every op of a covered instruction's first (none in a run)
    fence = s.fence
    slot_fill, slot_info, slot_uses = s.slot_fill, s.slot_fill_info, s.slot_uses
    slot_free, slot_rec, last_recv, pending_h = (
        s.slot_free, s.slot_fill_rec, s.last_recv, s.pending_h,
    )  # fmt: skip
    since = s.since_signal.append
    last_compute = s.last_compute
    memo = b.chains
    layers, acts, fills = b.layers, b.acts, b.fills
    # the run's energy charges (EnergyLedger.log's, in order) and the fence's edges (its
    # successors in order), added in one go when the run ends
    logged_at: list[int] = []
    logged: list[Any] = []
    log_at, log_block = logged_at.append, logged.append
    fenced: list[int] = []
    fence_to = fenced.append
    pend_send, pend_recv = b.pending_send, b.pending_recv
    link_bytes, dram_bytes, host_bytes = b.link_bytes, b.dram_bytes, b.host_bytes
    back_of = g.back_of
    # per layer index: this die's activation record; per peer: the sends to this die waiting
    # for their recv, the recvs from this die waiting for their send, and this die's own
    # transfers with the peer waiting for the other side (each looked up once per run)
    las: dict[int, LayerActs] = {}
    sends_to_me: dict[int, Any] = {}
    recvs_from_me: dict[int, Any] = {}
    my_recvs: dict[int, Any] = {}
    my_sends: dict[int, Any] = {}
    # per slot filled in this run: what it holds (_held); per layer name: its latest ``x``
    # block's arrival (a block recv ends a run, so it does not change within one)
    held: dict[int, tuple[int, dict[Any, Any]]] = {}
    x_in: dict[str, int | None] = {}
    while j < n:
        i = ins[j]
        cls = type(i)
        if cls is Recv or cls is Send:
            slot = i.slot
            nbytes = i.nbytes
            if slot is None or not nbytes or i.block is not None:
                break
            peer = i.peer
            if cls is Recv:
                c = i.content
                if type(c) is not SliceRef:
                    break
                rkey = ("recv", peer, die, nbytes, c.layer, c.expert is None, c.slice)
                tpl = memo.get(rkey) or _recv_template(b, rkey, i, c, die)
                tag = tpl[4]
                waiting = sends_to_me.get(peer)
                if waiting is None:
                    waiting = pend_send.get((peer, die))
                    if waiting is not None:
                        sends_to_me[peer] = waiting
                a = slot_free.get(slot)  # the slot's last free, before it is refilled
            else:
                tag = -1
                waiting = recvs_from_me.get(peer)
                if waiting is None:
                    waiting = pend_recv.get((die, peer))
                    if waiting is not None:
                        recvs_from_me[peer] = waiting
                a = slot_fill.get(slot)  # the slot's fill, before it is sent on
            if waiting:  # the other side came first (Builder.transfer)
                hold, op = waiting.popleft()
                if cls is Send:  # transfers are named after the send
                    instr[hold] = instr[op] = i
                    gdie[hold] = gdie[op] = die
                elif layer[op] < 0:
                    layer[hold] = layer[op] = tag
                fence_to(hold)
                if a is not None and a != hold:
                    edge_from(a)
                    edge_to(hold)
            else:  # Builder.transfer's new hold (and delay), tagged with the layer at once
                if cls is Send:
                    xkey = ("xfer", die, peer, nbytes)
                    tpl = memo.get(xkey) or _transfer(b, xkey, die, peer, nbytes)
                res, occ, lat, charges = tpl[0], tpl[1], tpl[2], tpl[3]
                hold = len(kind)
                fence_to(hold)
                if a is not None:
                    edge_from(a)
                    edge_to(hold)
                if lat <= 0.0:
                    op = hold
                    kind.append(XFER)
                    dur.append(occ)
                    res_l.append(res)
                    gdie.append(die)
                    instr.append(i)
                    layer.append(tag)
                else:
                    op = hold + 1
                    kind += (XFER, DELAY)
                    dur += (occ, lat)
                    res_l += (res, -1)
                    runs += (hold, 1)
                    gdie += d2
                    instr += (i, i)
                    layer.extend((tag, tag))
                link_bytes[res] += nbytes
                log_at(hold)
                log_block(charges)
                if cls is Recv:
                    q = my_recvs.get(peer)
                    if q is None:
                        q = my_recvs[peer] = pend_recv[(peer, die)]
                else:
                    q = my_sends.get(peer)
                    if q is None:
                        q = my_sends[peer] = pend_send[(die, peer)]
                q.append((hold, op))
            if cls is Send:
                slot_uses[slot].append(op)
            else:
                la = las.get(tag)
                if la is None:
                    la = las[tag] = acts.get((die, tag)) or b.layer_acts(die, tag)
                la.ops += (hold, op)
                slot_fill[slot] = op
                slot_info[slot] = (c, tpl[5])
                held[slot] = tpl[6]
                slot_uses[slot] = []
                slot_rec[slot] = len(fills) + 2
                fills.extend((die, hold, -1))
            since(op)
        elif cls is Free:
            slot = i.slot
            h = held.get(slot)
            if h is None:
                c = slot_info.get(slot, _EMPTY)[0]
                tag = layers[c.layer][0] if c is not None else None
            else:
                tag = h[0]
            op = len(kind)
            kind.append(SYNC)
            dur.append(0.0)
            res_l.append(-1)
            gdie.append(die)
            instr.append(i)
            if tag is not None:
                layer.append(tag)
                la = las.get(tag)
                if la is None:
                    la = las[tag] = acts.get((die, tag)) or b.layer_acts(die, tag)
                la.ops.append(op)
            else:
                layer.append(-1)
            fence_to(op)
            a = slot_fill.get(slot)
            if a is not None:
                edge_from(a)
                edge_to(op)
            uses = slot_uses.pop(slot, None)
            if uses:
                src += uses
                dst += [op] * len(uses)
            slot_free[slot] = op
            rec = slot_rec.pop(slot, None)
            if rec is not None:
                fills[rec] = op
            since(op)
        elif cls is Gemm:
            if j + 2 >= n:
                break
            ia, ic = ins[j + 1], ins[j + 2]
            slot = i.slot
            if type(ia) is not Act or type(ic) is not Accum or not ia.slot == slot == ic.slot:
                break
            c, prec = slot_info.get(slot, _EMPTY)
            if c is None:
                break
            tg, tc = i.tokens, ic.tokens
            ta = ia.tokens
            ng = tg.size
            na = ng if ta is tg else ta.size
            nc = ng if tc is tg else tc.size
            h = held.get(slot)
            if h is None:
                skey = ("unit", die, c.layer, c.expert is None, c.slice)
                units = memo.get(skey) or _units_of(b, skey, c, die)
            else:
                units = h[1]
            ukey = (prec, ng, na, nc)
            durs, hb, charges, lk, lk3 = units.get(ukey) or _unit_template(b, units, ukey, c, die)
            op = len(kind)
            fence_to(op)
            if last_compute is not None:
                edge_from(last_compute)
                edge_to(op)
            a = slot_fill.get(slot)
            if a is not None:
                edge_from(a)
                edge_to(op)
            cl = c.layer
            a = x_in.get(cl, -1)
            if a == -1:
                a = x_in[cl] = last_recv.get((cl, "x"))
            if a is not None:
                edge_from(a)
                edge_to(op)
            kind += (COMPUTE, COMPUTE, COMPUTE)
            dur += durs
            res_l += d3
            runs += (op, 2)  # gemm -> act -> accum
            gdie += d3
            instr += (i, ia, ic)
            layer.extend(lk3)
            log_at(op)
            log_block(charges)
            la = las.get(lk)
            if la is None:
                la = las[lk] = acts.get((die, lk)) or b.layer_acts(die, lk)
            last_compute = op + 2
            la.ops += (op, op + 1, last_compute)
            la.x_uses.append((op, tg))
            la.accums.append((last_compute, tc))
            if pending_h:  # (set by the gemm handler only)
                pending_h.pop(slot, None)
            la.h += (op, last_compute, hb)
            slot_uses[slot].append(last_compute)
            since(last_compute)
            j += 3
            continue
        elif cls is Load:
            c = i.content
            nbytes = i.nbytes
            if type(c) is not SliceRef or not nbytes or chains_follow(ins, j, n):
                break
            slot = i.slot
            channel = i.channel
            lkey = ("load", channel, die, c.layer, c.expert is None, c.slice, nbytes)
            tag, prec, k, kinds, durs, ress, dies, tags, backs, charges, links, h = memo.get(
                lkey
            ) or _load_template(b, lkey, c, channel, die, nbytes)
            # Builder.read, from its template
            first = len(kind)
            op = first + k - 1
            kind += kinds
            dur += durs
            res_l += ress
            runs += (first, k - 1)
            gdie += dies
            instr += (i,) * k
            layer.extend(tags)
            for o, back in backs:
                back_of[first + o] = back
            log_at(first)
            log_block(charges)
            for r in links:
                link_bytes[r] += nbytes
            if channel == HOST_CHANNEL:
                host_bytes[die] += nbytes
            else:
                dram_bytes[channel] += nbytes
            la = las.get(tag)
            if la is None:
                la = las[tag] = acts.get((die, tag)) or b.layer_acts(die, tag)
            la.ops += (first, op)
            fence_to(first)
            a = slot_free.get(slot)
            if a is not None:
                edge_from(a)
                edge_to(first)
            slot_fill[slot] = op
            slot_info[slot] = (c, prec)
            held[slot] = h
            slot_uses[slot] = []
            slot_rec[slot] = len(fills) + 2
            fills.extend((die, first, -1))
            since(op)
        else:
            break
        j += 1
    s.last_compute = last_compute
    g.src.fromlist(src)
    g.dst.fromlist(dst)
    g.runs.fromlist(runs)
    if fence is not None:
        g.src += array("q", (fence,)) * len(fenced)
        g.dst.fromlist(fenced)
    b.energy.log_run(logged_at, logged)
    return j


def chains_follow(ins: Sequence[Instr], j: int, n: int) -> bool:
    """Whether ``ins[j]`` (a load) starts two streamed micro-slices one after the other, a run
    :func:`.slice_chain.slice_run` adds faster than the relay. A lone one (naive FSE-DP's
    streams: a load whose slice is computed and freed before the die's next load, between
    slot transfers) the relay takes like any load, so a naive stream is one run."""
    return starts_chain(ins, j, n) and starts_chain(ins, j + 5, n)


def starts_chain(ins: Sequence[Instr], j: int, n: int) -> bool:
    """Whether ``ins[j]`` (a load) starts a streamed micro-slice for :mod:`.slice_chain`."""
    if j + 4 >= n:
        return False
    il, ig, ia, ic, f = ins[j : j + 5]
    return (
        type(ig) is Gemm and type(ia) is Act and type(ic) is Accum and type(f) is Free
        and il.slot == ig.slot == ia.slot == ic.slot == f.slot
    )  # fmt: skip


RELAY.append((relay_run, (recv, send, free, load), slice_unit))
#: the compiled relay's ``(wanted, run)`` (set by :mod:`.relay_compiled`, imported below)
COMPILED_RUN: list[Any] = []

import moec.backends.interp.relay_compiled  # noqa: E402,F401 - registers the compiled relay
