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
``peak_sram_slots`` / ``peak_sram_activations`` split it at that moment. A run whose activations
push a die past its SRAM is not stopped (activations have no backpressure): the excess is
recorded in ``extra["sram_over_bytes"]`` (the largest over the dies) and reported.

Every resource is FIFO in the order ops claim it (its ``free_at`` only grows), so a tail
reservation, claimed when the previous stage of its load ends and started no earlier than the
link's ``free_at``, never overlaps another hold; it only reaches back into time the link spent
idle.
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass, field

import numpy as np

from moec.backends.interp.engine import EventQueue
from moec.ir.activations import h_bytes, x_row_bytes, y_row_bytes
from moec.ir.cost import GB
from moec.ir.errors import ScheduleError
from moec.ir.stream.printer import instr as instr_text
from moec.ir.stream.program import (
    HOST_CHANNEL,
    Accum,
    Act,
    Dense,
    Free,
    Gemm,
    Instr,
    Load,
    MoE,
    Program,
    Recv,
    Send,
    Signal,
    SliceRef,
    TokenSet,
    Wait,
)
from moec.ir.target import PRECISION_BYTES, Target

# op kinds
COMPUTE, LOAD, XFER, SYNC, DENSE_DRAM, DELAY = 0, 1, 2, 3, 4, 5
KIND_NAMES = ("compute", "load", "transfer", "sync", "dense-dram", "delay")
# ops with no resource go first at equal times, so a freed slot is seen by a load at that time
_PRIORITY = (1, 1, 1, 0, 1, 0)


@dataclass
class Timeline:
    """What a timing run recorded: every op's start/end and what it held."""

    target: Target
    makespan: float
    start: list[float]
    end: list[float]
    kind: list[int]
    die: list[int]
    res: list[tuple[int, ...]]
    instr: list[Instr | None]
    #: per op: index of the MoE layer it belongs to, or -1
    layer: list[int]
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


@dataclass(frozen=True)
class _LoadPath:
    """How a load from one channel (or the host) reaches one die."""

    #: the channel's (or the die's host link's) resource id
    res: int
    latency: float
    #: bytes per second
    bw: float
    #: per hop of the route: (link resource, latency, bytes per second, the larger of this link's
    #: and the slowest upstream bandwidth: ``bytes / it`` is how far the hop's hold may start
    #: before the previous stage ends)
    hops: tuple[tuple[int, float, float, float], ...]


class _Graph:
    """Ops as parallel lists (no per-op objects: the hot loop reads lists by op id)."""

    def __init__(self) -> None:
        self.kind: list[int] = []
        self.dur: list[float] = []
        self.res: list[tuple[int, ...]] = []
        self.ndeps: list[int] = []
        self.succ: list[list[int]] = []
        self.die: list[int] = []
        self.instr: list[Instr | None] = []
        self.layer: list[int] = []
        self.island: list[int] = []
        #: how long before its ready time an op may start (a load's tail reservation on a link)
        self.back: list[float] = []

    def add(
        self, kind: int, dur: float, res: tuple[int, ...], die: int, instr: Instr | None,
        layer: int = -1, island: int = -1, back: float = 0.0,
    ) -> int:  # fmt: skip
        self.kind.append(kind)
        self.dur.append(dur)
        self.back.append(back)
        self.res.append(res)
        self.ndeps.append(0)
        self.succ.append([])
        self.die.append(die)
        self.instr.append(instr)
        self.layer.append(layer)
        self.island.append(island)
        return len(self.kind) - 1

    def edge(self, a: int | None, b: int) -> None:
        if a is not None and a != b:
            self.succ[a].append(b)
            self.ndeps[b] += 1


def _precision_of(nbytes: int, elements: int, default: str) -> str:
    """The precision whose element size makes ``elements`` weigh ``nbytes``, else ``default``."""
    if elements <= 0 or int(round(elements * PRECISION_BYTES.get(default, 0))) == nbytes:
        return default
    for name, size in PRECISION_BYTES.items():
        if int(round(elements * size)) == nbytes:
            return name
    return default


