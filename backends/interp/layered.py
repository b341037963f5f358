"""A timing run one layer at a time: memory flat in the number of MoE layers.

A shipped program brackets every ``moe`` placeholder (and every dense island) with package-wide
barriers: on every die ``signal s`` directly followed by ``wait s count N`` (N the number of
dies with a stream). Nothing after a ``wait`` issues before every die's ``signal`` has
completed, and a ``signal`` completes after everything its die issued before it, so the parts
of the run between two barriers only meet through: the time the barrier releases, each
resource's free time (a load's tail reservation may reach back before it) and busy time, the
energy ledger, and slots or activations held across it (none in a program this path accepts).

:func:`plan_parts` cuts each die's stream before each barrier's ``signal``: part 0 runs up to
and including the first barrier's ``signal``; part j starts with barrier j's ``signal`` and
``wait`` again and runs up to and including the next barrier's ``signal``. :func:`run_layered`
times the parts in order (:func:`~.timing.run_timing` with a :class:`~.timing.Carry`): a part's
first ops are its copies of the barrier's ``signal``, released at the time the previous part's
last ``signal`` completed, so the barrier's ``wait`` ops are released at the same time, in the
same order and before any other op, as in the whole program's run, and every op after them
starts and ends at the same float. Each part keeps only its summary (:mod:`.summary`: spans
and each MoE layer's figures; SRAM peaks per die; bytes; events), so one layer's expanded
instructions and ops are alive at a time.

The whole program's run (:func:`~.timing.run_timing` on the spliced expansion) stays the
reference: a program that does not have this shape (a slot filled before a barrier and used
after it, a transfer or a layer across a barrier, a barrier that is not package-wide) is not
cut (:func:`plan_parts` returns None), and the tests compare both runs on every golden.
"""

from __future__ import annotations

import dataclasses
import gc
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from moec.backends.interp import chain_hints, event_loop
from moec.backends.interp.energy import EnergyLedger
from moec.backends.interp.expand import splice
from moec.backends.interp.expand.fsedp_deferred import DEFERRED_SUFFIX, charge_deferred
from moec.backends.interp.relay_records import walked
from moec.backends.interp.sram import sram_overflow
from moec.backends.interp.summary import RunSummary, layer_parts, merge_spans, tag_spans
from moec.backends.interp.timing import SYNC, Carry, Timeline, run_timing
from moec.ir.errors import ScheduleError
from moec.ir.stream.program import (
    Free,
    Instr,
    Load,
    MoE,
    Program,
    Recv,
    Send,
    Signal,
    SliceLayout,
    SliceRef,
    Wait,
)
from moec.ir.stream.verify import verify_program
from moec.ir.target import Target


@dataclass
class Part:
    """One part of the run: per die its static instructions (``moe`` placeholders still in),
    and the MoE layers whose placeholders it holds, in program order."""

    streams: dict[int, list[Instr]]
    layers: list[str]


def _barriers(p: Program) -> list[str] | None:
    """The events of the package-wide barriers, in order, when every stream has the same ones
    (``signal s`` directly followed by ``wait s count N``, N the number of streams, each once);
    None when some stream differs."""
    n = len(p.streams)
    seen: list[str] | None = None
    for st in p.streams:
        mine: list[str] = []
        ins = st.instrs
        for k, i in enumerate(ins):
            if (
                isinstance(i, Signal)
                and k + 1 < len(ins)
                and isinstance(ins[k + 1], Wait)
                and ins[k + 1].event == i.event  # type: ignore[union-attr]
                and ins[k + 1].count == n  # type: ignore[union-attr]
            ):
                mine.append(i.event)
        if seen is None:
            seen = mine
        elif mine != seen:
            return None
    if seen is None or len(set(seen)) != len(seen):
        return None
    counts = Counter(i.event for st in p.streams for i in st.instrs if isinstance(i, Signal | Wait))
    if any(counts[e] != 2 * n for e in seen):
        return None
    return seen


