"""Charging deferred (token-buffered) work to the next iteration in a timing run.

With QoS token buffering an expansion computes some (token, expert) pairs in a *catch-up* step
after a ``signal <layer>.deferred`` / ``wait <layer>.deferred`` barrier on every die: that is the
next iteration's work, computed here only so one iteration still yields every output. For the
iteration's timing, :func:`charge_deferred` takes the catch-up ops out of their layer (their
layer tag becomes -1, so layer spans, utilization and bytes measured per layer exclude them) and
records in ``Timeline.extra``: ``deferred_pairs`` (routed pairs computed in catch-up steps) and
``deferred_s`` (the summed span of each layer's catch-up step, which the next iteration would
absorb).

An op is a catch-up op when its instruction is one of a catch-up step's (by identity, as
:func:`catchup_instructions` lists them). The steps are found piece by piece of each die's
stream (:func:`catchup_steps`): a record stream (:mod:`..relay_records`) holds no signal, so it
is in a step whole or not at all, and the ops whose instructions are its entries (a compiled
relay run's, :class:`..instr_column.InstrColumn`) are found by their run's stream, not
instruction by instruction; only the ops holding an instruction object are matched by identity.
The pairs are counted from the records' columns too: no instruction is made for either.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import Any

import numpy as np

from moec.backends.interp import instr_column, relay_records
from moec.backends.interp.instr_column import InstrColumn
from moec.backends.interp.relay_records import RecordStream
from moec.backends.interp.timing import Timeline
from moec.ir.stream.program import Accum, Instr, Load, Program, Recv, Signal, SliceRef, Wait

#: Suffix of the event that separates an iteration's work from its deferred catch-up.
DEFERRED_SUFFIX = ".deferred"

#: the record kinds of a :class:`RecordStream` (:data:`.fsedp_kernel.RECORD_NAMES`' order,
#: which a test checks; that module is not imported here: it compiles its kernel)
_KINDS = ("load", "gemm", "act", "accum", "free", "send", "recv")
_LOAD_K, _ACCUM_K, _RECV_K = _KINDS.index("load"), _KINDS.index("accum"), _KINDS.index("recv")

_get = list.__getitem__  # an op column's entry as it is (a kernel op's: a marker)

#: one die's stretch of a catch-up step: a piece of its stream and the entries ``a .. b-1``
#: there (a record stream's: all of them)
Stretch = tuple[Sequence[Any], int, int]


def deferred_event(layer: str) -> str:
    """The event that separates ``layer``'s iteration from its deferred catch-up."""
    return f"{layer}{DEFERRED_SUFFIX}"


def catchup_instructions(instrs: list[Instr]) -> tuple[list[Instr], int]:
    """One die's instructions inside catch-up steps (from a ``signal <layer>.deferred`` to the
    next ``signal`` or ``wait`` of another event), and the distinct routed (token, expert) pairs
    they accumulate. The reference :func:`catchup_steps` and :func:`charge_deferred` keep to."""
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


def catchup_steps(p: Program) -> list[list[Stretch]]:
    """Per die stream of ``p`` with catch-up instructions (:func:`catchup_instructions`'
    rule), their stretches in stream order: the signals and waits found by their classes'
    ids in numpy, a record stream taken whole (it has none)."""
    out: list[list[Stretch]] = []
    sync = (id(Signal), id(Wait))
    for st in p.streams:
        mine: list[Stretch] = []
        event: str | None = None
        for piece in relay_records.pieces(st.instrs):
            if isinstance(piece, RecordStream):
                if event is not None and len(piece):
                    mine.append((piece, 0, len(piece)))
                continue
            classes = np.fromiter(map(id, map(type, piece)), np.int64, len(piece))
            a = 0
            for k in np.flatnonzero((classes == sync[0]) | (classes == sync[1])).tolist():
                if event is not None and k > a:
                    mine.append((piece, a, k))
                i = piece[k]
                if type(i) is Signal and i.event.endswith(DEFERRED_SUFFIX):
                    event = i.event
                elif i.event != event:
                    event = None
                a = k + 1
            if event is not None and len(piece) > a:
                mine.append((piece, a, len(piece)))
        if mine:
            out.append(mine)
    return out


