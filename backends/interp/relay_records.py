"""The FSE-DP scheduler's records, handed on to the compiled relay with the instructions they made.

The compiled scheduler (:mod:`.expand.fsedp_compiled`) writes each die's stream as records
(kind, slot, peer or channel, trip) before it makes the instruction objects. The compiled relay
(:mod:`.relay_compiled`) reads a run as columns of exactly that (code, slot, peer, bytes, slice,
token counts); reading them back from the objects costs about what the Python relay does, so
the scheduler offers each die's columns here (:func:`offer`), keyed by the segment of objects
they describe, and the relay takes them (:func:`take`) when it finds the same objects, in the
same order, in a stream it builds (each object's identity compared: a segment whose objects
were replaced, dropped or reordered on the way is not taken, and the Python relay takes those
instructions). A segment is held until :data:`HELD` instructions newer than it are held (the
oldest go first), not only until it is first built: a schedule's streams may be built more
than once (the FSE-DP slice choice times the schedule the expansion then reuses). The objects
are kept alive while held, so their identities are not reused.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: relay codes (:mod:`.relay_kernel`'s), and ``act``, ``accum`` before they join their gemm
RECV, SEND, FREE, GEMM, LOAD, ACT, ACCUM = 1, 2, 3, 4, 5, 6, 7
#: the relay code of each record kind (:data:`.expand.fsedp_kernel.RECORD_NAMES` order:
#: load, gemm, act, accum, free, send, recv)
_OF_RECORD = np.array([LOAD, GEMM, ACT, ACCUM, FREE, SEND, RECV], np.int64)
#: instructions held at most (about 60 bytes of columns each, and the objects kept alive: a
#: layer of Qwen3-30B-A3B on 8x8 dies writes about 600k)
HELD = 800_000
#: whether offers are wanted: a function set by :mod:`.relay_compiled` (none: never)
ENABLED: list[Callable[[], bool] | None] = [None]

_held: OrderedDict[int, Segment] = OrderedDict()
_count = 0


class Segment:
    """One die's instructions from one schedule and their columns (``code`` with the relay's
    static checks applied: 0 where a run may not take the instruction)."""

    __slots__ = ("objs", "ids", "code", "slot", "peer", "nbytes", "shape", "size", "shapes")

    def __init__(
        self, objs: Sequence[Any], cols: tuple[np.ndarray, ...], shapes: list[Any]
    ) -> None:
        self.objs = objs
        self.ids = np.fromiter(map(id, objs), np.int64, len(objs))
        self.code, self.slot, self.peer, self.nbytes, self.shape, self.size = cols
        #: per entry of ``shape``: a slice of that shape (its layer, shared or not, index)
        self.shapes = shapes


def offer(
    laid: Sequence[Any], ends: list[int], rec: np.ndarray, refs: list[Any], sizes: list[int],
    tokens: np.ndarray, unit_of: np.ndarray, n: int,
) -> None:  # fmt: skip
    """Hold each die's segment of ``laid`` (die ``d``'s from ``ends[d]`` to ``ends[d + 1]``)
    with its columns from ``rec`` (its records, die by die in record order: die, kind, slot,
    peer, trip); ``sizes`` per trip its bytes, ``tokens`` per unit and die its token count,
    ``unit_of`` per trip its unit."""
    global _count
    if not len(rec):
        return
    die, kind, slot, peer, trip = rec.T
    full = _OF_RECORD[kind]
    nbytes = np.asarray(sizes, np.int64)[trip]
    moves = (full == RECV) | (full == SEND) | (full == LOAD)
    nbytes[~moves] = 0
    size = tokens[unit_of[trip] * n + die]
    # per trip, its slice's shape (layer, shared or not, slice index): an index into shapes
    index: dict[tuple[str, bool, int], int] = {}
    shapes: list[Any] = []
    of_trip = []
    for c in refs:
        key = (c.layer, c.expert is None, c.slice)
        k = index.get(key)
        if k is None:
            k = index[key] = len(shapes)
            shapes.append(c)
        of_trip.append(k)
    shape = np.asarray(of_trip, np.int64)[trip]
    for d in range(n):
        a, b = ends[d], ends[d + 1]
        if b - a == 0:
            continue
        code = _checked(full[a:b], slot[a:b], nbytes[a:b])
        cols = (code, slot[a:b], peer[a:b], nbytes[a:b], shape[a:b], size[a:b])
        seg = Segment(laid[a:b], cols, shapes)
        _held[int(seg.ids[0])] = seg
        _count += b - a
    while _count > HELD and _held:
        _count -= len(_held.popitem(last=False)[1].ids)


def _checked(full: np.ndarray, slot: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """The relay's codes of one segment: its static checks (a transfer or load of no bytes, a
    ``gemm`` without its ``act`` and ``accum`` on its slot, a load that starts a streamed
    micro-slice) give 0, and ``act``, ``accum`` 0 (their ``gemm`` takes them); an entry whose
    check would read past the segment's end gives 0 too (the Python relay takes it)."""
    m = len(full)
    code = full.copy()
    code[((full == RECV) | (full == SEND) | (full == LOAD)) & (nbytes == 0)] = 0
    g = np.flatnonzero(full == GEMM)
    code[g] = 0
    ok = g[g + 2 < m]
    ok = ok[(full[ok + 1] == ACT) & (full[ok + 2] == ACCUM)]
    ok = ok[(slot[ok + 1] == slot[ok]) & (slot[ok + 2] == slot[ok])]
    code[ok] = GEMM
    code[(full == ACT) | (full == ACCUM)] = 0
    ld = np.flatnonzero(full == LOAD)
    code[ld[ld + 4 >= m]] = 0
    ld = ld[ld + 4 < m]
    if len(ld):
        chained = (full[ld + 1] == GEMM) & (full[ld + 2] == ACT) & (full[ld + 3] == ACCUM)
        chained &= full[ld + 4] == FREE
        for q in range(1, 5):
            chained &= slot[ld + q] == slot[ld]
        code[ld[chained]] = 0
    return code


def take(ids: np.ndarray) -> list[tuple[int, Segment]]:
    """The held segments found in a stream whose objects' identities are ``ids``: ``(start,
    segment)``."""
    if not _held:
        return []
    keys = np.sort(np.fromiter(_held.keys(), np.int64, len(_held)))
    at = np.searchsorted(keys, ids)
    at[at == len(keys)] = 0
    out = []
    for p in np.flatnonzero(keys[at] == ids).tolist():
        seg = _held.get(int(ids[p]))
        if seg is None:
            continue
        L = len(seg.ids)
        if p + L <= len(ids) and np.array_equal(ids[p : p + L], seg.ids):
            out.append((p, seg))
    return out


def wanted() -> bool:
    """Whether the compiled relay may read offered records now."""
    fn = ENABLED[0]
    return fn is not None and fn()


def holding() -> bool:
    """Whether any segment is held."""
    return bool(_held)


def active() -> bool:
    """Whether a build may read records (some are held)."""
    return bool(_held)


def clear() -> None:
    """Forget every held segment."""
    global _count
    _held.clear()
    _count = 0
