"""The FSE-DP scheduler's records as instruction streams, made into objects only when read.

The compiled scheduler (:mod:`.expand.fsedp_compiled`) writes each die's stream as records
(kind, slot, peer or channel, trip). Where the compiled relay may read them (:func:`wanted`),
each die's stream is a :class:`RecordStream`: a ``Sequence[Instr]`` holding the records, which
makes an instruction (with :mod:`.expand.fsedp_instrs`' makers, a block at a time) only when
someone indexes or iterates it, and keeps it (the same object on every read: readers compare
instructions by identity). The compiled relay (:mod:`.relay_compiled`) reads a stream's runs
as columns straight from the records (code, slot, peer or channel, bytes, slice shape, token
counts), and the op graph's instruction column (:class:`.instr_column.InstrColumn`) holds
where a kernel op's instruction is, not the object; a whole-model run makes few of them. A
layer's streams with the static instructions around them are a :class:`Chain` (the splice's
and the expansion's pieces end to end, each kept as it is).
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from typing import Any

import numpy as np

from moec.backends.interp.event_loop import OptionalKernel
from moec.backends.interp.expand import fsedp_instrs as mk
from moec.ir.stream.values import TokenSet

#: relay codes (:mod:`.relay_kernel`'s), and ``act``, ``accum`` before they join their gemm
RECV, SEND, FREE, GEMM, LOAD, ACT, ACCUM = 1, 2, 3, 4, 5, 6, 7
#: the record kinds (:data:`.expand.fsedp_kernel.RECORD_NAMES`, in that order)
_NAMES = ("load", "gemm", "act", "accum", "free", "send", "recv")
_LOAD_K, _GEMM_K, _ACT_K, _ACCUM_K, _FREE_K, _SEND_K, _RECV_K = range(7)
#: the relay code of each record kind
_OF_RECORD = np.array([LOAD, GEMM, ACT, ACCUM, FREE, SEND, RECV], np.int64)
#: instructions made at once when one is indexed (the next reads are usually its neighbours)
BLOCK = 64
#: the shortest run the compiled relay takes, or None when it takes none: a function set by
#: :mod:`.relay_compiled` (none: record streams are never wanted)
ENABLED: list[Callable[[], int | None] | None] = [None]
#: the least share of a die's stream in runs the compiled relay may take (:meth:`RecordStream.
#: covered`) for it to stay records: below, the Python relay reads most of it, and an
#: instruction read there from a record stream costs a method call
LAZY_FROM = 0.5
#: the fewest entries of a die's stream, in shortest runs, for it to stay records: a short
#: stream gains little and its records and places cost memory besides its instructions (a
#: build that verifies the program makes them all). Qwen3-30B-A3B's streams on 4x4 dies are
#: 2-2.5k entries (one run each, naive ones too since lone chains relay): at 4 rather than 16
#: its 48 layers take 7.5-8.0 s CPU rather than 9.2-9.6 (naive), 7.9-9.0 rather than 10.1
#: (paired), 6.2 rather than 7.6 (r5), the same peak RSS; 2 gains nothing more (session 17).
#: An 8x8 fsedp-naive point keeps more records: about 40 MB more peak RSS, the same CPU
LAZY_RUNS = 4
#: whether a record stream was made since the last :func:`clear`
_made_any = False
#: the relay's kernel, for the static checks (record streams exist where numba is loaded)
_KERNEL = OptionalKernel("moec.backends.interp.relay_kernel")


class Source:
    """What one schedule's records refer to: per trip its slice (``refs``), bytes (``sizes``)
    and unit (``unit_of``); per unit and die (``unit * n + die``) its tokens there or None
    (``held``); and, read once for all its dies' streams, the relay's columns of the trips."""

    __slots__ = ("refs", "sizes", "held", "unit_of", "n", "nbytes", "_trips", "_held_array")

    def __init__(
        self, refs: list[Any], sizes: list[int], held: list[Any], unit_of: np.ndarray, n: int
    ) -> None:
        self.refs, self.sizes, self.held, self.n = refs, sizes, held, n
        self.unit_of = np.array(unit_of, np.int32)  # a copy: not a view holding the kernel's
        #: per trip, its bytes
        self.nbytes = np.asarray(sizes, np.int64)
        self._trips: tuple[Any, ...] | None = None
        self._held_array: np.ndarray | None = None

    def held_array(self) -> np.ndarray:
        """``held`` as an object array, made once: a stream's computes' token sets are one
        fancy index of it (a list's ``__getitem__`` per set costs about 15 times more)."""
        if self._held_array is None:  # fromiter: a set is not read as a sequence
            self._held_array = np.fromiter(self.held, object, len(self.held))
        return self._held_array

    def trips(self) -> tuple[Any, ...]:
        """Per trip its slice shape (an index into the last entry: a slice of each shape, its
        layer, shared or not, index); per unit and die its token count."""
        if self._trips is None:
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
            self._trips = (np.asarray(of_trip, np.int64), _sizes(self.held), shapes)
        return self._trips


def _sizes(held: list[Any]) -> np.ndarray:
    """Each token set's size (0 for None), counted but not kept: the relay alone asks these
    sets (about 100k a DeepSeek-V3 model), and :attr:`.TokenSet.size`'s cached property cost
    about 1.3 us a set to fill, its count alone a third of that. A set that keeps its tokens
    as an array (:meth:`.TokenSet.keep_indices`, the FSE-DP expansion's) is that array's
    length, its ranges not walked."""
    count = TokenSet.size.func  # type: ignore[attr-defined]
    # known_indices() read in place: a call per set would cost a third of what it saves
    return np.asarray(
        [0 if h is None else count(h) if (k := h.__dict__.get("_indices")) is None else len(k)
         for h in held],
        np.int64,
    )  # fmt: skip


class RecordStream(Sequence[Any]):
    """One die's instructions of one schedule as its records (per entry, in stream order: the
    record's kind, slot, peer or channel, trip), each instruction made on its first read, a
    block at a time (:func:`.expand.fsedp_instrs.made`, per kind in one pass), and kept."""

    __slots__ = ("src", "die", "kind", "slot", "peer", "trip", "_made", "_have", "_code")

    def __init__(
        self, src: Source, die: int, kind: np.ndarray, slot: np.ndarray, peer: np.ndarray,
        trip: np.ndarray,
    ) -> None:  # fmt: skip
        """This die's records' columns, in stream order: ``kind`` (int8), ``slot``, ``peer``
        or channel, ``trip`` (int32: compact, a stream is held until its part is timed; the
        relay's columns are int64), held as given (the compiled scheduler's, die by die)."""
        global _made_any
        _made_any = True
        self.src, self.die = src, die
        self.kind, self.slot, self.peer, self.trip = kind, slot, peer, trip
        self._made: list[Any] = [None] * len(kind)
        self._have = np.zeros(len(kind), np.bool_)
        #: the relay's codes (:meth:`_codes`), once asked (the decision to stay records asks
        #: first, the relay's columns next)
        self._code: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._made)

    def __getitem__(self, k: Any) -> Any:
        made = self._made
        if isinstance(k, slice):
            r = range(*k.indices(len(made)))
            if r:
                self._make(min(r[0], r[-1]), max(r[0], r[-1]) + 1)
            return made[k]
        o = made[k]
        if o is None:
            k = k + len(made) if k < 0 else k
            a = k - k % BLOCK
            self._make(a, min(a + BLOCK, len(made)))
            o = made[k]
        return o

    def __iter__(self) -> Iterator[Any]:
        self._make(0, len(self._made))
        return iter(self._made)

    def __eq__(self, other: object) -> bool:
        return _equal(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(list(self))

    def _make(self, a: int, b: int) -> None:
        """Make the instructions of entries ``a`` to ``b`` not made yet."""
        have = self._have[a:b]
        if have.all():
            return
        at = a + np.flatnonzero(~have)
        self._have[at] = True
        by = np.argsort(self.kind[at], kind="stable")
        sel = at[by]
        bounds = np.searchsorted(self.kind[sel], np.arange(len(_NAMES) + 1)).tolist()
        slots, peers, ts = self.slot[sel].tolist(), self.peer[sel].tolist(), self.trip[sel]
        src = self.src
        made: list[Any] = []
        for what, name in enumerate(_NAMES):
            a, b = bounds[what], bounds[what + 1]
            if a == b:
                continue
            if what == _FREE_K:
                made += mk.made(name, slots[a:b])
            elif what in (_GEMM_K, _ACT_K, _ACCUM_K):
                made += mk.made(name, slots[a:b], self._held(ts[a:b]))
            else:
                tl = ts[a:b].tolist()
                nbytes = list(map(src.sizes.__getitem__, tl))
                if what == _SEND_K:
                    made += mk.made(name, peers[a:b], nbytes, slots[a:b])
                    continue
                refs = list(map(src.refs.__getitem__, tl))
                if what == _LOAD_K:
                    made += mk.made(name, slots[a:b], peers[a:b], refs, nbytes)
                else:
                    made += mk.made(name, peers[a:b], nbytes, slots[a:b], refs)
        deque(map(self._made.__setitem__, sel.tolist(), made), 0)

    def _held(self, trips: np.ndarray) -> list[Any]:
        """The tokens on this die of each of ``trips``' units (a compute's)."""
        src = self.src
        return src.held_array()[src.unit_of[trips] * src.n + self.die].tolist()

    def tokens(self, k: np.ndarray) -> list[Any]:
        """The ``tokens`` of entries ``k`` (each a gemm, act or accum), no instruction made."""
        return self._held(self.trip[k])

    def tokens_once(self, k: np.ndarray) -> list[Any]:
        """The distinct ``tokens`` of entries ``k`` (as :meth:`tokens`), each unit's on this
        die once, in the order first met."""
        src = self.src
        at = src.unit_of[self.trip[k]] * src.n + self.die
        u, first = np.unique(at, return_index=True)
        return src.held_array()[u[np.argsort(first, kind="stable")]].tolist()

    def content(self, k: int) -> Any:
        """The ``content`` of entry ``k`` (a load or recv)."""
        return self.src.refs[int(self.trip[k])]

    def nbytes(self, k: np.ndarray) -> np.ndarray:
        """The ``nbytes`` of entries ``k`` (0 for one without: a compute or free)."""
        kind = self.kind[k]
        out = self.src.nbytes[self.trip[k]]
        out[(kind != _LOAD_K) & (kind != _SEND_K) & (kind != _RECV_K)] = 0
        return out

    def made_ids(self, k: np.ndarray) -> np.ndarray:
        """Per entry of ``k``, its instruction's ``id`` where made, else 0 (no object's)."""
        out = np.zeros(len(k), np.int64)
        at = np.flatnonzero(self._have[k])
        made = map(self._made.__getitem__, k[at].tolist())
        out[at] = np.fromiter(map(id, made), np.int64, len(at))
        return out

    def columns(self) -> tuple[Any, ...]:
        """The relay's columns: per entry its code (with the relay's static checks,
        :func:`_checked`), slot, peer or channel, bytes, slice shape (an index into the last
        entry: a slice of each shape), token count."""
        src, trip = self.src, self.trip
        shape_of, tokens, shapes = src.trips()
        size = tokens[src.unit_of[trip] * src.n + self.die]
        return self._codes(), self.slot, self.peer, self._bytes(), shape_of[trip], size, shapes

    def _codes(self) -> np.ndarray:
        """Per entry, its relay code (:func:`_checked`), made on the first call (the decision
        to stay records asks first, the relay's columns next)."""
        if self._code is None:
            m = len(self.kind)
            if _KERNEL.available():
                self._code = np.empty(m, np.int8)
                _KERNEL.module.checked(self.kind, self.slot, self.trip, self.src.nbytes,
                                       _OF_RECORD, np.empty(m, np.int64), self._code)  # fmt: skip
            else:
                full = _OF_RECORD[self.kind]
                self._code = _checked(full, self.slot, self._bytes()).astype(np.int8)
        return self._code

    def _bytes(self) -> np.ndarray:
        """Per entry, its bytes (0 for one that is not a load, send or recv)."""
        kind = self.kind
        nbytes = self.src.nbytes[self.trip]
        nbytes[(kind != _LOAD_K) & (kind != _SEND_K) & (kind != _RECV_K)] = 0
        return nbytes

    def lazy(self, min_run: int) -> bool:
        """Whether to keep this stream as records for a relay taking runs of at least
        ``min_run``: it is :data:`LAZY_RUNS` such runs long, and :data:`LAZY_FROM` of it is
        in stretches the relay may take (:meth:`covered`)."""
        return len(self) >= LAZY_RUNS * min_run and self.covered(min_run) >= LAZY_FROM

    def covered(self, min_run: int) -> float:
        """The share of entries in stretches of at least ``min_run`` the relay's static
        checks let a compiled run take (:func:`stops`)."""
        code = self._codes()
        stop = stops(code)
        starts = np.flatnonzero(code != 0)
        if not len(code) or not len(starts):
            return 0.0
        # each stretch from an entry the checks pass to its stop
        long = starts[stop[starts] - starts >= min_run]
        return float(len(long)) / len(code)

    def walk(self, held: set[int], sent: list[int], got: list[int]) -> None:
        """:func:`.layered.walk_part`'s walk of these instructions, from the records: each
        slot's last load, recv or free says whether it is ``held`` after them; the peers of
        the sends and recvs appended to ``sent`` and ``got``."""
        k = self.kind
        ev = np.flatnonzero((k == _LOAD_K) | (k == _RECV_K) | (k == _FREE_K))[::-1]
        _, first = np.unique(self.slot[ev], return_index=True)
        last = ev[first]
        for q, what in zip(self.slot[last].tolist(), k[last].tolist(), strict=True):
            if what == _FREE_K:
                held.discard(q)
            else:
                held.add(q)
        sent += self.peer[k == _SEND_K].tolist()
        got += self.peer[k == _RECV_K].tolist()


class Chain(Sequence[Any]):
    """Instruction sequences end to end (lists, :class:`RecordStream`), each kept as it is:
    a die's stream with a layer's record streams in it, none of them made to be copied."""

    __slots__ = ("pieces", "starts", "_n")

    def __init__(self, pieces: Sequence[Sequence[Any]]) -> None:
        self.pieces: list[Sequence[Any]] = []
        for p in pieces:
            if isinstance(p, Chain):
                self.pieces += p.pieces
            elif len(p):
                self.pieces.append(p)
        self.starts = np.cumsum([0] + [len(p) for p in self.pieces]).tolist()
        self._n = self.starts.pop()

    def __len__(self) -> int:
        return self._n

    def at(self, k: int) -> tuple[int, Sequence[Any]]:
        """Where entry ``k`` is: its piece's start and the piece."""
        p = bisect_right(self.starts, k) - 1
        return self.starts[p], self.pieces[p]

    def __getitem__(self, k: Any) -> Any:
        n = self._n
        if isinstance(k, slice):
            a, b, step = k.indices(n)
            if step != 1:
                return [self[q] for q in range(a, b, step)]
            out: list[Any] = []
            p = bisect_right(self.starts, a) - 1
            while a < b:
                s, piece = self.starts[p], self.pieces[p]
                end = min(b, s + len(piece))
                out += piece[a - s : end - s]
                a, p = end, p + 1
            return out
        k = k + n if k < 0 else k
        if not 0 <= k < n:
            raise IndexError("instruction index out of range")
        s, piece = self.at(k)
        return piece[k - s]

    def __iter__(self) -> Iterator[Any]:
        return chain.from_iterable(self.pieces)

    def __eq__(self, other: object) -> bool:
        return _equal(self, other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(list(self))


def _equal(a: Sequence[Any], other: object) -> bool:
    """A record stream or chain equals any sequence of the same instructions (a list's)."""
    if not isinstance(other, list | RecordStream | Chain):
        return NotImplemented
    return len(a) == len(other) and list(a) == list(other)


def pieces(instrs: Sequence[Any]) -> list[Sequence[Any]]:
    """``instrs`` as the pieces it is made of (itself, unless a :class:`Chain`)."""
    return instrs.pieces if isinstance(instrs, Chain) else [instrs]


def starts(instrs: Sequence[Any]) -> list[tuple[int, Sequence[Any]]]:
    """``instrs``' pieces (:func:`pieces`), each with its start."""
    if isinstance(instrs, Chain):
        return list(zip(instrs.starts, instrs.pieces, strict=True))
    return [(0, instrs)]


def record_pieces(instrs: Sequence[Any]) -> list[tuple[int, RecordStream]]:
    """The record streams in ``instrs``, each with its start."""
    return [(s, p) for s, p in starts(instrs) if isinstance(p, RecordStream)]


def walked(instrs: Sequence[Any], held: set[int], sent: list[int], got: list[int]) -> Iterator[Any]:
    """``instrs``' instructions but its record streams', each walked from its records when
    reached (:meth:`RecordStream.walk`: ``held``, ``sent`` and ``got`` as the caller's loop
    leaves them after its instructions): :func:`.layered.walk_part` makes no instruction."""
    if not isinstance(instrs, Chain | RecordStream):
        return iter(instrs)
    return _walked(instrs, held, sent, got)


def _walked(
    instrs: Sequence[Any], held: set[int], sent: list[int], got: list[int]
) -> Iterator[Any]:
    for piece in pieces(instrs):
        if isinstance(piece, RecordStream):
            piece.walk(held, sent, got)
        else:
            yield from piece


def joined(parts: list[Sequence[Any]]) -> Sequence[Any]:
    """``parts`` end to end: one list when none is a record stream, else a :class:`Chain`."""
    if any(isinstance(p, RecordStream | Chain) for p in parts):
        return Chain(parts)
    return list(chain.from_iterable(parts))


def _checked(full: np.ndarray, slot: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
    """The relay's codes of one record stream, by numpy (the reference of
    :func:`.relay_kernel.checked`, which :meth:`RecordStream._codes` runs where numba is): its
    static checks (a transfer or load of no bytes, a ``gemm`` without its ``act`` and
    ``accum`` on its slot, a load that starts two streamed micro-slices one after the other)
    give 0, and ``act``, ``accum`` 0 (their ``gemm`` takes them); an entry whose check would
    read past the stream's end gives 0 too (the Python relay takes it)."""
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
        head = ld[chained]  # a lone one the relay takes (:func:`.relay_chain.chains_follow`)
        starts = np.zeros(m + 5, np.bool_)
        starts[head] = True
        code[head[starts[head + 5]]] = 0
    return code


def stops(code: np.ndarray) -> np.ndarray:
    """Per entry of a stream's codes (:func:`_checked`'s), where a compiled run from it must
    stop at the latest: the next entry of code 0 that is not a taken gemm's act or accum
    (:func:`.relay_kernel.run_end` stops there or before; a run starts at no act or accum).
    The kernel's pass where numba is (:func:`.relay_kernel.stops`), else :func:`_stops`."""
    if _KERNEL.available():
        out = np.empty(len(code), np.int64)
        _KERNEL.module.stops(code, out)
        return out
    return _stops(code)


def _stops(code: np.ndarray) -> np.ndarray:
    """:func:`stops` by numpy (the reference)."""
    n = len(code)
    hard = code == 0
    hard[1:] &= code[:-1] != GEMM
    hard[2:] &= code[:-2] != GEMM
    at = np.append(np.flatnonzero(hard), n)
    # per entry, the first hard one at or after it (n: none): each hard one repeated over
    # the entries since the one before it (the end's over those before n)
    width = np.diff(at, prepend=-1)
    width[-1] -= 1
    return np.repeat(at, width)


def wanted() -> int | None:
    """The shortest run the compiled relay takes now, None when it takes none (the
    scheduler's streams are then its instructions)."""
    fn = ENABLED[0]
    return None if fn is None else fn()


def active() -> bool:
    """Whether a record stream was made since :func:`clear` (a build may read records)."""
    return _made_any


def clear() -> None:
    """Forget that record streams were made (those alive still read as their instructions)."""
    global _made_any
    _made_any = False
