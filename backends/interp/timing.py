"""Timing of a fully static stream program: instructions become ops on a discrete-event machine.

The machine (per the target the program was compiled for):

* **resources**: each die's compute unit, each DRAM channel, each direction of each D2D link,
  and, when the target has a host tier, each die's host link.
  A resource serves one op at a time, first come first served (ties: priority, then issue order).
* **issue**: each die issues its stream in program order and never stalls, except at ``wait``:
  nothing after a ``wait`` issues before the package-wide counter reaches its count.
* **latency is pipelined**: a DMA engine keeps several requests outstanding, so a channel's,
  link's or host link's access latency overlaps the data of the requests before it. A resource
  is *held* (its occupancy, ``busy``) for ``bytes / bandwidth`` only; the latency follows the
  hold as a ``DELAY`` op that holds nothing and ends when the data has arrived. Two loads
  queued on one channel take ``latency + 2 bytes / bandwidth``, not twice
  ``latency + bytes / bandwidth``; on an idle resource the time is unchanged.
* **load** (DMA, asynchronous to compute): waits until its slot is free (backpressure: the
  slot's previous ``free`` has completed), then holds its channel for ``bytes / channel
  bandwidth``; the data has left DRAM a channel latency later (on an idle channel, at
  :func:`moec.ir.cost.dram_time`). When the channel is on another die, the data then crosses
  every link of ``target.route(channel.die, die)``, and each link is held only for its own
  bytes, ``bytes / link bandwidth``, followed by the link's latency, as a *tail reservation*:
  the hold is claimed when the previous stage (the DRAM read, or the previous hop, latency
  included) ends, and may start up to ``bytes / link bandwidth`` earlier (capped by the
  slowest bandwidth upstream, so data never leaves before it is read) if the link was idle
  then, so on an idle link the data has crossed it as early as it can: the read's end plus the
  latencies of the hops up to and including it. If the link is busy the hold starts when it
  frees, and the data arrives that much later. On an idle package a load takes exactly the
  cut-through time :func:`moec.ir.cost.load_time`. The error it makes: the link carries the
  load's bytes as one burst at the end instead of a trickle at the DRAM rate, so a transfer
  already holding the link delays the load's arrival (by at most that transfer's remaining
  time) instead of sharing the link with it, and the burst assumes the channel's die buffers
  what DRAM delivered before it (outside the slots, like activations). (Store-and-forward, a
  read into the channel's die then one link transfer per hop, is as simple but adds
  ``bytes / link bandwidth`` per hop, about 9% of the read on fsedp-2x2, to every remote
  load.) A load from the host (``<- host``, a tensor the compiler offloaded) holds the die's
  own host link instead (one per die, PCIe-class, as ``Host`` in :mod:`moec.ir.target` says),
  for ``bytes / host bandwidth``, then the host latency (idle: :func:`moec.ir.cost.host_time`).
* **send/recv** (asynchronous): the k-th send a->b and the k-th recv on b from a are one
  transfer holding link a->b for ``bytes / link bandwidth``; the data arrives the link latency
  after the hold ends (idle: :func:`moec.ir.cost.link_time`), and what waits for the transfer
  (the recv's uses, the sent slot's ``free``) waits for that arrival. It starts when the sent
  data is ready (a slot's fill; for an ``x`` block the die's latest earlier ``x`` recv of that
  layer; for a ``y`` block also the die's latest earlier compute) and, for a recv into a slot,
  the slot is free.
* **gemm/act/accum**: run on the die's compute unit in program order, each after its slot's
  data (and, for gemm, the die's latest earlier ``x`` recv of the layer) has arrived; time
  ``compute_time`` at the content's precision (the precision its load's bytes imply, else the
  layer's dtype). FLOPs: gemm ``2 T d w`` per projection (2 if gated), act ``2 T w``, accum
  ``2 T w d`` for T tokens, hidden d and slice width w.
* **free**: completes when every earlier use of the slot (compute, send) has completed.
* **signal**: completes when everything the die issued before it has completed, then increments
  its counter; **wait** completes when the counter reaches its count.
* **dense**: the die's compute unit for ``flops`` (at the layer dtype) and, in parallel, a read
  of ``bytes`` from its nearest DRAM channel, timed as a ``load``; completes when both have.

In the :class:`Timeline` an instruction that moves data is its holding ops (kind ``load``,
``transfer``, ``dense-dram``; ``start``/``end`` are the hold) followed by ``delay`` ops (no
resource, the same ``instr``); its data has arrived at the end of its last op.

**SRAM** (:mod:`moec.ir.activations` states the model): a die's SRAM at time t is its occupied
slots (a slot is held from its fill's start, for a load its DRAM read's start, to its free's
end) times the slot size, plus the activation buffers live at t: home tokens' ``x`` and ``y``
for the die's span of the layer; other dies' tokens' received ``x`` (first ``recv x`` to last
``gemm``/``send x`` of the token) and partial ``y`` (first ``accum``, or end of the first
``recv y``, to the end of the last ``send y``); each ``recv y`` block while it crosses its link;
and a slice's gate/up outputs ``h`` from its ``gemm``'s start to its ``accum``'s end. A die's
*home tokens* of a layer are read off the static program itself, so an expanded program
printed and run again gives the same peaks: the tokens it computes or sends as ``x`` without
having received them, plus those whose ``y`` it receives and does not send on. Peak SRAM is the
largest sum over the run (at equal times a release goes before an allocation);
``peak_sram_slots`` / ``peak_sram_activations`` split it at that moment. The timeline records a
peak past a die's SRAM in ``extra["sram_over_bytes"]`` (the largest over the dies); SRAM is a
hard limit, so :func:`~.simulate.simulate` then fails with a one-line error unless the caller
allows the overflow (``--allow-overflow``), and the report says so.

Every resource is FIFO in the order ops claim it (its ``free_at`` only grows), so a tail
reservation, claimed when the previous stage of its load ends and started no earlier than the
link's ``free_at``, never overlaps another hold; it only reaches back into time the link spent
idle.

**Energy**: as the handlers turn instructions into ops they charge each one's joules per die
and part (:mod:`.energy`, formulas in :mod:`moec.ir.cost.energy`); static power over the
makespan is added at the end (``Timeline.energy``).

**Code.** Each opcode's rules are its timing handler (:mod:`.timing_ops`, registered against the
opcode table); :mod:`.opgraph` holds the op graph and the builder that calls them,
:mod:`.sram` the SRAM accounting, :mod:`.event_loop` the event loop (a Python reference and,
with numba installed, a compiled copy that whole-model runs switch to); this module ties them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

import moec.backends.interp.relay_chain  # noqa: F401 - a relayed run of slot transfers in one step
import moec.backends.interp.slice_chain  # noqa: F401 - the streamed micro-slice in one step
import moec.backends.interp.timing_ops  # noqa: F401 - registers every opcode's timing handler
from moec.backends.interp import chain_hints, packed_ops
from moec.backends.interp.energy import EnergyLedger
from moec.backends.interp.event_loop import Floats, Ints, as_list, run_events
from moec.backends.interp.opgraph import (
    COMPUTE,
    DELAY,
    DENSE_DRAM,
    KIND_NAMES,
    LOAD,
    SYNC,
    TIMING,
    XFER,
    Builder,
    CostMemo,
)
from moec.backends.interp.sram import sram_peaks
from moec.ir.errors import ScheduleError
from moec.ir.stream.printer import instr as instr_text
from moec.ir.stream.program import Instr, Program
from moec.ir.target import Target

if TYPE_CHECKING:
    from moec.backends.interp.summary import RunSummary

__all__ = [
    "COMPUTE", "DELAY", "DENSE_DRAM", "KIND_NAMES", "LOAD", "SYNC", "TIMING", "XFER", "Carry",
    "Timeline", "run_timing",
]  # fmt: skip


@dataclass
class Timeline:
    """What a timing run recorded: every op's start/end and what it held."""

    target: Target
    makespan: float
    #: per op: its start and end (lists; numpy arrays in a part of a layer-by-layer run)
    start: Floats
    end: Floats
    kind: Ints
    die: list[int]
    #: per op: the resource it held, or -1
    res: Ints
    instr: list[Instr | None]
    #: per op: index of the MoE layer it belongs to, or -1
    layer: Ints
    #: per op: index of the dense island it belongs to, or -1
    island: list[int]
    layer_names: list[str]
    island_names: list[str]
    num_resources: int
    resource_names: list[str]
    busy: list[float]
    dram_bytes: list[int]
    link_bytes: dict[str, int]
    peak_sram: list[int]
    instructions: int = 0
    #: bytes each die loaded from host memory (empty when the target has no host tier)
    host_bytes: list[int] = field(default_factory=list)
    events: int = 0
    extra: dict[str, float] = field(default_factory=dict)
    #: per die, the split of ``peak_sram`` at its peak: slot bytes and activation bytes
    peak_sram_slots: list[int] = field(default_factory=list)
    peak_sram_activations: list[int] = field(default_factory=list)
    #: per die, the most slot bytes held at once (activations aside)
    peak_slot_bytes: list[int] = field(default_factory=list)
    #: joules per die and part (dynamic charges from the handlers, static over the makespan)
    energy: EnergyLedger | None = None
    #: a run summarized layer by layer (:mod:`.layered`) keeps no per-op data: the per-op lists
    #: above are empty and this holds the spans and MoE figures the reports need
    summary: RunSummary | None = None


