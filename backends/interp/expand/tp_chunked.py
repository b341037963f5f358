"""Chunked token dispatch for TP (``param window = K`` of a ``strategy tp`` policy).

Plain TP (:mod:`.tp`) gathers every token on every die before the first expert and reduces the
partial outputs after the last, so each die holds the whole batch's inputs and partial outputs
for the whole layer; at 1024 tokens that can leave the SRAM too little room for weight slots.
Chunked, the layer is a sequence of *chunks*, one per expert in TP's order (the shared experts
first, as one chunk of every token, then each activated expert by ascending id): a chunk's
tokens are broadcast just before its slices are computed (:func:`~.tp.broadcast`, per home die)
and its partial outputs reduced right after (:func:`~.tp.reduce_to_home`), so a die holds only
the tokens of the chunks in flight. The window bounds them: before chunk ``c``'s transfers, die
``d`` waits (``wait <layer>.chunk.d<d> count c-K+1``) until its chunk ``c-K`` has completed
(a ``signal`` after each chunk's reduce), so at most ``K`` chunks' inputs and partial outputs
are live on a die. A die's first loads of a chunk (one per slot) are issued before that
``wait``, so the window holds back activations, not the weight stream.

Per die and chunk ``c``::

    load s<i> <- ch .. <layer>:e<e>:s<j> ...        # the die's first slices, one per slot
    wait <layer>.chunk.d<d> count c-K+1              # (c >= K) chunk c-K has completed
    send/recv x <layer> tokens <chunk's tokens of each home die> ...   # broadcast
    gemm/act/accum/free ... ; load ...               # the die's slices of the chunk's expert
    send/recv y <layer> tokens ...                   # reduce to the home dies
    signal <layer>.chunk.d<d>

Cost: a token routed to ``k`` experts is broadcast and reduced ``k`` times (once per chunk it
is in) instead of once, so the D2D bytes grow with ``top_k``; the loads and compute are TP's.
"""

from __future__ import annotations

import numpy as np

from moec.backends.interp.expand import ExpandContext, token_set
from moec.backends.interp.expand.tp import broadcast, reduce_to_home
from moec.ir.stream.program import (
    Accum,
    Act,
    Free,
    Gemm,
    Instr,
    Load,
    Signal,
    SliceRef,
    TokenSet,
    Wait,
)

#: A chunk: the expert (None: the shared experts), its tokens, and each slice's (j, die, channel).
Chunk = tuple[int | None, np.ndarray, list[tuple[int, int, int]]]


def chunk_event(layer: str, die: int) -> str:
    """The event die ``die`` signals after each chunk of ``layer``."""
    return f"{layer}.chunk.d{die}"


def expand_chunked(ctx: ExpandContext, chunks: list[Chunk], window: int) -> dict[int, list[Instr]]:
    """The per-die instructions of ``chunks`` (in order) with at most ``window`` in flight."""
    t, m = ctx.target, ctx.layer
    D = t.num_dies
    home = np.asarray(ctx.routing.home_die, dtype=np.int64)
    out: dict[int, list[Instr]] = {d: [] for d in range(D)}
    cursor = [0] * D
    for c, (expert, toks, slices) in enumerate(chunks):
        work: dict[int, list[list[Instr]]] = {d: [] for d in range(D)}
        ts = token_set(toks)
        for j, d, ch in slices:
            slots = ctx.slots_of(d)
            s = slots[cursor[d] % len(slots)]
            cursor[d] += 1
            ref = SliceRef(m.name, expert, j)
            load = Load(s, ch, ref, ctx.slice_bytes(expert, j))
            work[d].append([load, Gemm(s, ts), Act(s, ts), Accum(s, ts), Free(s)])
        for d in range(D):
            # the loads into the die's slots run ahead of the window (each still waits for its
            # slot's last free): the window holds back activations, not the weight stream
            ahead = work[d][: len(ctx.slots_of(d))] if work[d] else []
            out[d] += [group.pop(0) for group in ahead]
            if c >= window:
                out[d].append(Wait(chunk_event(m.name, d), c - window + 1))
        blocks: dict[int, tuple[TokenSet, int]] = {}
        th = home[toks]
        for h in range(D):
            mine = toks[th == h]
            if mine.size:
                blocks[h] = (token_set(mine), ctx.activation_bytes(int(mine.size)))
        broadcast(out, t, m.name, blocks)
        for d in range(D):
            for group in work[d]:
                out[d] += group
        reduce_to_home(out, t, m.name, blocks)
        for d in range(D):
            out[d].append(Signal(chunk_event(m.name, d)))
    return out