def plan_parts(p: Program) -> list[Part] | None:
    """``p``'s streams cut at its package-wide barriers (module doc), or None when the program
    has no such barrier, or a layer's placeholders or static instructions are not all in one
    part."""
    events = _barriers(p)
    if not events:
        return None
    cut = set(events)
    parts: list[Part] = [Part({}, []) for _ in range(len(events) + 1)]
    owner: dict[str, int] = {}
    for st in p.streams:
        j = 0
        out: list[Instr] = []
        parts[0].streams[st.die] = out
        for k, i in enumerate(st.instrs):
            if isinstance(i, Signal) and i.event in cut and isinstance(st.instrs[k + 1], Wait):
                out.append(i)
                j += 1
                out = []
                parts[j].streams[st.die] = out
            out.append(i)
            layer = _layer_of(i)
            if layer is not None:
                if owner.setdefault(layer, j) != j:
                    return None
                if isinstance(i, MoE) and layer not in parts[j].layers:
                    parts[j].layers.append(layer)
    return parts


def _layer_of(i: Instr) -> str | None:
    if isinstance(i, MoE):
        return i.layer
    if isinstance(i, Load | Recv) and isinstance(i.content, SliceRef):
        return i.content.layer
    if isinstance(i, Send | Recv) and i.block is not None:
        return i.block.layer
    return None


def walk_part(streams: dict[int, list[Instr]]) -> tuple[bool, bool]:
    """Whether an expanded part is self-contained: it frees every slot it fills and matches
    every send with a recv (so nothing it holds or sends is seen by another part); and whether
    it has a token-buffered catch-up step (a ``signal`` of a ``<layer>.deferred`` event:
    :func:`charge_deferred` has work). One walk over its instructions."""
    flows: Counter[tuple[int, int]] = Counter()
    catchup = False
    for die, instrs in streams.items():
        held: set[int] = set()
        add, discard = held.add, held.discard
        # peers of the sends and recvs, counted once per die (a Counter update per instruction
        # was a third of an FSE-DP part's walk)
        sent: list[int] = []
        got: list[int] = []
        for i in walked(instrs, held, sent, got):  # a record stream's walked from its records
            cls = type(i)  # the instruction classes are final: no subclass to miss
            if cls is Load:
                add(i.slot)
            elif cls is Free:
                discard(i.slot)
            elif cls is Recv:
                got.append(i.peer)
                if i.slot is not None:
                    add(i.slot)
            elif cls is Send:
                sent.append(i.peer)
            elif cls is Signal:
                catchup = catchup or i.event.endswith(DEFERRED_SUFFIX)
        for peer, n in Counter(sent).items():
            flows[(die, peer)] += n
        for peer, n in Counter(got).items():
            flows[(peer, die)] -= n
        if held:
            return False, catchup
    return not any(flows.values()), catchup


def run_layered(
    p: Program,
    target: Target,
    parts: list[Part],
    layouts: dict[tuple[str, bool], SliceLayout],
    expansion: Callable[[str], dict[int, list[Instr]]],
    verify: bool,
    allow_overflow: bool = True,
    limit: float | None = None,
) -> Timeline | None:
    """Time ``p`` part by part (module doc); ``expansion(layer)`` gives a layer's per-die
    instructions (asked once, in program order). None when an expanded part is not
    self-contained (:func:`walk_part`): the caller runs the whole program instead.

    Unless ``allow_overflow``, the run stops at the first part whose SRAM peak passes a die's
    SRAM, with the :class:`ScheduleError` the whole run would end with (located at the
    program), naming that part's layers: the later parts cannot change the verdict, and a
    whole model that overflows in its first layer is refused after one layer, not all.

    With the collector paused (``gc_paused``), the objects that exist before the run are
    frozen for it (``gc.freeze``; thawed after, into the oldest generation), so that the
    collections between parts walk what the parts allocated, not also everything the caller
    allocated since its last collection (an FSE-DP slice choice's 1.8 million objects: 0.8 s
    of an 8x8 fsedp-r5 run); nothing else collects while the collector is paused.

    ``limit``: each part's :func:`~.timing.run_timing` ``limit`` (``p``'s first MoE layer
    provably spans more than that: :class:`~.event_loop.PastLimit`)."""
    freeze = not gc.isenabled() and gc.get_freeze_count() == 0
    if freeze:
        gc.freeze()
    try:
        return _run_parts(p, target, parts, layouts, expansion, verify, allow_overflow, limit)
    finally:
        event_loop.expect(0)
        if freeze:
            gc.unfreeze()