@dataclass
class _LayerActs:
    """What one die does with one MoE layer's activations (op ids and token sets)."""

    ops: list[int] = field(default_factory=list)
    #: x reads: gemm and send x
    x_uses: list[tuple[int, TokenSet]] = field(default_factory=list)
    #: x blocks received: (arrival op, tokens); ``recv_x_start``: (the link hold's op, tokens)
    recv_x: list[tuple[int, TokenSet]] = field(default_factory=list)
    recv_x_start: list[tuple[int, TokenSet]] = field(default_factory=list)
    accums: list[tuple[int, TokenSet]] = field(default_factory=list)
    #: y blocks received: (the link hold's op, arrival op, tokens, bytes)
    recv_y: list[tuple[int, int, TokenSet, int]] = field(default_factory=list)
    send_y: list[tuple[int, TokenSet]] = field(default_factory=list)
    #: slices in flight: (gemm op, accum op, bytes of h)
    h: list[tuple[int, int, int]] = field(default_factory=list)


def _mask(sets: list[TokenSet], n: int) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    for ts in sets:
        for a, b in ts.ranges:
            m[a : b + 1] = True
    return m


def _first_last(
    items: list[tuple[int, TokenSet]], times: list[float], n: int, first: bool
) -> np.ndarray:  # fmt: skip
    """Per token, the earliest (``first``) or latest ``times[op]`` of the items covering it."""
    out = np.full(n, np.inf if first else -np.inf)
    for op, ts in items:
        t = times[op]
        for a, b in ts.ranges:
            seg = out[a : b + 1]
            if first:
                np.minimum(seg, t, out=seg)
            else:
                np.maximum(seg, t, out=seg)
    return out


def _activation_events(
    acts: _LayerActs, tokens: int, hidden: int, dtype: str, start: list[float],
    end: list[float],
) -> tuple[list[float], list[int]]:  # fmt: skip
    """Allocation (+bytes) and release (-bytes) events of one die's activations of one layer
    (the rules of :mod:`moec.ir.activations`)."""
    times: list[float] = []
    deltas: list[int] = []
    if not acts.ops:
        return times, deltas
    lo = min(start[op] for op in acts.ops)
    hi = max(end[op] for op in acts.ops)
    xb, yb = x_row_bytes(hidden, dtype), y_row_bytes(hidden)
    n = tokens
    received = _mask([ts for _, ts in acts.recv_x], n)
    home = _mask([ts for _, ts in acts.x_uses], n) & ~received
    if acts.recv_y:
        sent_y = _mask([ts for _, ts in acts.send_y], n)
        home |= _mask([ts for _, _, ts, _ in acts.recv_y], n) & ~sent_y & ~received
    k = int(home.sum())
    if k:
        times += [lo, hi]
        deltas += [k * (xb + yb), -k * (xb + yb)]
    if acts.recv_x:  # other dies' inputs: first recv to last use
        first = _first_last(acts.recv_x_start, start, n, True)
        last = _first_last(acts.x_uses, end, n, False)
        arrived = _first_last(acts.recv_x, end, n, True)
        idx = np.nonzero(received)[0]
        f, last_use = first[idx], np.maximum(last[idx], arrived[idx])
        times += f.tolist() + last_use.tolist()
        deltas += [xb] * idx.size + [-xb] * idx.size
    if acts.recv_x or acts.recv_y:  # other dies' partial outputs: first write to last send
        first = np.minimum(
            _first_last(acts.accums, start, n, True),
            _first_last([(op, ts) for _, op, ts, _ in acts.recv_y], end, n, True),
        )
        last = _first_last(acts.send_y, end, n, False)
        idx = np.nonzero(~home & np.isfinite(first))[0]
        f = first[idx]
        release = np.where(np.isfinite(last[idx]), np.maximum(last[idx], f), hi)
        times += f.tolist() + release.tolist()
        deltas += [yb] * idx.size + [-yb] * idx.size
    for hold, op, _, nbytes in acts.recv_y:  # landing buffer while the block crosses the link
        times += [start[hold], end[op]]
        deltas += [nbytes, -nbytes]
    for g, a, nbytes in acts.h:
        times += [start[g], end[a]]
        deltas += [nbytes, -nbytes]
    return times, deltas


