"""The op graph's instruction column: per op its instruction, where a kernel op's is only a place.

An op of the compiled relay (:mod:`.relay_compiled`) is one of a
:class:`.relay_records.RecordStream`'s instructions, which is made only when read.
:class:`InstrColumn` is a ``list`` (the Python relay appends, extends and sets it as before)
whose kernel ops hold a marker, with the place of their instruction (the stream and its entry)
kept in arrays per kernel run; reading an op (``col[op]``, a slice, iterating, ``repr``, ``==``)
gives the instruction, made then if need be, the same object on every read. Readers that need a
field or an identity of many ops (bytes, the ops of given instructions) ask
:meth:`InstrColumn.nbytes` and :meth:`InstrColumn.ids`: no instruction is made for them.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterator
from itertools import repeat
from operator import is_
from typing import Any

import numpy as np

#: a kernel op's entry: its instruction is at a place (its run's, or its pairing's)
_AT = object()
_get = list.__getitem__


class InstrColumn(list):  # type: ignore[type-arg]
    """Per op its instruction (or None); kernel ops' made on read (module doc)."""

    __slots__ = ("streams", "_sid", "op0", "runs", "fixes", "_index")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        #: the streams places are in, and each one's index there (by identity)
        self.streams: list[Any] = []
        self._sid: dict[int, int] = {}
        #: per kernel run, its first op, and its stream's index and each op's entry in it
        self.op0: list[int] = []
        self.runs: list[tuple[int, np.ndarray]] = []
        #: ops set to a stream's entries after their run (a send's pairing), in batches of
        #: (ops, stream index, entries); an op is set so at most once
        self.fixes: list[tuple[np.ndarray, int, np.ndarray]] = []
        self._index: dict[str, Any] = {}

    def _stream(self, stream: Any) -> int:
        k = self._sid.get(id(stream))
        if k is None:
            k = self._sid[id(stream)] = len(self.streams)
            self.streams.append(stream)
        return k

    def placed(self, stream: Any, entries: np.ndarray) -> None:
        """Append ops whose instructions are ``stream``'s ``entries``."""
        if len(entries):
            self.op0.append(len(self))
            self.runs.append((self._stream(stream), entries))
            self += repeat(_AT, len(entries))

    def point(self, ops: list[int], stream: Any, entries: list[int]) -> None:
        """Set ops ``ops``' instructions to ``stream``'s ``entries``."""
        if ops:
            k = self._stream(stream)
            self.fixes.append((np.asarray(ops, np.int64), k, np.asarray(entries, np.int64)))
            deque(map(list.__setitem__, repeat(self), ops, repeat(_AT)), 0)

    def _places(self, ops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per kernel op of ``ops``, its stream's index and its entry there."""
        ix = self._index
        if ix.get("sized") != (len(self.runs), len(self.fixes)):
            ix["sized"] = (len(self.runs), len(self.fixes))
            sizes = [len(e) for _, e in self.runs]
            ix["base"] = np.cumsum([0] + sizes[:-1]).astype(np.int64)
            ix["op0"] = np.asarray(self.op0, np.int64)
            ix["run_sid"] = np.asarray([k for k, _ in self.runs], np.int64)
            ix["flat"] = np.concatenate([e for _, e in self.runs]).astype(np.int64)
            if self.fixes:
                allops = np.concatenate([f[0] for f in self.fixes])
                order = np.argsort(allops, kind="stable")
                ix["f_ops"] = allops[order]
                ix["f_sid"] = np.repeat(
                    [f[1] for f in self.fixes], [len(f[0]) for f in self.fixes]
                )[order]
                ix["f_entry"] = np.concatenate([f[2] for f in self.fixes])[order]
        sid = np.empty(len(ops), np.int64)
        entry = np.empty(len(ops), np.int64)
        left = np.ones(len(ops), np.bool_)
        if self.fixes and len(ops):
            f_ops = ix["f_ops"]
            at = np.minimum(np.searchsorted(f_ops, ops), len(f_ops) - 1)
            hit = f_ops[at] == ops
            sid[hit], entry[hit] = ix["f_sid"][at[hit]], ix["f_entry"][at[hit]]
            left = ~hit
        rest = ops[left]
        r = np.searchsorted(ix["op0"], rest, "right") - 1
        sid[left] = ix["run_sid"][r]
        entry[left] = ix["flat"][ix["base"][r] + rest - ix["op0"][r]]
        return sid, entry

    def _groups(self, ops: np.ndarray) -> list[tuple[Any, np.ndarray, np.ndarray]]:
        """Kernel ops ``ops`` grouped by the stream their instructions are in: per group, the
        stream, the positions in ``ops`` and their entries in the stream."""
        if not len(ops):
            return []
        sid, entry = self._places(ops)
        order = np.argsort(sid, kind="stable")
        cuts = np.flatnonzero(np.diff(sid[order])) + 1
        return [
            (self.streams[int(sid[qs[0]])], qs, entry[qs]) for qs in np.split(order, cuts)
        ]  # fmt: skip

    def __getitem__(self, k: Any) -> Any:
        v = _get(self, k)
        if isinstance(k, slice):
            if any(x is _AT for x in v):
                return self.resolved()[k]
            return v
        if v is _AT:
            op = k + len(self) if k < 0 else k
            if self.fixes:
                sid, entry = self._places(np.asarray([op], np.int64))
                return self.streams[int(sid[0])][int(entry[0])]
            r = bisect_right(self.op0, op) - 1
            k, entries = self.runs[r]
            return self.streams[k][int(entries[op - self.op0[r]])]
        return v

    def resolved(self) -> list[Any]:
        """The column as a list of instructions (every kernel op's made, a stream at a time)."""
        out = list(list.__iter__(self))
        if self.runs:
            lazy = _marked(out)
            for stream, qs, es in self._groups(lazy):
                stream[int(es.min()) : int(es.max()) + 1]  # made in one go
                objs = map(stream.__getitem__, es.tolist())
                deque(map(out.__setitem__, lazy[qs].tolist(), objs), 0)
        return out

    def __iter__(self) -> Iterator[Any]:
        return iter(self.resolved())

    def __repr__(self) -> str:
        return repr(self.resolved())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, list):
            return self.resolved() == (
                other.resolved() if isinstance(other, InstrColumn) else other
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def _lazy(self, ops: list[int]) -> tuple[list[Any], np.ndarray]:
        """The entries of ``ops`` and the positions (in ``ops``) of kernel ops'."""
        vals = list(map(_get, repeat(self), ops))
        if not self.runs:
            return vals, np.zeros(0, np.int64)
        return vals, _marked(vals)

    def ids(self, ops: list[int] | None = None) -> list[int]:
        """Per op of ``ops`` (default: every op), the ``id`` of its instruction (of None for
        none), 0 for a kernel op's not made yet (so it matches no instruction anyone holds)."""
        ops = list(range(len(self))) if ops is None else ops
        return self.id_array(ops).tolist()

    def id_array(self, ops: list[int]) -> np.ndarray:
        """:meth:`ids` of ``ops`` as an int64 array."""
        out = np.fromiter(map(id, map(_get, repeat(self), ops)), np.int64, len(ops))
        if not self.runs:
            return out
        lazy = np.flatnonzero(out == id(_AT))  # the markers, found from the ids themselves
        for stream, qs, es in self._groups(np.asarray(ops, np.int64)[lazy]):
            out[lazy[qs]] = stream.made_ids(es)
        return out

    def nbytes(self, ops: list[int], of: Callable[[list[Any]], np.ndarray]) -> np.ndarray:
        """The ``nbytes`` of each op's instruction: ``of`` (a list of instructions' bytes) for
        the instructions there, a kernel op's read from its stream's records."""
        vals, lazy = self._lazy(ops)
        if not len(lazy):
            return of(vals)
        out = np.zeros(len(ops), np.int64)
        eager = np.ones(len(ops), np.bool_)
        eager[lazy] = False
        at = np.flatnonzero(eager)
        out[at] = of(list(map(vals.__getitem__, at.tolist())))
        for stream, qs, es in self._groups(np.asarray(ops, np.int64)[lazy]):
            out[lazy[qs]] = stream.nbytes(es)
        return out


def _marked(vals: list[Any]) -> np.ndarray:
    """The positions of kernel ops' markers in ``vals`` (found in C)."""
    return np.flatnonzero(np.fromiter(map(is_, vals, repeat(_AT)), np.bool_, len(vals)))
