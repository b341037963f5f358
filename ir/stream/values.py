"""Operand values of stream-program instructions: token sets, slot contents, activation blocks.

These are plain frozen data that instructions hold (:mod:`.instructions`) and operand kinds read
and write (:mod:`.kinds`): :class:`TokenSet` (``0..15,18``), :class:`SliceRef`
(``L:e3:s1``) and :class:`TensorRef` (a slot's :data:`Content`), and :class:`Block` (an
activation block ``x L tokens T``). :data:`HOST_CHANNEL` is the channel id of host memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import starmap
from operator import sub
from typing import Any, Literal, TypeAlias

from moec.ir.errors import ProgramError

#: The channel id of host memory, the target's optional offloading tier (``host`` in the text
#: form, ``tensor ... host bytes B`` and ``load sK <- host ...``): each die reaches it over its
#: own host link.
HOST_CHANNEL = -1

#: A typed parameter value of a runtime policy or a target override.
Value: TypeAlias = int | float | str | bool | list["Value"]


# --- token sets ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenSet:
    """A set of token indices of one iteration, kept as sorted, disjoint, non-adjacent ranges.

    ``ranges`` holds inclusive ``(first, last)`` pairs; the text form is ``0..15,18,20..31``.
    """

    ranges: tuple[tuple[int, int], ...]

    @staticmethod
    def of(tokens: Iterable[int]) -> TokenSet:
        """The set of the given token indices (any order, duplicates allowed)."""
        out: list[tuple[int, int]] = []
        for t in sorted(set(tokens)):
            if t < 0:
                raise ProgramError(f"token index {t} is negative")
            if out and out[-1][1] + 1 == t:
                out[-1] = (out[-1][0], t)
            else:
                out.append((t, t))
        return TokenSet(tuple(out))

    @staticmethod
    def span(first: int, stop: int) -> TokenSet:
        """Tokens ``first .. stop-1`` (empty when ``stop <= first``)."""
        return TokenSet(((first, stop - 1),)) if stop > first else TokenSet(())

    @staticmethod
    def normalize(ranges: Iterable[tuple[int, int]]) -> TokenSet:
        """Merge possibly overlapping or unsorted inclusive ranges into canonical form."""
        out: list[tuple[int, int]] = []
        for a, b in sorted(ranges):
            if a < 0 or b < a:
                raise ProgramError(f"bad token range {a}..{b}")
            if out and a <= out[-1][1] + 1:
                if b > out[-1][1]:
                    out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
        return TokenSet(tuple(out))

    def __iter__(self) -> Iterator[int]:
        for a, b in self.ranges:
            yield from range(a, b + 1)

    def __len__(self) -> int:
        return self.size

    def __hash__(self) -> int:
        return self._hash

    @cached_property
    def _hash(self) -> int:
        """The dataclass's hash of the fields, computed once (sets hold hundreds of ranges, and
        the SRAM accounting keys dicts by them)."""
        return hash((self.ranges,))

    @cached_property
    def size(self) -> int:
        """The number of tokens, counted once (the interpreter asks for it millions of times):
        each range's ``b - a + 1``, added in C (``a - b`` per range by ``starmap``)."""
        return len(self.ranges) - sum(starmap(sub, self.ranges))

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def keep_indices(self, indices: Any) -> TokenSet:
        """This set, keeping ``indices``: its tokens ascending, as an int64 array, from a
        builder that has them in one (the SRAM accounting reads them instead of expanding
        ``ranges``); not compared, hashed or printed. The caller vouches that they are the
        set's."""
        self.__dict__["_indices"] = indices
        return self

    def known_indices(self) -> Any:
        """The array :meth:`keep_indices` kept, or None."""
        return self.__dict__.get("_indices")

    def __contains__(self, t: object) -> bool:
        return isinstance(t, int) and any(a <= t <= b for a, b in self.ranges)

    @property
    def max(self) -> int:
        """The largest token index (-1 for the empty set)."""
        return self.ranges[-1][1] if self.ranges else -1

    def to_list(self) -> list[int]:
        return list(self)

    def text(self) -> str:
        """The canonical text form, e.g. ``0..15,18,20..31``."""
        return ",".join(str(a) if a == b else f"{a}..{b}" for a, b in self.ranges)

    def __str__(self) -> str:
        return self.text()


# --- what a slot holds ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SliceRef:
    """Micro-slice ``slice`` of expert ``expert`` of layer ``layer`` (``expert`` None: shared)."""

    layer: str
    expert: int | None
    slice: int

    def __str__(self) -> str:
        e = "sh" if self.expert is None else f"e{self.expert}"
        return f"{self.layer}:{e}:s{self.slice}"


@dataclass(frozen=True, slots=True)
class TensorRef:
    """A whole DRAM tensor."""

    name: str

    def __str__(self) -> str:
        return self.name


Content = SliceRef | TensorRef


@dataclass(frozen=True, slots=True)
class Block:
    """A block of activations of a layer: its input ``x`` or output/partial sum ``y``, by token."""

    layer: str
    which: Literal["x", "y"]
    tokens: TokenSet
