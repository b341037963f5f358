"""The FSE-DP scheduler's records, handed on to the compiled relay with the instructions they made.

The compiled scheduler (:mod:`.expand.fsedp_compiled`) writes each die's stream as records
(kind, slot, peer or channel, trip) before it makes the instruction objects. The compiled relay
(:mod:`.relay_compiled`) reads a run as columns of exactly that (code, slot, peer, bytes, slice,
token counts); reading them back from the objects costs about what the Python relay does, so
the scheduler offers each die's columns here (:func:`offer`), keyed by the segment of objects
they describe, and the relay takes them (:func:`take`) when it finds the same objects, in the
same order, in a stream it builds (each object's identity compared: a segment whose objects
were replaced, dropped or reordered on the way is not taken, and the Python relay takes those
instructions). A segment is held until it is taken or the build ends (a build clears what it
did not take: stale), at most :data:`HELD` instructions (the oldest go first); its objects are
kept alive while held, so their identities are not reused. An offer keeps references only;
its records are read into columns when a segment of it is first taken. (A schedule built a
second time, as the FSE-DP slice choice's timings and then the expansion reusing that
schedule, is built by the Python relay the second time.)
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
#: instructions held at most (the objects are kept alive while held)
HELD = 1_500_000
#: whether offers are wanted: a function set by :mod:`.relay_compiled` (none: never)
ENABLED: list[Callable[[], bool] | None] = [None]

_held: OrderedDict[int, tuple[Sequence[Any], _Offer, int, int]] = OrderedDict()
_count = 0
#: whether a segment was taken since the last :func:`clear` (its stream's later runs read it)
_took = False


class _Offer:
    """One schedule's records, read into columns (all dies at once) when a segment of it is
    first taken: an offer no build takes costs a few references."""

    __slots__ = ("rec", "refs", "sizes", "held", "unit_of", "n", "cols")

    def __init__(
        self, rec: np.ndarray, refs: list[Any], sizes: list[int], held: list[Any],
        unit_of: np.ndarray, n: int,
    ) -> None:  # fmt: skip
        self.rec, self.refs, self.sizes, self.held, self.unit_of, self.n = (
            rec, refs, sizes, held, unit_of, n,
        )  # fmt: skip
        self.cols: tuple[Any, ...] | None = None

    def columns(self) -> tuple[Any, ...]:
        """Per record: its code (before the checks), slot, peer or channel, bytes, slice shape
        (an index into the last entry: a slice of each shape), token count."""
        if self.cols is None:
            die, kind, slot, peer, trip = self.rec.T
            full = _OF_RECORD[kind]
            nbytes = np.asarray(self.sizes, np.int64)[trip]
            nbytes[~((full == RECV) | (full == SEND) | (full == LOAD))] = 0
            tokens = np.asarray([0 if h is None else h.size for h in self.held], np.int64)
            size = tokens[self.unit_of[trip] * self.n + die]
            # per trip, its slice's shape (layer, shared or not, slice index)
            index: dict[tuple[str, bool, int], int] = {}
            shapes: list[Any] = []
            of_trip = []
            for c in self.refs:
                key = (c.layer, c.expert is None, c.slice)
                k = index.get(key)
                if k is None:
                    k = index[key] = len(shapes)
                    shapes.append(c)
                of_trip.append(k)
            shape = np.asarray(of_trip, np.int64)[trip]
            self.cols = (full, slot, peer, nbytes, shape, size, shapes)
        return self.cols


class Segment:
    """One die's instructions from one schedule and their columns (``code`` with the relay's
    static checks applied: 0 where a run may not take the instruction)."""

    __slots__ = ("ids", "code", "slot", "peer", "nbytes", "shape", "size", "shapes")

    def __init__(self, ids: np.ndarray, offer: _Offer, a: int, b: int) -> None:
        self.ids = ids
        full, slot, peer, nbytes, shape, size, shapes = offer.columns()
        self.slot, self.peer, self.nbytes = slot[a:b], peer[a:b], nbytes[a:b]
        self.code = _checked(full[a:b], self.slot, self.nbytes)
        self.shape, self.size = shape[a:b], size[a:b]
        #: per entry of ``shape``: a slice of that shape (its layer, shared or not, index)
        self.shapes = shapes


def offer(
    laid: Sequence[Any], ends: list[int], rec: np.ndarray, refs: list[Any], sizes: list[int],
    held: list[Any], unit_of: np.ndarray, n: int,
) -> None:  # fmt: skip
    """Hold each die's segment of ``laid`` (die ``d``'s from ``ends[d]`` to ``ends[d + 1]``)
    with its records ``rec`` (die by die in record order: die, kind, slot, peer, trip);
    ``refs`` and ``sizes`` per trip its slice and bytes, ``held`` per unit and die its tokens
    there (or None), ``unit_of`` per trip its unit."""
    global _count
    if not len(rec):
        return
    o = _Offer(rec, refs, sizes, held, unit_of, n)
    for d in range(n):
        a, b = ends[d], ends[d + 1]
        if b > a:
            _held[id(laid[a])] = (laid[a:b], o, a, b)
            _count += b - a
    while _count > HELD and _held:
        objs = _held.popitem(last=False)[1][0]
        _count -= len(objs)


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
    segment)``, each taken (no longer held)."""
    global _count, _took
    if not _held:
        return []
    keys = np.sort(np.fromiter(_held.keys(), np.int64, len(_held)))
    at = np.searchsorted(keys, ids)
    at[at == len(keys)] = 0
    out = []
    for p in np.flatnonzero(keys[at] == ids).tolist():
        hit = _held.get(int(ids[p]))
        if hit is None:
            continue
        objs, o, a, b = hit
        L = b - a
        if p + L > len(ids):
            continue
        mine = np.fromiter(map(id, objs), np.int64, L)
        if np.array_equal(ids[p : p + L], mine):
            del _held[int(ids[p])]
            _count -= L
            out.append((p, Segment(mine, o, a, b)))
    _took = _took or bool(out)
    return out


def wanted() -> bool:
    """Whether the compiled relay may read offered records now."""
    fn = ENABLED[0]
    return fn is not None and fn()


def holding() -> bool:
    """Whether any segment is held."""
    return bool(_held)


def active() -> bool:
    """Whether a build may read records: some are held, or were taken since :func:`clear`."""
    return _took or bool(_held)


def clear() -> None:
    """Forget every held segment."""
    global _count, _took
    _held.clear()
    _count = 0
    _took = False