class _Builder:
    """Turns a static program into the op graph (all edges known before the run)."""

    def __init__(self, p: Program, target: Target) -> None:
        self.p, self.t = p, target
        self.g = _Graph()
        D, C = target.num_dies, len(target.channels)
        self.D, self.C = D, C
        self.link_id = {(lk.src, lk.dst): D + C + k for k, lk in enumerate(target.links)}
        # host links, one per die, after the D2D links
        self.host_base = D + C + len(target.links)
        hosts = D if target.host is not None else 0
        self.num_res = self.host_base + hosts
        self.res_names = (
            [f"die {d} compute" for d in range(D)]
            + [f"ch{c.id} (die {c.die})" for c in target.channels]
            + [f"link {lk.src}->{lk.dst}" for lk in target.links]
            + [f"host link {d}" for d in range(hosts)]
        )
        self.host_bytes = [0] * hosts
        self.layers = {m.name: (k, m) for k, m in enumerate(p.layers)}
        self.islands = {isl.name: k for k, isl in enumerate(p.islands)}
        self.layouts = {(lay.layer, lay.shared): lay for lay in p.layouts}
        self.dram_bytes = [0] * C
        self.link_bytes: dict[int, int] = defaultdict(int)
        self.dense_precision = p.layers[0].dtype if p.layers else "fp16"
        self._load_paths: dict[tuple[int, int], _LoadPath] = {}
        # transfers waiting for their other side: (src, dst) -> (hold op, arrival op), in order
        self.pending_send: dict[tuple[int, int], deque[tuple[int, int]]] = defaultdict(deque)
        self.pending_recv: dict[tuple[int, int], deque[tuple[int, int]]] = defaultdict(deque)
        self.waiters: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        self.signal_event: dict[int, str] = {}
        # slot fills and frees, for SRAM: (die, fill op, free op or -1)
        self.fills: list[tuple[int, int, list[int]]] = []
        # activations, for SRAM: (die, layer index) -> what the die does with them
        self.acts: dict[tuple[int, int], _LayerActs] = {}

    # --- costs ---
    def load_path(self, channel: int, die: int) -> _LoadPath:
        """The resources and rates a load from ``channel`` into ``die`` goes through."""
        key = (channel, die)
        hit = self._load_paths.get(key)
        if hit is None and channel == HOST_CHANNEL:
            host = self.t.host
            if host is None:
                raise ScheduleError(
                    f"die {die} loads from the host, but target {self.t.name} has no host tier"
                )
            hit = _LoadPath(self.host_base + die, host.latency_s, host.gbps * GB, ())
            self._load_paths[key] = hit
        elif hit is None:
            ch = self.t.channel(channel)
            path = self.t.route(ch.die, die)
            hops = []
            upstream = ch.gbps * GB  # the slowest bandwidth before this hop
            for a, b in zip(path, path[1:], strict=False):
                lk = self.t.link(a, b)
                bw = lk.gbps * GB
                hops.append((self.link_id[(a, b)], lk.latency_s, bw, max(bw, upstream)))
                upstream = min(upstream, bw)
            hit = _LoadPath(self.D + channel, ch.latency_s, ch.gbps * GB, tuple(hops))
            self._load_paths[key] = hit
        return hit

    def read(
        self, kind: int, channel: int, die: int, nbytes: int, i: Instr, layer: int = -1,
        island: int = -1,
    ) -> tuple[int, int]:  # fmt: skip
        """The ops of a DRAM (or host) read into ``die``: ``(first, last)``.

        The first op holds the channel (or host link) for ``bytes / bandwidth``, and a
        :meth:`delay` op for its latency follows; then, per hop of the route, an op holding that
        link for ``bytes / link bandwidth`` as a tail reservation (``back``: the module
        docstring's rule) and a delay for the hop's latency. The last op's end is when the data
        has arrived.
        """
        lp = self.load_path(channel, die)
        g = self.g
        first = g.add(kind, nbytes / lp.bw, (lp.res,), die, i, layer, island)
        last = self.delay(first, lp.latency)
        for res, lat, bw, cap in lp.hops:
            op = g.add(kind, nbytes / bw, (res,), die, i, layer, island, nbytes / cap)
            g.edge(last, op)
            self.link_bytes[res] += nbytes
            last = self.delay(op, lat)
        if channel == HOST_CHANNEL:
            self.host_bytes[die] += nbytes
        else:
            self.dram_bytes[channel] += nbytes
        return first, last

    def delay(self, hold: int, latency: float) -> int:
        """The op at which ``hold``'s data arrives: ``latency`` after its end, holding nothing
        (access latency is pipelined, it occupies no resource). ``hold`` itself when
        ``latency`` is 0."""
        if latency <= 0.0:
            return hold
        g = self.g
        op = g.add(
            DELAY, latency, (), g.die[hold], g.instr[hold], g.layer[hold], g.island[hold]
        )  # fmt: skip
        g.edge(hold, op)
        return op

    def slice_geometry(self, c: SliceRef) -> tuple[int, int, int, str, bool]:
        """(hidden, width, elements, dtype, gated) of a micro-slice."""
        _, m = self.layers[c.layer]
        lay = self.layouts.get((c.layer, c.expert is None))
        if lay is None:
            raise ScheduleError(f"micro-slice {c} but layer {c.layer} declares no layout")
        w = lay.width(c.slice)
        mats = 3 if (m.gated or c.expert is None) else 2
        return m.hidden, w, mats * m.hidden * w, m.dtype, m.gated or c.expert is None

    # --- the walk ---
    def build(self) -> None:
        g, t = self.g, self.t
        for st in sorted(self.p.streams, key=lambda s: s.die):
            die = st.die
            rate: dict[str, float] = {}
            fence: int | None = None  # latest wait
            since_signal: list[int] = []
            last_signal: int | None = None
            last_compute: int | None = None
            slot_fill: dict[int, int] = {}
            slot_fill_info: dict[int, tuple[SliceRef | None, str]] = {}
            slot_uses: dict[int, list[int]] = defaultdict(list)
            slot_free: dict[int, int] = {}
            slot_fill_rec: dict[int, list[int]] = {}
            last_recv: dict[tuple[str, str], int] = {}
            pending_h: dict[int, tuple[int, int]] = {}  # slot -> (gemm op, bytes of h)
            acts = self.acts

            def flops_time(
                flops: float, precision: str, _rate: dict[str, float] = rate, _die: int = die
            ) -> float:
                r = _rate.get(precision)
                if r is None:
                    r = t.die(_die).flops_per_s(precision)
                    _rate[precision] = r
                return flops / r

            for i in st.instrs:
                if isinstance(i, Gemm | Act | Accum):
                    content, prec = slot_fill_info.get(i.slot, (None, "fp16"))
                    if content is None:
                        raise ScheduleError(
                            f"die {die}: '{instr_text(i)}' needs a micro-slice in s{i.slot}"
                        )
                    hidden, w, _, _, gated = self.slice_geometry(content)
                    n = len(i.tokens)
                    if isinstance(i, Gemm):
                        flops = 2.0 * n * hidden * w * (2 if gated else 1)
                    elif isinstance(i, Act):
                        flops = 2.0 * n * w
                    else:
                        flops = 2.0 * n * w * hidden
                    lk, _ = self.layers[content.layer]
                    op = g.add(COMPUTE, flops_time(flops, prec), (die,), die, i, lk)
                    la = acts.get((die, lk)) or acts.setdefault((die, lk), _LayerActs())
                    la.ops.append(op)
                    if isinstance(i, Gemm):
                        la.x_uses.append((op, i.tokens))
                        pending_h[i.slot] = (op, h_bytes(n, w, gated))
                    elif isinstance(i, Accum):
                        la.accums.append((op, i.tokens))
                        gemm = pending_h.pop(i.slot, None)
                        if gemm is not None:
                            la.h.append((gemm[0], op, gemm[1]))
                    g.edge(fence, op)
                    g.edge(last_compute, op)
                    g.edge(slot_fill.get(i.slot), op)
                    if isinstance(i, Gemm):
                        g.edge(last_recv.get((content.layer, "x")), op)
                    last_compute = op
                    slot_uses[i.slot].append(op)
                    since_signal.append(op)
                elif isinstance(i, Load):
                    tag = -1
                    prec = self.dense_precision
                    c = i.content
                    sref: SliceRef | None = None
                    if isinstance(c, SliceRef):
                        tag = self.layers[c.layer][0]
                        _, _, elements, dtype, _ = self.slice_geometry(c)
                        prec = _precision_of(i.nbytes, elements, dtype)
                        sref = c
                    first, op = self.read(LOAD, i.channel, die, i.nbytes, i, tag)
                    if tag >= 0:
                        self._act(die, tag).ops += [first, op]
                    g.edge(fence, first)
                    g.edge(slot_free.get(i.slot), first)
                    self._fill(die, i.slot, op, sref, prec, slot_fill, slot_fill_info, slot_uses)
                    slot_fill_rec[i.slot] = self._record_fill(die, first)
                    since_signal.append(op)
                elif isinstance(i, Send | Recv):
                    key = (die, i.peer) if isinstance(i, Send) else (i.peer, die)
                    # edges in go to the link hold, edges out leave from the arrival
                    hold, op = self._transfer(key, isinstance(i, Send), i, die)
                    tag = -1
                    if i.block is not None:
                        tag = self.layers[i.block.layer][0]
                    elif isinstance(i, Recv) and isinstance(i.content, SliceRef):
                        tag = self.layers[i.content.layer][0]
                    if tag >= 0 and g.layer[op] < 0:
                        g.layer[hold] = g.layer[op] = tag
                    if tag >= 0:
                        la = self._act(die, tag)
                        la.ops += [hold, op]
                        if i.block is not None:
                            ts = i.block.tokens
                            if isinstance(i, Send):
                                (la.x_uses if i.block.which == "x" else la.send_y).append((op, ts))
                            elif i.block.which == "x":
                                la.recv_x.append((op, ts))
                                la.recv_x_start.append((hold, ts))
                            else:
                                la.recv_y.append((hold, op, ts, i.nbytes))
                    g.edge(fence, hold)
                    if isinstance(i, Send):
                        if i.slot is not None:
                            g.edge(slot_fill.get(i.slot), hold)
                            slot_uses[i.slot].append(op)
                        elif i.block is not None:
                            g.edge(last_recv.get((i.block.layer, i.block.which)), hold)
                            if i.block.which == "y":
                                g.edge(last_compute, hold)
                    else:
                        if i.slot is not None:
                            g.edge(slot_free.get(i.slot), hold)
                            c = i.content
                            sref = c if isinstance(c, SliceRef) else None
                            prec = self.dense_precision
                            if sref is not None:
                                _, _, elements, dtype, _ = self.slice_geometry(sref)
                                prec = _precision_of(i.nbytes, elements, dtype)
                            self._fill(
                                die, i.slot, op, sref, prec, slot_fill, slot_fill_info, slot_uses
                            )
                            slot_fill_rec[i.slot] = self._record_fill(die, hold)
                        elif i.block is not None:
                            last_recv[(i.block.layer, i.block.which)] = op
                    since_signal.append(op)
                elif isinstance(i, Free):
                    content, _ = slot_fill_info.get(i.slot, (None, ""))
                    tag = self.layers[content.layer][0] if content is not None else -1
                    op = g.add(SYNC, 0.0, (), die, i, tag)
                    if tag >= 0:
                        self._act(die, tag).ops.append(op)
                    g.edge(fence, op)
                    g.edge(slot_fill.get(i.slot), op)
                    for u in slot_uses.pop(i.slot, []):
                        g.edge(u, op)
                    slot_free[i.slot] = op
                    rec = slot_fill_rec.pop(i.slot, None)
                    if rec is not None:
                        rec.append(op)
                    since_signal.append(op)
                elif isinstance(i, Signal):
                    op = g.add(SYNC, 0.0, (), die, i)
                    g.edge(fence, op)
                    g.edge(last_signal, op)
                    for u in since_signal:
                        g.edge(u, op)
                    since_signal = []
                    last_signal = op
                    self.signal_event[op] = i.event
                elif isinstance(i, Wait):
                    op = g.add(SYNC, 0.0, (), die, i)
                    g.edge(fence, op)
                    g.ndeps[op] += 1  # released by the counter
                    self.waiters[i.event][i.count].append(op)
                    fence = op
                elif isinstance(i, Dense):
                    isl = self.islands.get(i.island, -1)
                    comp = g.add(
                        COMPUTE, flops_time(float(i.flops), self.dense_precision), (die,), die, i,
                        -1, isl,
                    )  # fmt: skip
                    g.edge(fence, comp)
                    g.edge(last_compute, comp)
                    last_compute = comp
                    since_signal.append(comp)
                    if i.nbytes > 0:
                        ch = t.nearest_channel(die)
                        first, mem = self.read(DENSE_DRAM, ch.id, die, i.nbytes, i, -1, isl)
                        g.edge(fence, first)
                        since_signal.append(mem)
                elif isinstance(i, MoE):
                    raise ScheduleError(
                        f"die {die}: 'moe {i.layer}' must be expanded before timing "
                        "(the runtime part needs a routing)"
                    )
                else:
                    raise ScheduleError(f"die {die}: not an instruction: {i!r}")
        for key in sorted(set(self.pending_send) | set(self.pending_recv)):
            ns, nr = len(self.pending_send[key]), len(self.pending_recv[key])
            if ns or nr:
                a, b = key
                raise ScheduleError(
                    f"send/recv mismatch between die {a} and die {b}: "
                    f"{ns} unmatched sends, {nr} unmatched recvs"
                )

    def _act(self, die: int, layer: int) -> _LayerActs:
        la = self.acts.get((die, layer))
        if la is None:
            la = self.acts[(die, layer)] = _LayerActs()
        return la

    def sram_peaks(
        self, start: list[float], end: list[float], makespan: float
    ) -> tuple[list[int], list[int], list[int], list[int]]:
        """Per die: peak SRAM (slots + activations), its slot and activation parts at the peak,
        and the peak of slots alone."""
        D = self.t.num_dies
        pools = {s.die: s.nbytes for s in self.p.slots}
        times: dict[int, list[float]] = defaultdict(list)
        slot_d: dict[int, list[int]] = defaultdict(list)
        act_d: dict[int, list[int]] = defaultdict(list)
        for die, fill, rec in self.fills:
            size = pools.get(die, 0)
            times[die] += [start[fill], end[rec[1]] if len(rec) > 1 else makespan]
            slot_d[die] += [size, -size]
            act_d[die] += [0, 0]
        for (die, k), la in sorted(self.acts.items()):
            m = self.p.layers[k]
            ts, ds = _activation_events(la, m.tokens, m.hidden, m.dtype, start, end)
            times[die] += ts
            act_d[die] += ds
            slot_d[die] += [0] * len(ds)
        peak, slots, acts, slot_peak = [0] * D, [0] * D, [0] * D, [0] * D
        for die, tv in times.items():
            s_arr = np.asarray(slot_d[die], dtype=np.int64)
            a_arr = np.asarray(act_d[die], dtype=np.int64)
            order = np.lexsort((s_arr + a_arr, np.asarray(tv)))  # releases first at equal times
            cs, ca = np.cumsum(s_arr[order]), np.cumsum(a_arr[order])
            total = cs + ca
            j = int(np.argmax(total))
            peak[die], slots[die], acts[die] = int(total[j]), int(cs[j]), int(ca[j])
            slot_peak[die] = int(cs.max())
        return peak, slots, acts, slot_peak

    def _record_fill(self, die: int, op: int) -> list[int]:
        rec = [op]
        self.fills.append((die, op, rec))
        return rec

    @staticmethod
    def _fill(
        die: int, slot: int, op: int, sref: SliceRef | None, prec: str,
        slot_fill: dict[int, int], slot_fill_info: dict[int, tuple[SliceRef | None, str]],
        slot_uses: dict[int, list[int]],
    ) -> None:  # fmt: skip
        slot_fill[slot] = op
        slot_fill_info[slot] = (sref, prec)
        slot_uses[slot] = []

    def _transfer(
        self, key: tuple[int, int], is_send: bool, i: Send | Recv, die: int
    ) -> tuple[int, int]:  # fmt: skip
        """The ops of the k-th transfer on ``key``, ``(hold, arrival)``: the link hold for
        ``bytes / link bandwidth``, then the link latency (created by whichever side comes
        first)."""
        mine, other = (
            (self.pending_send, self.pending_recv)
            if is_send
            else (self.pending_recv, self.pending_send)
        )
        if other[key]:
            ops = other[key].popleft()
            if is_send:
                for op in ops:  # name transfers after the send
                    self.g.instr[op] = i
                    self.g.die[op] = die
            return ops
        a, b = key
        lk = self.t.link(a, b)
        hold = self.g.add(XFER, i.nbytes / (lk.gbps * GB), (self.link_id[key],), die, i)
        ops = (hold, self.delay(hold, lk.latency_s))
        self.link_bytes[self.link_id[key]] += i.nbytes
        mine[key].append(ops)
        return ops