@dataclass
class Carry:
    """What one part of a layer-by-layer run (:mod:`.layered`) hands the next: the time its
    first ops are released, each resource's free and busy time so far, the energy ledger
    (static power over the whole run is then the caller's to add), and the costs the op-graph
    builder memoized."""

    clock: float
    free_at: list[float]
    busy: list[float]
    energy: EnergyLedger
    #: the op-graph builder's memoized costs, shared by the parts (filled by the first)
    costs: CostMemo | None = None


def run_timing(
    p: Program,
    target: Target,
    precision: Mapping[str, Sequence[str]] | None = None,
    carry: Carry | None = None,
    arrays: bool = False,
    limit: float | None = None,
) -> Timeline:
    """Simulate a static program on ``target``; deadlocks are a one-line ScheduleError.

    ``precision`` (per layer, each expert's precision) times slices whose loads move no bytes
    (residency hits) at their expert's precision rather than the layer's dtype. ``carry``: the
    program is one part of a longer run (:mod:`.layered`): its roots are released at
    ``carry.clock``, the resources' free and busy times and the energy ledger continue (updated
    in place) and no static power is added. ``arrays``: the timeline's per-op ``start``,
    ``end``, ``kind``, ``res`` and ``layer`` are numpy arrays (what :mod:`.summary` and
    :mod:`.sram` compute with) rather than lists. ``limit`` (seconds): stop, raising
    :class:`~.event_loop.PastLimit`, as soon as the ops of ``p``'s first MoE layer (those its
    span is taken over: not a token-buffered catch-up step's) provably span more than that
    (:func:`~.event_loop.run_events`).
    """
    b = Builder(p, target, precision, carry.costs if carry is not None else None)
    if carry is not None:
        b.energy = carry.energy
        carry.costs = b.costs
    b.build()
    chain_hints.clear()  # what this build did not take is stale (:mod:`.chain_hints`)
    g = b.g
    n = len(g.kind)
    free_at = carry.free_at if carry is not None else [0.0] * b.num_res
    busy = carry.busy if carry is not None else [0.0] * b.num_res
    clock = carry.clock if carry is not None else 0.0
    kind: Ints = g.kind
    res: Ints = g.res
    dur: Floats = g.dur
    layer: Ints = g.layer
    if arrays:  # a compiled relay's runs of ops as its arrays (packed_ops); the lists dropped
        kind, dur, res = packed_ops.take_columns(g)
        layer = np.frombuffer(g.layer, np.int64).copy()  # not a view: g.layer may grow
    else:
        packed_ops.unpack(g)
    watch = None
    if limit is not None:  # imported here: fsedp_deferred imports this module's Timeline
        from moec.backends.interp.expand.fsedp_deferred import iteration_ops

        watch = iteration_ops(p, layer, g.instr, b.signal_event.values()) == 0
    start, end = run_events(
        g.src, g.dst, g.runs, dur, res, kind, g.back_of, free_at, busy, clock, b.signal_event,
        b.waiters, watch, limit if limit is not None else math.inf,
    )  # fmt: skip
    del dur  # read by the event loop only
    if arrays:
        start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
        stuck = np.flatnonzero(end < 0).tolist()
        makespan = float(end.max()) if n else 0.0
    else:
        start, end = as_list(start), as_list(end)
        stuck = [op for op in range(n) if end[op] < 0] if min(end, default=0.0) < 0 else []
        makespan = max(end, default=0.0)
    if stuck:
        op = stuck[0]
        i = g.instr[op]
        what = instr_text(i) if i is not None else "?"
        raise ScheduleError(
            f"deadlock: die {g.die[op]} never completes '{what}' ({len(stuck)} ops blocked)"
        )
    events = n  # every op was pushed once, when its last predecessor ended, and popped once
    if carry is None:
        b.energy.add_static(target, makespan)
    pools = {s.die: s.nbytes for s in p.slots}
    peak, peak_slots, peak_acts, slot_peak = sram_peaks(
        target.num_dies, pools, b.fills, b.acts, p.layers, start, end, makespan, b.closed_fills
    )
    over = max((pk - target.die(d).sram_bytes for d, pk in enumerate(peak)), default=0)
    extra: dict[str, float] = {"sram_over_bytes": over} if over > 0 else {}
    link_bytes = {
        f"{lk.src}->{lk.dst}": b.link_bytes.get(b.link_id[(lk.src, lk.dst)], 0)
        for lk in target.links
    }
    return Timeline(
        target=target, makespan=makespan, start=start, end=end, kind=kind, die=g.die,
        res=res, instr=g.instr, layer=layer, island=g.islands(),
        layer_names=[m.name for m in p.layers], island_names=[i.name for i in p.islands],
        num_resources=b.num_res, resource_names=b.res_names, busy=busy,
        dram_bytes=b.dram_bytes, link_bytes=link_bytes, peak_sram=peak,
        instructions=p.num_instructions(), events=events, host_bytes=b.host_bytes, extra=extra,
        peak_sram_slots=peak_slots, peak_sram_activations=peak_acts, peak_slot_bytes=slot_peak,
        energy=b.energy,
    )  # fmt: skip
