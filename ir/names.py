"""Unique, stable names: ``base``, then ``base_1``, ``base_2``... in order of request."""

from __future__ import annotations

from collections.abc import Iterable


class NameScope:
    """The names taken so far in one graph; :meth:`fresh` hands out the next free one."""

    def __init__(self, taken: Iterable[str] = ()) -> None:
        self._taken: set[str] = set(taken)

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self._taken:
            i += 1
            name = f"{base}_{i}"
        self._taken.add(name)
        return name
