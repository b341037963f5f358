"""The timing machine's op graph, and the builder that turns a static program into it.

An instruction becomes one or more *ops*: an op holds resources (a die's compute unit, a DRAM
channel, a link direction, a host link) for a duration, or holds none (a ``DELAY`` for access
latency, a ``SYNC`` for free/signal/wait), and starts when its predecessors have ended. The
:class:`Builder` walks each die's stream in order and asks the instruction's **timing handler**
(:data:`TIMING`, one per opcode, registered in :mod:`.timing_ops`) to add its ops and edges, with
the die's running state (:class:`DieState`: the latest wait, compute, signal, each slot's fill
and uses). The handlers share the builder's costs: :meth:`Builder.read` (a DRAM or host read
into a die, with its route), :meth:`Builder.transfer` (a send/recv pair).

The semantics these implement are in :mod:`.timing`'s docstring; the run is :func:`.timing.run_timing`.
"""

from __future__ import annotations

from array import array
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from moec.backends.interp.cost_memo import CostMemo, LoadPath, precision_of
from moec.backends.interp.energy import EnergyLedger
from moec.backends.interp.instr_column import InstrColumn
from moec.backends.interp.sram import LayerActs
from moec.backends.interp.transfer_queue import TransferQueue
from moec.ir import cost
from moec.ir.cost.energy import (
    dram_energy,
    host_energy,
    link_energy,
    sram_read_energy,
    sram_write_energy,
)
from moec.ir.energy import PARTS
from moec.ir.errors import ScheduleError
from moec.ir.stream.opcodes import HandlerTable
from moec.ir.stream.program import (
    HOST_CHANNEL,
    Accum,
    Act,
    Free,
    Gemm,
    Instr,
    Load,
    Program,
    Recv,
    Send,
    SliceRef,
)
from moec.ir.target import Target

#: the energy parts a transfer charges (indices into ``PARTS``)
D2D, SRAM = PARTS.index("d2d"), PARTS.index("sram")

# op kinds
COMPUTE, LOAD, XFER, SYNC, DENSE_DRAM, DELAY = 0, 1, 2, 3, 4, 5
KIND_NAMES = ("compute", "load", "transfer", "sync", "dense-dram", "delay")
# ops with no resource go first at equal times, so a freed slot is seen by a load at that time
PRIORITY = (1, 1, 1, 0, 1, 0)

#: ``handler(builder, die state, instruction)`` adds the instruction's ops and edges
TimingHandler = Callable[["Builder", "DieState", Any], None]
#: The timing handler of every opcode (filled by :mod:`.timing_ops`).
TIMING: HandlerTable[TimingHandler] = HandlerTable("timing")
#: ``unit(builder, die state, gemm, act, accum)`` adds a whole micro-slice's three ops at once
#: and returns True, or adds nothing and returns False (the handlers then take them one by one)
SliceUnit = Callable[["Builder", "DieState", Any, Any, Any], bool]
#: the slice unit and the (gemm, act, accum) handlers it stands for (set by :mod:`.timing_ops`)
SLICE_UNIT: list[tuple[SliceUnit, tuple[TimingHandler, ...]]] = []
#: ``chain(builder, die state, instructions, j)`` adds the streamed micro-slices (five
#: instructions each: load, gemm, act, accum, free) that follow one another from
#: ``instructions[j]`` at once and returns the index after them (``j``: none added)
SliceChain = Callable[["Builder", "DieState", Sequence[Any], int], int]
#: the slice chain and the (load, free) handlers it stands for (set by :mod:`.slice_chain`),
#: used with the slice unit
SLICE_CHAIN: list[tuple[SliceChain, tuple[TimingHandler, ...]]] = []
#: ``relay(builder, die state, instructions, j)`` adds the ops of a run of slot transfers,
#: frees, loads and slices from ``j`` on and returns where the run ends (``j``: nothing added)
Relay = Callable[["Builder", "DieState", Any, int], int]
#: the relay, the (recv, send, free, load) handlers and the slice unit it stands for (set by
#: :mod:`.relay_chain`), used with the slice unit
RELAY: list[tuple[Relay, tuple[TimingHandler, ...], SliceUnit]] = []


#: the instructions a relay (:data:`RELAY`) may start with
RELAYED = (Recv, Send, Free, Gemm, Load)


