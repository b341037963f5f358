"""What one die does with one MoE layer's activations over a timing run (:class:`LayerActs`):
the op ids and token sets the builders record and :mod:`.sram` turns into allocation and
release events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter

import numpy as np

from moec.ir.stream.program import TokenSet

#: an ``(op, tokens)`` pair's op and token set
_OP, _SET = itemgetter(0), itemgetter(1)


@dataclass(repr=False)
class LayerActs:
    """What one die does with one MoE layer's activations (op ids and token sets).

    ``ops`` and ``h`` are lists the reference builders append ints to; a compiled relay run
    hands its ops and slices as arrays (:meth:`add_ops`, :meth:`add_h`), kept in
    ``op_chunks`` / ``h_chunks`` after the ints appended before them (no int object per op):
    read both through :meth:`op_array` / :meth:`h_array`. Its ``x_uses`` and ``accums`` come
    the same way (:meth:`add_x_uses`, :meth:`add_accums`: an op array and a list of token
    sets, no tuple per op), kept in ``x_chunks`` / ``accum_chunks``: read both through
    :meth:`x_use_columns` / :meth:`accum_columns`. ``repr`` shows the whole lists (the same
    text however they were added)."""

    ops: list[int] = field(default_factory=list)
    #: x reads: gemm and send x
    x_uses: list[tuple[int, TokenSet]] = field(default_factory=list)
    #: x blocks received: (arrival op, tokens); ``recv_x_start``: (the link hold's op, tokens)
    recv_x: list[tuple[int, TokenSet]] = field(default_factory=list)
    recv_x_start: list[tuple[int, TokenSet]] = field(default_factory=list)
    accums: list[tuple[int, TokenSet]] = field(default_factory=list)
    #: y blocks received: (the link hold's op, arrival op, tokens, bytes)
    recv_y: list[tuple[int, int, TokenSet, int]] = field(default_factory=list)
    send_y: list[tuple[int, TokenSet]] = field(default_factory=list)
    #: slices in flight: gemm op, accum op, bytes of h, flat (three ints a slice: no tuple
    #: per slice to build, and one array conversion)
    h: list[int] = field(default_factory=list)
    #: ``ops`` and ``h`` before the ints in the lists, as arrays (int64), in order
    op_chunks: list[np.ndarray] = field(default_factory=list)
    h_chunks: list[np.ndarray] = field(default_factory=list)
    #: ``x_uses`` and ``accums`` before the pairs in the lists, as columns (ops, int64; their
    #: token sets), in order
    x_chunks: list[tuple[np.ndarray, list[TokenSet]]] = field(default_factory=list)
    accum_chunks: list[tuple[np.ndarray, list[TokenSet]]] = field(default_factory=list)
    #: per chunk of ``x_chunks`` (by index) whose adder gave them: its token sets, each set
    #: object once (:meth:`x_use_sets_once`)
    x_once: dict[int, list[TokenSet]] = field(default_factory=dict, compare=False)

    def add_ops(self, ops: np.ndarray) -> None:
        """Append ``ops`` (int64) after the ops so far."""
        if self.ops:
            self.op_chunks.append(np.asarray(self.ops, np.int64))
            self.ops = []
        self.op_chunks.append(ops)

    def add_h(self, h: np.ndarray) -> None:
        """Append ``h`` (int64, three a slice: gemm op, accum op, bytes) after the slices so
        far."""
        if self.h:
            self.h_chunks.append(np.asarray(self.h, np.int64))
            self.h = []
        self.h_chunks.append(h)

    def add_x_uses(self, ops: np.ndarray, sets: list[TokenSet],
                   once: list[TokenSet] | None = None) -> None:  # fmt: skip
        """Append x reads at ``ops`` (int64) of ``sets`` (one a read) after the reads so far;
        ``once``, if given: the distinct set objects of ``sets``."""
        if self.x_uses:
            self.x_chunks.append(_pair_columns(self.x_uses))
            self.x_uses = []
        if once is not None:
            self.x_once[len(self.x_chunks)] = once
        self.x_chunks.append((ops, sets))

    def add_accums(self, ops: np.ndarray, sets: list[TokenSet]) -> None:
        """Append accums at ``ops`` (int64) of ``sets`` after the accums so far."""
        if self.accums:
            self.accum_chunks.append(_pair_columns(self.accums))
            self.accums = []
        self.accum_chunks.append((ops, sets))

    def x_use_columns(self) -> tuple[np.ndarray, list[TokenSet]]:
        """Every x read's op and token set, in the order added."""
        return _joined_pairs(self.x_chunks, self.x_uses)

    def x_use_sets_once(self) -> list[TokenSet]:
        """Every set object of the x reads, at least once (a chunk's distinct sets where its
        adder gave them, not a set per read): what a mask of the tokens read needs."""
        once = self.x_once
        return list(chain(
            chain.from_iterable(once.get(k, c[1]) for k, c in enumerate(self.x_chunks)),
            map(_SET, self.x_uses),
        ))  # fmt: skip

    def accum_columns(self) -> tuple[np.ndarray, list[TokenSet]]:
        """Every accum's op and token set, in the order added."""
        return _joined_pairs(self.accum_chunks, self.accums)

    def has_ops(self) -> bool:
        return bool(self.ops or self.op_chunks)

    def op_array(self) -> np.ndarray:
        """Every op, in the order added."""
        return _joined(self.op_chunks, self.ops)

    def h_array(self) -> np.ndarray:
        """Every slice's (gemm op, accum op, bytes), flat, in the order added."""
        return _joined(self.h_chunks, self.h)

    def __repr__(self) -> str:
        return (
            f"LayerActs(ops={self.op_array().tolist()!r}, "
            f"x_uses={_pairs_list(self.x_use_columns())!r}, "
            f"recv_x={self.recv_x!r}, recv_x_start={self.recv_x_start!r}, "
            f"accums={_pairs_list(self.accum_columns())!r}, recv_y={self.recv_y!r}, "
            f"send_y={self.send_y!r}, "
            f"h={self.h_array().tolist()!r})"
        )


def _joined(chunks: list[np.ndarray], tail: list[int]) -> np.ndarray:
    """``chunks`` then ``tail`` as one int64 array."""
    if not chunks:
        return np.fromiter(tail, np.int64, len(tail))
    if not tail:
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return np.concatenate([*chunks, np.fromiter(tail, np.int64, len(tail))])


def _pair_columns(pairs: list[tuple[int, TokenSet]]) -> tuple[np.ndarray, list[TokenSet]]:
    """``(op, tokens)`` pairs as columns: the ops (int64), the token sets."""
    return np.fromiter(map(_OP, pairs), np.int64, len(pairs)), list(map(_SET, pairs))


def _joined_pairs(
    chunks: list[tuple[np.ndarray, list[TokenSet]]], tail: list[tuple[int, TokenSet]]
) -> tuple[np.ndarray, list[TokenSet]]:  # fmt: skip
    """``chunks`` then ``tail``'s pairs as one pair of columns."""
    parts = [*chunks, _pair_columns(tail)] if tail or not chunks else chunks
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), list(chain.from_iterable(p[1] for p in parts))


def _pairs_list(cols: tuple[np.ndarray, list[TokenSet]]) -> list[tuple[int, TokenSet]]:
    """Columns back as ``(op, tokens)`` pairs."""
    return list(zip(cols[0].tolist(), cols[1], strict=True))
