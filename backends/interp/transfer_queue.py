"""Transfers waiting for their other side, as the op graph builder keeps them per link.

The side of a transfer that comes first (:meth:`.opgraph.Builder.transfer`, the relays)
makes its ops and queues them, ``(hold op, arrival op)``; the other side takes the oldest. A
whole-model FSE-DP run queues and takes about a million transfers, most of them a compiled
relay run's (:mod:`.relay_compiled`), which reads and writes them as arrays: a
:class:`TransferQueue` holds the pairs flat in one ``array('q')`` (no tuple per transfer) and
answers ``popleft``/``append`` one pair at a time for the Python relay as a deque does.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator

import numpy as np

#: pairs taken before the taken part of the buffer is dropped (at most half the buffer)
_COMPACT = 4096


class TransferQueue:
    """A first-in first-out queue of ``(hold, arrival)`` op pairs, flat in an int64 array."""

    __slots__ = ("_a", "_h")

    def __init__(self, pairs: Iterable[tuple[int, int]] = ()) -> None:
        self._a = array("q")
        self._h = 0  # where the oldest waiting pair starts in ``_a``
        for p in pairs:
            self.append(p)

    def __len__(self) -> int:
        return (len(self._a) - self._h) >> 1

    def __bool__(self) -> bool:
        return len(self._a) > self._h

    def __iter__(self) -> Iterator[tuple[int, int]]:
        a, h = self._a, self._h
        return zip(a[h::2], a[h + 1 :: 2], strict=True)

    def __repr__(self) -> str:
        return f"TransferQueue({list(self)!r})"

    def append(self, ops: tuple[int, int]) -> None:
        """Queue one transfer's ``(hold, arrival)``."""
        self._a.extend(ops)

    def popleft(self) -> tuple[int, int]:
        """Take the oldest transfer's ``(hold, arrival)``."""
        a, h = self._a, self._h
        if h >= len(a):
            raise IndexError("pop from an empty transfer queue")
        ops = (a[h], a[h + 1])
        self._taken(h + 2)
        return ops

    def first(self, k: int) -> np.ndarray:
        """The oldest ``k`` transfers (at most :func:`len`), flat ``hold, arrival`` pairs: a
        copy (the array keeps no view, which would stop it growing)."""
        return np.frombuffer(self._a, np.int64, 2 * k, 8 * self._h).copy()

    def drop(self, k: int) -> None:
        """Take the oldest ``k`` transfers off (at most :func:`len`)."""
        self._taken(self._h + 2 * k)

    def extend_flat(self, pairs: np.ndarray) -> None:
        """Queue transfers given as int64 ``hold, arrival`` pairs (rows or flat), in order."""
        self._a.frombytes(np.ascontiguousarray(pairs, np.int64).tobytes())

    def _taken(self, h: int) -> None:
        a = self._a
        if h >= len(a):  # empty: start the buffer over
            del a[:]
            h = 0
        elif h >= 2 * _COMPACT and 2 * h >= len(a):
            del a[:h]
            h = 0
        self._h = h