def run_timing(p: Program, target: Target) -> Timeline:
    """Simulate a static program on ``target``; deadlocks are a one-line ScheduleError."""
    b = _Builder(p, target)
    b.build()
    g = b.g
    n = len(g.kind)
    ready = [0.0] * n
    start = [0.0] * n
    end = [-1.0] * n
    free_at = [0.0] * b.num_res
    busy = [0.0] * b.num_res
    ndeps, succ, dur, res, kind, back = g.ndeps, g.succ, g.dur, g.res, g.kind, g.back
    prio = [_PRIORITY[k] for k in kind]
    q = EventQueue()
    push, pop = q.push, q.pop
    for op in range(n):
        if ndeps[op] == 0:
            push(0.0, prio[op], op)
    counters: dict[str, int] = defaultdict(int)
    waiters, signal_event = b.waiters, b.signal_event
    events = 0
    while q:
        t, op = pop()
        events += 1
        r = res[op]
        s = t - back[op]
        for x in r:
            if free_at[x] > s:
                s = free_at[x]
        e = s + dur[op]
        for x in r:
            free_at[x] = e
            busy[x] += e - s
        start[op] = s
        end[op] = e
        if op in signal_event:
            ev = signal_event[op]
            counters[ev] += 1
            for w in waiters[ev].pop(counters[ev], ()):
                if ready[w] < e:
                    ready[w] = e
                ndeps[w] -= 1
                if ndeps[w] == 0:
                    push(ready[w], prio[w], w)
        for x in succ[op]:
            if ready[x] < e:
                ready[x] = e
            ndeps[x] -= 1
            if ndeps[x] == 0:
                push(ready[x], prio[x], x)
    stuck = [op for op in range(n) if end[op] < 0]
    if stuck:
        op = stuck[0]
        i = g.instr[op]
        what = instr_text(i) if i is not None else "?"
        raise ScheduleError(
            f"deadlock: die {g.die[op]} never completes '{what}' ({len(stuck)} ops blocked)"
        )
    makespan = max(end, default=0.0)
    peak, peak_slots, peak_acts, slot_peak = b.sram_peaks(start, end, makespan)
    over = max((pk - target.die(d).sram_bytes for d, pk in enumerate(peak)), default=0)
    extra: dict[str, float] = {"sram_over_bytes": over} if over > 0 else {}
    link_bytes = {
        f"{lk.src}->{lk.dst}": b.link_bytes.get(b.link_id[(lk.src, lk.dst)], 0)
        for lk in target.links
    }
    return Timeline(
        target=target, makespan=makespan, start=start, end=end, kind=g.kind, die=g.die,
        res=g.res, instr=g.instr, layer=g.layer, island=g.island,
        layer_names=[m.name for m in p.layers], island_names=[i.name for i in p.islands],
        num_resources=b.num_res, resource_names=b.res_names, busy=busy,
        dram_bytes=b.dram_bytes, link_bytes=link_bytes, peak_sram=peak,
        instructions=p.num_instructions(), events=events, host_bytes=b.host_bytes, extra=extra,
        peak_sram_slots=peak_slots, peak_sram_activations=peak_acts, peak_slot_bytes=slot_peak,
    )  # fmt: skip