def _run_parts(
    p: Program,
    target: Target,
    parts: list[Part],
    layouts: dict[tuple[str, bool], SliceLayout],
    expansion: Callable[[str], dict[int, list[Instr]]],
    verify: bool,
    allow_overflow: bool,
    limit: float | None = None,
) -> Timeline | None:
    """:func:`run_layered`'s loop over the parts."""
    D = target.num_dies
    num_res = D + len(target.channels) + len(target.links) + (D if target.host else 0)
    carry = Carry(0.0, [0.0] * num_res, [0.0] * num_res, EnergyLedger(D))
    summary = RunSummary()
    makespan = 0.0
    events = instructions = 0
    dram_bytes: list[int] = [0] * len(target.channels)
    link_bytes: dict[str, int] = {}
    host_bytes: list[int] | None = None
    peaks: list[tuple[int, int, int]] = [(0, 0, 0)] * D
    slot_peak = [0] * D
    deferred_pairs, deferred_s = 0, 0.0
    moe_ops = 0  # ops of the last part that held MoE layers
    #: per part, how many parts after it hold MoE layers
    moe_after = [0] * len(parts)
    for j in range(len(parts) - 2, -1, -1):
        moe_after[j] = moe_after[j + 1] + bool(parts[j + 1].layers)
    #: the last part's names of layers, islands and resources (the same in every part)
    last: tuple[list[str], list[str], int, list[str]] | None = None
    for j, part in enumerate(parts):
        if j:
            # the previous part's ops and instructions: a caller may have paused the collector
            # (gc_paused), and what they hold in cycles would otherwise stay until the run ends;
            # the youngest generation is what the previous part allocated, so this stays linear
            gc.collect(0)
        shell = _part_program(p, part.streams)
        prog = splice(shell, {m: expansion(m) for m in part.layers}, layouts)
        contained, catchup = walk_part({st.die: st.instrs for st in prog.streams})
        if not contained:
            chain_hints.clear()  # the part is dropped unbuilt: its blocks' shapes too
            return None
        if verify:
            verify_program(prog, target)
        if part.layers and not moe_ops:  # the first MoE part: its ops, and the MoE parts after
            # it at its size (an op per instruction at least), may pay for the compiled loop
            # now (same numbers either way); a caller's larger expectation stands
            ahead = prog.num_instructions() * (1 + moe_after[j])
            event_loop.expect(max(event_loop.expected(), ahead))
        tl = run_timing(prog, target, carry=carry, arrays=True, limit=limit)
        if catchup:  # (it sets ``tl.layer``'s entries in place)
            charge_deferred(prog, tl)
        # the MoE parts after this one, at the last MoE part's size: the event loop may switch
        # to its compiled copy now rather than after timing that many ops itself (same numbers
        # either way); before the first MoE part a caller's expectation (an FSE-DP slice
        # choice's, of its timings to come) stands
        if part.layers:
            moe_ops = tl.events
        if moe_ops:
            event_loop.expect(moe_ops * moe_after[j])
        dup = len(prog.streams) if j > 0 else 0  # this part's copies of the barrier's signal
        events += tl.events - dup
        instructions += prog.num_instructions() - dup
        makespan = max(makespan, tl.makespan)
        islands = tag_spans(tl.island, tl.start, tl.end)
        if not allow_overflow:
            _stop_if_over(p, target, tl, part.layers or [tl.island_names[i] for i in islands])
        parts_j = layer_parts(tl)  # each layer's span is its part's (the same min and max)
        merge_spans(summary.layer_spans, {lp.layer: (lp.start, lp.end) for lp in parts_j})
        merge_spans(summary.island_spans, islands)
        summary.parts += parts_j
        carry.energy.drop_rows()
        for c, nb in enumerate(tl.dram_bytes):
            dram_bytes[c] += nb
        for k, nb in tl.link_bytes.items():
            link_bytes[k] = link_bytes.get(k, 0) + nb
        host_bytes = (
            list(tl.host_bytes)
            if host_bytes is None
            else [a + b for a, b in zip(host_bytes, tl.host_bytes, strict=True)]
        )
        for d in range(D):  # the earliest part reaching a die's peak holds it (as one sweep)
            if tl.peak_sram[d] > peaks[d][0]:
                peaks[d] = (tl.peak_sram[d], tl.peak_sram_slots[d], tl.peak_sram_activations[d])
            slot_peak[d] = max(slot_peak[d], tl.peak_slot_bytes[d])
        if "deferred_pairs" in tl.extra:
            deferred_pairs += int(tl.extra["deferred_pairs"])
            deferred_s += tl.extra["deferred_s"]
        ends = np.asarray([id(st.instrs[-1]) for st in prog.streams if st.instrs], np.int64)
        sync = _sync_ops(tl)  # those of the streams' last instructions, picked by numpy
        last_ops = np.asarray(sync, np.int64)[
            np.isin(tl.instr.id_array(sync), ends)  # no instruction made
        ]
        carry.clock = float(np.asarray(tl.end)[last_ops].max()) if last_ops.size else makespan
        last = (tl.layer_names, tl.island_names, tl.num_resources, tl.resource_names)
        # drop the part now: refcounting frees its instructions and ops, so the collection
        # before the next part only walks what is left in cycles, not the whole part
        del tl, prog, shell
    assert last is not None
    layer_names, island_names, num_resources, resource_names = last
    carry.energy.add_static(target, makespan)
    peak = [pk for pk, _, _ in peaks]
    over = max((pk - target.die(d).sram_bytes for d, pk in enumerate(peak)), default=0)
    extra: dict[str, float] = {"sram_over_bytes": over} if over > 0 else {}
    if deferred_pairs:
        extra["deferred_pairs"] = deferred_pairs
        extra["deferred_s"] = deferred_s
    return Timeline(
        target=target, makespan=makespan, start=[], end=[], kind=[], die=[], res=[], instr=[],
        layer=[], island=[], layer_names=layer_names, island_names=island_names,
        num_resources=num_resources, resource_names=resource_names, busy=carry.busy,
        dram_bytes=dram_bytes, link_bytes=link_bytes, peak_sram=peak, instructions=instructions,
        host_bytes=host_bytes or [], events=events, extra=extra,
        peak_sram_slots=[s for _, s, _ in peaks], peak_sram_activations=[a for _, _, a in peaks],
        peak_slot_bytes=slot_peak, energy=carry.energy, summary=summary,
    )  # fmt: skip


def _stop_if_over(p: Program, target: Target, tl: Timeline, names: list[str]) -> None:
    """The whole run's SRAM verdict (:func:`~.simulate.check_fit`), given at the first part
    that overflows, with the part's layers (or dense islands) named."""
    part = ", ".join(n for n in names if n) or "a part with no layer"
    why = sram_overflow(
        target, tl.peak_sram, tl.peak_sram_slots, tl.peak_sram_activations, part=part
    )
    if why is not None:
        raise ScheduleError(why, p.filename if p.filename != "<string>" else p.name)


def _sync_ops(tl: Timeline) -> list[int]:
    """The part's sync ops (signals, waits, frees), found in one numpy pass over the kinds."""
    return np.flatnonzero(np.asarray(tl.kind) == SYNC).tolist()


def _part_program(p: Program, streams: dict[int, list[Instr]]) -> Program:
    return dataclasses.replace(
        p,
        streams=[dataclasses.replace(st, instrs=streams.get(st.die, [])) for st in p.streams],
        source=None,
    )