def charge_deferred(p: Program, tl: Timeline) -> None:
    """Move the catch-up ops of ``p`` (a static program ``tl`` timed) out of their layers:
    ``tl.layer`` set in place (a list or an array); ``tl.start``/``tl.end`` lists or arrays."""
    steps = catchup_steps(p)
    if not steps:
        return
    layer = np.asarray(tl.layer, np.int64)
    ops = np.flatnonzero(_caught(steps, tl.instr, len(layer)) & (layer >= 0))
    tags = layer[ops]
    starts, ends = np.asarray(tl.start, np.float64)[ops], np.asarray(tl.end, np.float64)[ops]
    spans = []  # (lo, hi) per layer, in the order of its first catch-up op (the sum's order)
    if len(ops) and tags[0] == tags.min() == tags.max():  # one layer (a part of a layered run)
        spans.append((float(starts.min()), float(ends.max())))
    elif len(ops):
        found = np.flatnonzero(np.bincount(tags)).tolist()
        at_of = {tag: tags == tag for tag in found}
        for tag in sorted(found, key=lambda tag: int(np.argmax(at_of[tag]))):
            at = at_of[tag]
            spans.append((float(starts[at].min()), float(ends[at].max())))
    if isinstance(tl.layer, np.ndarray):
        tl.layer[ops] = -1
    else:
        for op in ops.tolist():
            tl.layer[op] = -1
    tl.extra["deferred_pairs"] = sum(map(_pairs, steps))
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
        steps = catchup_steps(p)
        if steps:
            out[_caught(steps, instrs, len(out))] = -1
    return out


def _caught(steps: list[list[Stretch]], instrs: list[Instr | None], n: int) -> np.ndarray:
    """Per op (``instrs``: each op's instruction), whether its instruction is in a catch-up
    step. A kernel op's instruction is a place in a record stream (:class:`InstrColumn`):
    it is in a step when its stream is, read off the column's runs and pairings; any other
    op's instruction is an object, matched by identity against those of the steps (made ones
    only, in a record stream: an op holding one made it)."""
    records: set[int] = set()
    objs: list[int] = []
    for piece, a, b in (s for mine in steps for s in mine):
        if isinstance(piece, RecordStream):
            records.add(id(piece))
            made = piece.made_ids(np.arange(len(piece)))
            objs += made[made != 0].tolist()
        else:
            objs += map(id, piece[a:b])
    if isinstance(instrs, InstrColumn) and instrs.op0:
        caught, maybe = _kernel_caught(instrs, records, n)
        ops = np.flatnonzero(maybe)
        raw = np.fromiter(map(id, map(_get, repeat(instrs), ops.tolist())), np.int64, len(ops))
        obj = raw != id(instr_column._AT)
        ops, raw = ops[obj], raw[obj]
    else:
        caught = np.zeros(n, np.bool_)
        ops = np.arange(n)
        raw = np.fromiter(map(id, instrs), np.int64, n)
    if objs:  # (a set's lookups: no sort of either side, as np.isin's)
        caught[ops] = np.fromiter(map(set(objs).__contains__, raw.tolist()), np.bool_, len(ops))
    else:
        caught[ops] = False
    return caught


