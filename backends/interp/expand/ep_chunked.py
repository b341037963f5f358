"""Chunked token dispatch for EP and Hydra (``param window = K`` of an EP-family policy).

Plain EP (:func:`~.ep.expand_work`) sends every token to its experts' dies before the first
expert and returns the outputs after the last, so an expert die holds every token routed to any
of its experts for the whole layer. Chunked, the dies step through their work in *chunks*, as
TP's chunked dispatch does (:mod:`.tp_chunked`): chunk ``c`` is every die's ``c``-th expert (in
the order :func:`~.load_order.order_work` chose; a die with fewer experts has nothing to compute
in the later chunks but still relays), preceded by the split shared experts as one chunk of
every token (broadcast, computed, reduced). A chunk's tokens travel to its expert dies (hop by
hop, as EP's ``x`` blocks) just before its slices and its outputs return right after; before
chunk ``c``'s transfers die ``d`` waits for its own chunk ``c-K`` (``wait
<layer>.chunk.d<d>``, a ``signal`` after each chunk), so at most ``K`` chunks' tokens, its own
and those it relays, are live on a die. The first loads of a chunk (one per slot) are issued
before the ``wait``, so the window holds back activations, not the weight stream.

With ``chunk = N`` an expert with more than ``N`` tokens is several work items (its slices
streamed once per item). Cost: a token routed to two experts on one die crosses the links once
per expert instead of once; the dies advance in step (a die's chunk ``c`` waits for relays that
other dies issue in their chunk ``c``). Split experts (``split``) are not chunked: an error.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from moec.backends.interp.expand import ExpandContext, token_set
from moec.backends.interp.expand.load_order import Work
from moec.backends.interp.expand.tp import broadcast, reduce_to_home
from moec.backends.interp.expand.tp_chunked import chunk_event
from moec.ir.errors import ScheduleError
from moec.ir.stream.program import (
    Accum,
    Act,
    Block,
    Free,
    Gemm,
    Instr,
    Load,
    Recv,
    Send,
    Signal,
    SliceRef,
    TokenSet,
    Wait,
)


def split_work(work: list[Work], cap: int | None) -> list[Work]:
    """``work`` with each item of more than ``cap`` tokens cut into near-even pieces."""
    if cap is None:
        return work
    out: list[Work] = []
    for d, e, ch, toks in work:
        n = -(-toks.size // cap)
        out += [(d, e, ch, piece) for piece in np.array_split(toks, max(n, 1))]
    return out


def _relay(
    out: dict[int, list[Instr]], routes: list[tuple[list[int], TokenSet, int]], layer: str,
    which: str,
) -> None:  # fmt: skip
    """EP's hop-by-hop relay (:func:`.ep._relay`): pass k = every hop-k send, then recvs."""
    hops = max((len(path) - 1 for path, _, _ in routes), default=0)
    for k in range(hops):
        live = [(path[k], path[k + 1], ts, n) for path, ts, n in routes if len(path) > k + 1]
        for a, b, ts, n in live:
            out[a].append(Send(peer=b, nbytes=n, block=Block(layer, which, ts)))  # type: ignore[arg-type]
        for a, b, ts, n in live:
            out[b].append(Recv(peer=a, nbytes=n, block=Block(layer, which, ts)))  # type: ignore[arg-type]


def expand_chunked(
    ctx: ExpandContext, work: list[Work], shared: tuple[list[int], list[int]] | None,
    window: int, cap: int | None,
) -> dict[int, list[Instr]]:  # fmt: skip
    """The per-die instructions of ``work`` (each die's items in order) and the layer's shared
    experts (``shared``: the die and channel of each split shared slice; None: replicated or
    none), at most ``window`` chunks in flight per die (module docstring)."""
    t, m, r = ctx.target, ctx.layer, ctx.routing
    D, T = t.num_dies, r.tokens
    home = np.asarray(r.home_die, dtype=np.int64)
    out: dict[int, list[Instr]] = {d: [] for d in range(D)}
    cursor = [0] * D
    name = m.name

    def slices(
        d: int, expert: int | None, ch: int, ts: TokenSet, js: list[int]
    ) -> list[list[Instr]]:
        slots = ctx.slots_of(d)
        groups = []
        for j in js:
            s = slots[cursor[d] % len(slots)]
            cursor[d] += 1
            load = Load(s, ch, SliceRef(name, expert, j), ctx.slice_bytes(expert, j))
            groups.append([load, Gemm(s, ts), Act(s, ts), Accum(s, ts), Free(s)])
        return groups

    per_die: dict[int, list[Work]] = defaultdict(list)
    for item in split_work(work, cap):
        per_die[item[0]].append(item)
    chunks: list[list[Work]] = [
        [per_die[d][c] for d in range(D) if c < len(per_die[d])]
        for c in range(max((len(v) for v in per_die.values()), default=0))
    ]
    lead = 1 if shared is not None or (m.shared_ffn and ctx.shared_layout is not None) else 0
    for c in range(lead + len(chunks)):
        work_of: dict[int, list[list[Instr]]] = {d: [] for d in range(D)}
        homes: dict[int, tuple[TokenSet, int]] = {}
        x_routes: list[tuple[list[int], TokenSet, int]] = []
        y_routes: list[tuple[list[int], TokenSet, int]] = []
        if c < lead:  # the shared experts, for every token
            lay = ctx.shared_layout
            assert lay is not None
            if shared is not None:
                for h in range(D):
                    toks = np.nonzero(home == h)[0]
                    if toks.size:
                        homes[h] = (token_set(toks), ctx.activation_bytes(int(toks.size)))
                everyone = TokenSet.span(0, T)
                for j, (d, ch) in enumerate(zip(*shared, strict=True)):
                    work_of[d] += slices(d, None, ch, everyone, [j])
            else:  # replicated: each die its own tokens, every shared slice
                for d in range(D):
                    own = np.nonzero(home == d)[0]
                    if own.size:
                        ch = t.nearest_channel(d).id
                        work_of[d] += slices(d, None, ch, token_set(own), list(range(lay.count)))
        else:
            for d, e, ch, toks in chunks[c - lead]:
                work_of[d] += slices(d, e, ch, token_set(toks), list(range(ctx.layout.count)))
                for h in sorted(set(home[toks].tolist()) - {d}):
                    mine = toks[home[toks] == h]
                    n = ctx.activation_bytes(int(mine.size))
                    x_routes.append((t.route(h, d), token_set(mine), n))
                    y_routes.append((t.route(d, h), token_set(mine), n))
        for d in range(D):
            ahead = work_of[d][: len(ctx.slots_of(d))] if work_of[d] else []
            out[d] += [group.pop(0) for group in ahead]  # loads run ahead of the window
            if c >= window:
                out[d].append(Wait(chunk_event(name, d), c - window + 1))
        if homes:
            broadcast(out, t, name, homes)
        _relay(out, x_routes, name, "x")
        for d in range(D):
            for group in work_of[d]:
                out[d] += group
        _relay(out, y_routes, name, "y")
        if homes:
            reduce_to_home(out, t, name, homes)
        for d in range(D):
            out[d].append(Signal(chunk_event(name, d)))
    return out


def no_split(split: tuple[int, ...] | None, layer: str) -> None:
    """Chunked dispatch does not take split experts (a hybrid of TP and EP within the layer)."""
    if split:
        raise ScheduleError(
            f"runtime {layer}: param window (chunked dispatch) does not combine with split "
            f"experts ({list(split)})"
        )