class OpGraph:
    """Ops as parallel lists (no per-op objects: the hot loop reads lists by op id), and edges
    as a log in the order they are added (``src[k] -> dst[k]``).

    An op holds at most one resource (``res``: its id, -1 for none). An op's successors are the
    edges leaving it in the order they were added, which is the order the event loop releases
    them in: :func:`.event_loop.chained_successors` (and the event loop's CSR arrays) sort
    the log by source, stably. Chains of new ops (a read's hops, a slice's ``gemm -> act ->
    accum``) are logged as runs instead (``runs``: ``start, count`` pairs, each of ops ``start
    .. start + count - 1`` releasing the next op), which only a chain whose edges are each op's
    first successor may use: the run's edges go before the logged ones of the same source. An
    op's dependency count is the number of edges into it (plus one for a ``wait``, released by
    its counter: the builder's ``waiters``), so no count is kept while building.
    A few fields are rare (a dense island, a tail reservation's ``back``): they are kept per
    op only where set, and :meth:`islands` gives them as a list once the graph is built.
    Handlers on the hot path append edges themselves (``src.append(a)``, ``dst.append(b)``),
    as :meth:`edge` does: a call per edge was a tenth of the build. The edge log and the runs
    are typed (``array('q')``): the event loop reads them as numpy arrays in place, where
    lists cost a copy per part that reads every int object back (4% of a whole-model FSE-DP
    run). The other columns stay lists (an ``array``'s ``append`` costs 50 ns more), but for
    a compiled relay run's ``kind``, ``dur`` and ``res`` (:mod:`.packed_ops`), and ``layer``.
    """

    def __init__(self) -> None:
        self.kind: list[int] = []
        self.dur: list[float] = []
        #: per op, the resource it holds (-1: none)
        self.res: list[int] = []
        self.die: list[int] = []
        #: per op its instruction (a kernel op's made when read: :mod:`.instr_column`)
        self.instr: list[Instr | None] = InstrColumn()
        self.layer = array("q")  # per op its layer index (-1: none)
        #: the edge log: edge k runs from op ``src[k]`` to op ``dst[k]`` (typed, like ``runs``:
        #: the event loop reads them as numpy arrays without a copy, and no op index in them
        #: is a Python object)
        self.src = array("q")
        self.dst = array("q")
        #: runs of chained ops, flat ``start, count``: op ``start + j`` releases the next op
        #: first, for ``j < count``
        self.runs = array("q")
        #: per op in a dense island: the island's index (others: -1)
        self.island_of: dict[int, int] = {}
        #: how long before its ready time an op may start (a load's tail reservation on a
        #: link), for the ops where it is not 0
        self.back_of: dict[int, float] = {}
        #: per compiled relay run: its first op, kind, dur, res (:mod:`.packed_ops`)
        self.packed: list[tuple[int, Any, Any, Any]] = []

    def add(
        self, kind: int, dur: float, res: int, die: int, instr: Instr | None,
        layer: int = -1, island: int = -1, back: float = 0.0,
    ) -> int:  # fmt: skip
        op = len(self.kind)
        self.kind.append(kind)
        self.dur.append(dur)
        self.res.append(res)
        self.die.append(die)
        self.instr.append(instr)
        self.layer.append(layer)
        if island >= 0:
            self.island_of[op] = island
        if back:
            self.back_of[op] = back
        return op

    def edge(self, a: int | None, b: int) -> None:
        if a is not None and a != b:
            self.src.append(a)
            self.dst.append(b)

    def islands(self) -> list[int]:
        """Per op, its dense island's index or -1."""
        out = [-1] * len(self.die)  # (kind, dur, res may be dropped: packed_ops)
        for op, k in self.island_of.items():
            out[op] = k
        return out


class DieState:
    """One die's running state while its stream is turned into ops (op ids, or None)."""

    __slots__ = (
        "die", "fence", "since_signal", "last_signal", "last_compute", "slot_fill",
        "slot_fill_info", "slot_uses", "slot_free", "slot_fill_rec", "last_recv", "pending_h",
    )  # fmt: skip

    def __init__(self, die: int) -> None:
        self.die = die
        #: the latest wait: nothing after it issues before it completes
        self.fence: int | None = None
        #: ops issued since the latest signal (the next signal waits for them)
        self.since_signal: list[int] | array[int] = []  # typed by a run of streamed slices
        self.last_signal: int | None = None
        self.last_compute: int | None = None
        #: per slot: the op at which its fill has arrived, what it holds at which precision, the
        #: ops using it since, the op of its latest free, and its fill's free op's index in fills
        self.slot_fill: dict[int, int] = {}
        self.slot_fill_info: dict[int, tuple[SliceRef | None, str]] = {}
        self.slot_uses: dict[int, list[int]] = defaultdict(list)
        self.slot_free: dict[int, int] = {}
        self.slot_fill_rec: dict[int, int] = {}
        #: per (layer, x or y): the arrival op of the latest block received
        self.last_recv: dict[tuple[str, str], int] = {}
        #: per slot: (gemm op, bytes of its h) until the slot's accum
        self.pending_h: dict[int, tuple[int, int]] = {}

    def fill(self, slot: int, op: int, sref: SliceRef | None, prec: str) -> None:
        """Slot ``slot``'s data has arrived at ``op``; it holds ``sref`` at ``prec``."""
        self.slot_fill[slot] = op
        self.slot_fill_info[slot] = (sref, prec)
        self.slot_uses[slot] = []


