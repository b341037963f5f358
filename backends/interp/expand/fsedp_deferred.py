"""Charging deferred (token-buffered) work to the next iteration in a timing run.

With QoS token buffering an expansion computes some (token, expert) pairs in a *catch-up* step
after a ``signal <layer>.deferred`` / ``wait <layer>.deferred`` barrier on every die: that is the
next iteration's work, computed here only so one iteration still yields every output. For the
iteration's timing, :func:`charge_deferred` takes the catch-up ops out of their layer (their
layer tag becomes -1, so layer spans, utilization and bytes measured per layer exclude them) and
records in ``Timeline.extra``: ``deferred_pairs`` (routed pairs computed in catch-up steps) and
``deferred_s`` (the summed span of each layer's catch-up step, which the next iteration would
absorb).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from moec.backends.interp import relay_records
from moec.backends.interp.instr_column import InstrColumn
from moec.backends.interp.timing import Timeline
from moec.ir.stream.program import Accum, Instr, Load, Program, Recv, Signal, SliceRef, Wait

#: Suffix of the event that separates an iteration's work from its deferred catch-up.
DEFERRED_SUFFIX = ".deferred"


def deferred_event(layer: str) -> str:
    """The event that separates ``layer``'s iteration from its deferred catch-up."""
    return f"{layer}{DEFERRED_SUFFIX}"


def catchup_instructions(instrs: list[Instr]) -> tuple[list[Instr], int]:
    """One die's instructions inside catch-up steps (from a ``signal <layer>.deferred`` to the
    next ``signal`` or ``wait`` of another event), and the distinct routed (token, expert) pairs
    they accumulate."""
    out: list[Instr] = []
    pairs: set[tuple[str, int, int]] = set()
    event: str | None = None
    held: dict[int, SliceRef] = {}
    for i in instrs:
        cls = type(i)  # the instruction classes are final (a class test is cheaper)
        if cls is Signal or cls is Wait:
            if cls is Signal and i.event.endswith(DEFERRED_SUFFIX):
                event = i.event
            elif i.event != event:
                event = None
            continue
        if event is None:
            continue
        out.append(i)
        if isinstance(i, Load | Recv) and i.slot is not None and isinstance(i.content, SliceRef):
            held[i.slot] = i.content
        elif isinstance(i, Accum):
            c = held.get(i.slot)
            if c is not None and c.expert is not None:
                pairs.update((c.layer, t, c.expert) for t in i.tokens)
    return out, len(pairs)


def charge_deferred(p: Program, tl: Timeline) -> None:
    """Move the catch-up ops of ``p`` (a static program ``tl`` timed) out of their layers:
    ``tl.layer`` set in place (a list or an array); ``tl.start``/``tl.end`` lists or arrays."""
    ids, total = _catchup(p)
    if not ids:
        return
    layer = np.asarray(tl.layer, np.int64)
    caught = np.fromiter(map(ids.__contains__, _ids(tl.instr)), np.bool_, len(layer))
    ops = np.flatnonzero(caught & (layer >= 0))  # (None's id is no instruction's)
    tags = layer[ops]
    starts, ends = np.asarray(tl.start, np.float64)[ops], np.asarray(tl.end, np.float64)[ops]
    spans = []  # (lo, hi) per layer, in the order of its first catch-up op (the sum's order)
    found, first = np.unique(tags, return_index=True)
    for tag in found[np.argsort(first, kind="stable")].tolist():
        at = tags == tag
        spans.append((float(starts[at].min()), float(ends[at].max())))
    if isinstance(tl.layer, np.ndarray):
        tl.layer[ops] = -1
    else:
        for op in ops.tolist():
            tl.layer[op] = -1
    tl.extra["deferred_pairs"] = total
    tl.extra["deferred_s"] = sum(hi - lo for lo, hi in spans)


def iteration_ops(
    p: Program, layer: Sequence[int] | np.ndarray, instrs: list[Instr | None],
    events: Iterable[str],
) -> np.ndarray:  # fmt: skip
    """Per op of a timing run of ``p`` (its ``layer`` tags and instructions, ``events`` those
    its signals increment), its layer once :func:`charge_deferred` has run: the tag, -1 for
    an op of a catch-up step. Only a program with a catch-up step is walked."""
    out = np.array(layer, np.int64)
    if any(ev.endswith(DEFERRED_SUFFIX) for ev in set(events)):
        ids = _catchup(p)[0]  # (None's id is no instruction's)
        out[np.fromiter(map(ids.__contains__, _ids(instrs)), np.bool_, len(instrs))] = -1
    return out


def _ids(instrs: list[Instr | None]) -> list[int]:
    """Each op's instruction's ``id``; 0 for a kernel op's not made yet (no one holds it, so
    no catch-up walk found it): :meth:`.instr_column.InstrColumn.ids`, nothing made."""
    return instrs.ids() if isinstance(instrs, InstrColumn) else list(map(id, instrs))


def _catchup(p: Program) -> tuple[set[int], int]:
    """:func:`catchup_ids`, and the routed pairs the catch-up steps accumulate."""
    ids: set[int] = set()
    total = 0
    for st in p.streams:
        k = _first_catchup(st.instrs)
        if k is None:
            continue  # most streams: no token buffering, nothing to walk instruction by instruction
        # nothing before the first catch-up signal is in a catch-up step: walked from there
        instrs, pairs = catchup_instructions(st.instrs[k:])
        ids.update(id(i) for i in instrs)
        total += pairs
    return ids, total


def _first_catchup(instrs: Sequence[Instr]) -> int | None:
    """Where a stream's first catch-up step starts (its ``signal <layer>.deferred``), None
    when it has none: the signals found by ``list.index`` over the instructions' classes (a
    scan in C; ``Signal`` has no subclass), only their events compared in Python; a record
    stream (:mod:`..relay_records`: no signal in it) not read."""
    for at, piece in relay_records.starts(instrs):
        if isinstance(piece, relay_records.RecordStream):
            continue
        classes = list(map(type, piece))
        k = -1
        while True:
            try:
                k = classes.index(Signal, k + 1)
            except ValueError:
                break
            if piece[k].event.endswith(DEFERRED_SUFFIX):  # type: ignore[attr-defined]
                return at + k
    return None