def _kernel_caught(col: InstrColumn, records: set[int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per op, whether it is a catch-up op if a kernel op (its pairing's stream,
    :meth:`InstrColumn.point`, or else its run's, :meth:`InstrColumn.placed`, is one of
    ``records``); and whether it may hold an instruction object: an op of no run, or a
    transfer a run's recv made that no run's send named (``Builder.transfer`` and the
    Python relay name such a transfer after their send, an object, in its place)."""
    flag = np.fromiter((id(s) in records for s in col.streams), np.bool_, len(col.streams))
    caught = np.zeros(n, np.bool_)
    maybe = np.ones(n, np.bool_)
    for first, (k, entries) in zip(col.op0, col.runs, strict=True):
        at = slice(first, first + len(entries))
        caught[at] = flag[k]
        rs = col.streams[k]
        maybe[at] = rs.kind[entries] == _RECV_K if isinstance(rs, RecordStream) else True
    for ops, k, _ in col.fixes:  # each op set once, after its run
        caught[ops] = flag[k]
        maybe[ops] = False
    return caught, maybe


def _pairs(mine: list[Stretch]) -> int:
    """The distinct routed (token, expert) pairs one die's catch-up stretches accumulate
    (:func:`catchup_instructions`' count): a record stream's from its columns."""
    held: dict[int, SliceRef] = {}
    tokens: dict[tuple[str, int], set[int]] = {}
    for piece, a, b in mine:
        if isinstance(piece, RecordStream):
            _record_pairs(piece, held, tokens)
            continue
        for i in piece[a:b]:
            if isinstance(i, Load | Recv):
                if i.slot is not None and isinstance(i.content, SliceRef):
                    held[i.slot] = i.content
            elif isinstance(i, Accum):
                c = held.get(i.slot)
                if c is not None and c.expert is not None:
                    tokens.setdefault((c.layer, c.expert), set()).update(i.tokens)
    return sum(map(len, tokens.values()))


def _record_pairs(
    rs: RecordStream, held: dict[int, SliceRef], tokens: dict[tuple[str, int], set[int]]
) -> None:
    """:func:`_pairs` of a record stream: each accum's slot content is that of the slot's
    last load or recv of a micro-slice before it (in the stream, else ``held``), its tokens
    its record's; ``held`` left with each slot's last."""
    src, kind, slot = rs.src, rs.kind, rs.slot
    is_ref = np.fromiter(map(isinstance, src.refs, repeat(SliceRef)), np.bool_, len(src.refs))
    fills = np.flatnonzero(((kind == _LOAD_K) | (kind == _RECV_K)) & is_ref[rs.trip])
    accums = np.flatnonzero(kind == _ACCUM_K)
    if not len(fills) + len(accums):
        return
    ev = np.concatenate([fills, accums])
    order = np.lexsort((ev, slot[ev]))  # by slot, then stream order
    ev, is_fill = ev[order], order < len(fills)
    ev_slot = slot[ev]
    m = len(ev)
    idx = np.arange(m)
    new = np.ones(m, np.bool_)
    new[1:] = ev_slot[1:] != ev_slot[:-1]
    group = np.maximum.accumulate(np.where(new, idx, 0))
    last = np.maximum.accumulate(np.where(is_fill, idx, -1))  # the latest fill so far
    acc = np.flatnonzero(~is_fill)
    inside = last[acc] >= group[acc]  # a fill of the same slot before it, in this stream
    trip = rs.trip
    tok_of = src.unit_of[trip[ev[acc]]].astype(np.int64) * src.n + rs.die
    fill_trip = np.where(inside, trip[ev[np.maximum(last[acc], 0)]], -1)
    keys: set[tuple[str, int, int]] = set()
    refs = src.refs
    for t, tok, q in zip(fill_trip.tolist(), tok_of.tolist(), ev_slot[acc].tolist(), strict=True):
        c = refs[t] if t >= 0 else held.get(q)
        if c is not None and c.expert is not None:
            keys.add((c.layer, c.expert, tok))
    for lay, expert, tok in keys:
        tokens.setdefault((lay, expert), set()).update(src.held[tok])
    ends = np.flatnonzero(np.append(new[1:], True))  # each slot's last event
    lastfill = last[ends]
    lastfill = lastfill[lastfill >= group[ends]]
    for q, t in zip(ev_slot[lastfill].tolist(), trip[ev[lastfill]].tolist(), strict=True):
        held[q] = refs[t]