class Builder:
    """Turns a static program into the op graph (all edges known before the run).

    A micro-slice's ``gemm``, ``act`` and ``accum`` on one slot, one after the other in a
    stream, are added by one call (:data:`SLICE_UNIT`) when :attr:`batch_slices` is set: the
    same ops, edges and charges as the three handlers, less the edges that cannot change when
    an op is released (module doc of :mod:`.timing_ops`); a streamed micro-slice's five
    instructions (:data:`SLICE_CHAIN`) and a run of slot transfers, frees, loads and slices
    (:data:`RELAY`, FSE-DP's streams) likewise, with the same graph as those handlers.
    ``batch_slices = False`` is the reference the tests compare against.
    """

    batch_slices = True

    def __init__(
        self, p: Program, target: Target, precision: Mapping[str, Sequence[str]] | None = None,
        costs: CostMemo | None = None,
    ) -> None:  # fmt: skip
        self.p, self.t = p, target
        #: per layer, each expert's precision where a load's bytes cannot say (a residency hit)
        self.precision = dict(precision or {})
        self.g = OpGraph()
        D, C = target.num_dies, len(target.channels)
        self.D, self.C = D, C
        self.link_id = {(lk.src, lk.dst): D + C + k for k, lk in enumerate(target.links)}
        self.link_ends = {r: key for key, r in self.link_id.items()}
        #: joules per die and part, charged as instructions are turned into ops
        self.energy = EnergyLedger(D)
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
        m = costs if costs is not None and costs.target is target else CostMemo(target)
        #: the memoized costs (shared with the other parts of a layer-by-layer run)
        self.costs = m
        self._load_paths, self._read_costs, self._read_plans = m.load_paths, m.reads, m.plans
        self.compute_costs, self._xfer_costs = m.compute, m.transfers
        self.slice_costs, self.unit_costs = m.slices, m.units
        #: per (layer, shared, slice): :meth:`slice_geometry`'s answer
        self.geometries: dict[tuple[str, bool, int], tuple[int, int, int, str, bool]] = {}
        #: per (layer, shared, slice, bytes): the precision those bytes imply
        self._slice_prec: dict[tuple[str, bool, int, int], str] = {}
        #: per shape of a streamed micro-slice: what :data:`SLICE_CHAIN` appends (this
        #: program's layer indices, so not shared with other parts)
        self.chains: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        # transfers waiting for their other side: (src, dst) -> (hold op, arrival op), in order
        self.pending_send: dict[tuple[int, int], TransferQueue] = defaultdict(TransferQueue)
        self.pending_recv: dict[tuple[int, int], TransferQueue] = defaultdict(TransferQueue)
        self.waiters: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        self.signal_event: dict[int, str] = {}
        # slot fills and frees, for SRAM, flat and typed: die, fill op, free op or -1
        self.fills = array("q")
        #: fills whose free is known when they are added (a streamed micro-slice), flat: die,
        #: fill op, free op
        self.closed_fills: list[int] = []
        # activations, for SRAM: (die, layer index) -> what the die does with them
        self.acts: dict[tuple[int, int], LayerActs] = {}
        #: the compiled relay's template tables and stream columns (:mod:`.relay_compiled`)
        self.relay_tables: Any = None

    # --- costs (every duration comes from moec.ir.cost) ---
    def compute_cost(self, key: tuple[Any, ...], fn: Callable[[], float]) -> float:
        """The duration ``fn()`` of a compute op, memoized on ``key`` (ops repeat shapes)."""
        hit = self.compute_costs.get(key)
        if hit is None:
            hit = self.compute_costs[key] = fn()
        return hit

    def load_path(self, channel: int, die: int) -> LoadPath:
        """The resources a load from ``channel`` into ``die`` goes through."""
        key = (channel, die)
        hit = self._load_paths.get(key)
        if hit is None and channel == HOST_CHANNEL:
            host = self.t.host
            if host is None:
                raise ScheduleError(
                    f"die {die} loads from the host, but target {self.t.name} has no host tier"
                )
            hit = LoadPath(self.host_base + die, HOST_CHANNEL, host.latency_s, ())
            self._load_paths[key] = hit
        elif hit is None:
            ch = self.t.channel(channel)
            path = self.t.route(ch.die, die)
            hops = tuple(
                (self.link_id[(a, b)], a, b, self.t.link(a, b).latency_s)
                for a, b in zip(path, path[1:], strict=False)
            )
            hit = LoadPath(self.D + channel, channel, ch.latency_s, hops)
            self._load_paths[key] = hit
        return hit

    def read_costs(
        self, channel: int, die: int, nbytes: int
    ) -> tuple[float, list[tuple[float, float]]]:
        """The durations of a read's ops: the channel's (or host link's) occupancy, and per hop
        ``(link hold, back)`` where ``back`` is how far the hop's hold may start before the
        previous stage ends: its own data time, at most the slowest upstream data time (so an
        idle read arrives at :func:`moec.ir.cost.load_time`)."""
        key = (channel, die, nbytes)
        hit = self._read_costs.get(key)
        if hit is not None:
            return hit
        t = self.t
        if channel == HOST_CHANNEL:
            hit = (cost.host_occupancy(t, nbytes, die), [])
        else:
            lp = self.load_path(channel, die)
            upstream = cost.dram_data_time(t, channel, nbytes)
            hops = []
            for _, a, b, _ in lp.hops:
                data = cost.link_data_time(t, a, b, nbytes)
                hops.append((data, min(data, upstream)))
                upstream = max(upstream, data)
            hit = (cost.dram_occupancy(t, channel, nbytes), hops)
        self._read_costs[key] = hit
        return hit

    def read(
        self, kind: int, channel: int, die: int, nbytes: int, i: Instr, layer: int = -1,
        island: int = -1,
    ) -> tuple[int, int]:  # fmt: skip
        """The ops of a DRAM (or host) read into ``die``: ``(first, last)``.

        The first op holds the channel (or host link) for its occupancy
        (:func:`moec.ir.cost.dram_occupancy`: DMA setup and data), and a ``DELAY`` op for its
        latency follows; then, per hop of the route, an op holding that link for its data time
        as a tail reservation (``back``: :mod:`.timing`'s rule) and a delay for the hop's
        latency. The last op's end is when the data has arrived.
        """
        key = (kind, channel, die, nbytes)
        tpl = self.costs.read_ops.get(key)
        if tpl is None:
            tpl = self.costs.read_ops[key] = self._read_template(kind, channel, die, nbytes)
        kinds, durs, res, backs, charges, links = tpl
        g = self.g
        first = len(g.kind)
        k = len(kinds)
        g.kind += kinds
        g.dur += durs
        g.res += res
        g.runs.append(first)  # the chain: each op releases the next
        g.runs.append(k - 1)
        g.die += (die,) * k
        g.instr += (i,) * k
        g.layer.extend((layer,) * k)
        if island >= 0:
            for op in range(first, first + k):
                g.island_of[op] = island
        for j, back in backs:
            g.back_of[first + j] = back
        self.energy.log(first, charges)  # in read order
        link_bytes = self.link_bytes
        for r in links:
            link_bytes[r] += nbytes
        if channel == HOST_CHANNEL:
            self.host_bytes[die] += nbytes
        else:
            self.dram_bytes[channel] += nbytes
        return first, first + k - 1

    def _read_template(self, kind: int, channel: int, die: int, nbytes: int) -> tuple[Any, ...]:
        """The ops :meth:`read` appends, as a chain (each op the next one's only predecessor):
        their kinds, durations and resources; the ``back`` of the hops (by
        position, where not 0); the energy charges ``(position, die, part index, joules)`` in
        the order they are made; the links the bytes cross. Memoized per (kind, channel, die,
        bytes): the same for every read of that shape."""
        lp = self.load_path(channel, die)
        occ, hops, source, e_source, e_sram = self.read_plan(channel, die, nbytes)
        kinds, durs = [kind], [occ]
        res = [lp.res]
        backs: list[tuple[int, float]] = []
        part = PARTS.index("host" if channel == HOST_CHANNEL else "dram")
        charges = [(0, source, part, e_source)]

        def delay(latency: float) -> None:  # a latency's op (none for 0)
            if latency > 0.0:
                kinds.append(DELAY)
                durs.append(latency)
                res.append(-1)

        delay(lp.latency)
        hold = 0
        for r, dur, back, lat, src, e_link in hops:
            hold = len(kinds)
            kinds.append(kind)
            durs.append(dur)
            res.append(r)
            if back:
                backs.append((hold, back))
            charges.append((hold, src, D2D, e_link))
            delay(lat)
        charges.append((hold, die, SRAM, e_sram))
        links = tuple(r for r, *_ in hops)
        return tuple(kinds), tuple(durs), tuple(res), tuple(backs), tuple(charges), links

    def read_plan(
        self, channel: int, die: int, nbytes: int
    ) -> tuple[float, list[tuple[int, float, float, float, int, float]], int, float, float]:
        """What :meth:`read` adds for a read, memoized: ``(occupancy, hops, the die charged
        for the source, its joules, the SRAM write's joules)``, a hop being ``(link resource,
        hold, back, latency, link source die, link joules)``."""
        key = (channel, die, nbytes)
        hit = self._read_plans.get(key)
        if hit is not None:
            return hit
        t = self.t
        lp = self.load_path(channel, die)
        occ, hop_costs = self.read_costs(channel, die, nbytes)
        if channel == HOST_CHANNEL:
            source, e_source = die, host_energy(t, nbytes)
        else:
            source, e_source = t.channel(channel).die, dram_energy(t, channel, nbytes)
        hops = [
            (res, dur, back, lat, src, link_energy(t, src, dst, nbytes))
            for (res, src, dst, lat), (dur, back) in zip(lp.hops, hop_costs, strict=True)
        ]
        hit = (occ, hops, source, e_source, sram_write_energy(t, nbytes))
        self._read_plans[key] = hit
        return hit

    def transfer(self, key: tuple[int, int], is_send: bool, i: Any, die: int) -> tuple[int, int]:
        """The ops of the k-th transfer on ``key``, ``(hold, arrival)``: the link hold for
        :func:`moec.ir.cost.link_occupancy` (DMA setup and framed data), then the link latency
        (created by whichever side comes first)."""
        if is_send:
            mine, other = self.pending_send, self.pending_recv
        else:
            mine, other = self.pending_recv, self.pending_send
        waiting = other.get(key)
        if waiting:
            ops = waiting.popleft()
            if is_send:
                g = self.g
                for op in ops:  # name transfers after the send
                    g.instr[op] = i
                    g.die[op] = die
            return ops
        a, b = key
        res, occ, lat, _, _, _, charges = self.transfer_costs(a, b, i.nbytes)
        # the hold and (for a latency) its delay, as OpGraph.add would add them
        g = self.g
        hold = len(g.kind)
        if lat <= 0.0:
            g.kind.append(XFER)
            g.dur.append(occ)
            g.res.append(res[0])
            g.die.append(die)
            g.instr.append(i)
            g.layer.append(-1)
            ops = (hold, hold)
        else:
            g.kind += (XFER, DELAY)
            g.dur += (occ, lat)
            g.res += (res[0], -1)
            g.runs.append(hold)
            g.runs.append(1)
            g.die += (die, die)
            g.instr += (i, i)
            g.layer.extend((-1, -1))
            ops = (hold, hold + 1)
        self.link_bytes[res[0]] += i.nbytes
        self.energy.log(hold, charges)
        mine[key].append(ops)
        return ops

    def transfer_costs(
        self, a: int, b: int, nbytes: int
    ) -> tuple[tuple[int], float, float, float, float, float, tuple[Any, ...]]:
        """A transfer of ``nbytes`` over link ``a -> b``: (the link resource as an op's
        resources, hold, latency, link joules, source SRAM read joules, destination SRAM write
        joules, and those three as the ledger's charges at the hold), memoized (a layer repeats
        a few block sizes over many transfers)."""
        key = (a, b, nbytes)
        hit = self._xfer_costs.get(key)
        if hit is None:
            t = self.t
            e_link = link_energy(t, a, b, nbytes)
            e_read, e_write = sram_read_energy(t, nbytes), sram_write_energy(t, nbytes)
            hit = self._xfer_costs[key] = (
                (self.link_id[(a, b)],), cost.link_occupancy(t, a, b, nbytes),
                t.link(a, b).latency_s, e_link, e_read, e_write,
                ((0, a, D2D, e_link), (0, a, SRAM, e_read), (0, b, SRAM, e_write)),
            )  # fmt: skip
        return hit

    def slice_geometry(self, c: SliceRef) -> tuple[int, int, int, str, bool]:
        """(hidden, width, elements, dtype, gated) of a micro-slice (memoized)."""
        key = (c.layer, c.expert is None, c.slice)
        hit = self.geometries.get(key)
        if hit is None:
            hit = self.geometries[key] = self._slice_geometry(c)
        return hit

    def _slice_geometry(self, c: SliceRef) -> tuple[int, int, int, str, bool]:
        _, m = self.layers[c.layer]
        lay = self.layouts.get((c.layer, c.expert is None))
        if lay is None:
            raise ScheduleError(f"micro-slice {c} but layer {c.layer} declares no layout")
        w = lay.width(c.slice)
        mats = 3 if m.gated else 2  # shared experts are gated exactly when the routed ones are
        return m.hidden, w, mats * m.hidden * w, m.dtype, m.gated

    def slice_precision(self, c: SliceRef, nbytes: int) -> str:
        """The precision a slice filled with ``nbytes`` holds: implied by its bytes, or, for a
        residency hit (0 bytes moved), the expert's entry in the layer's precision table."""
        key = (c.layer, c.expert is None, c.slice, nbytes)
        hit = self._slice_prec.get(key)
        if hit is None:
            _, _, elements, dtype, _ = self.slice_geometry(c)
            hit = self._slice_prec[key] = precision_of(nbytes, elements, dtype)
        if nbytes == 0 and c.expert is not None:
            table = self.precision.get(c.layer)
            if table:
                return table[c.expert]
        return hit

    # --- SRAM records ---
    def layer_acts(self, die: int, layer: int) -> LayerActs:
        """What die ``die`` does with MoE layer ``layer``'s activations (created on first use)."""
        la = self.acts.get((die, layer))
        if la is None:
            la = self.acts[(die, layer)] = LayerActs()
        return la

    def record_fill(self, die: int, op: int) -> int:
        """A slot fill starting at ``op``: where in ``fills`` its free op goes when it comes."""
        fills = self.fills
        fills.extend((die, op, -1))
        return len(fills) - 1

    # --- the walk ---
    def build(self) -> None:
        handlers = TIMING.by_class()
        unit = chain = None
        if self.batch_slices and SLICE_UNIT:
            fn, (h_gemm, h_act, h_accum) = SLICE_UNIT[0]
            if handlers.get(Gemm) is h_gemm and handlers.get(Act) is h_act:
                if handlers.get(Accum) is h_accum:  # none replaced (a test's toy handlers)
                    unit = fn
                    if (
                        SLICE_CHAIN
                        and (handlers.get(Load), handlers.get(Free)) == SLICE_CHAIN[0][1]
                    ):
                        chain = SLICE_CHAIN[0][0]
        relay = None
        if unit is not None and RELAY and RELAY[0][2] is unit:
            if tuple(handlers.get(c) for c in (Recv, Send, Free, Load)) == RELAY[0][1]:
                relay = RELAY[0][0]
        for st in sorted(self.p.streams, key=lambda s: s.die):
            s = DieState(st.die)
            ins = st.instrs
            j, n = 0, len(ins)
            while j < n:
                i = ins[j]
                cls = type(i)
                if cls is Load and chain is not None:
                    after = chain(self, s, ins, j)
                    if after > j:
                        j = after
                        continue
                # a block transfer (an activation's send or recv) never starts a relay
                if relay is not None and cls in RELAYED and getattr(i, "block", None) is None:
                    k = relay(self, s, ins, j)
                    if k > j:
                        j = k
                        continue
                if cls is Gemm and unit is not None and j + 2 < n:
                    a, c = ins[j + 1], ins[j + 2]
                    if type(a) is Act and type(c) is Accum and a.slot == i.slot == c.slot:
                        if unit(self, s, i, a, c):
                            j += 3
                            continue
                handler = handlers.get(cls)
                if handler is None:
                    raise ScheduleError(f"die {st.die}: not an instruction: {i!r}")
                handler(self, s, i)
                j += 1
        for key in sorted(set(self.pending_send) | set(self.pending_recv)):
            ns, nr = len(self.pending_send[key]), len(self.pending_recv[key])
            if ns or nr:
                a, b = key
                raise ScheduleError(
                    f"send/recv mismatch between die {a} and die {b}: "
                    f"{ns} unmatched sends, {nr} unmatched recvs"
                )
