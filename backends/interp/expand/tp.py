"""Tensor parallelism (``strategy tp``): every expert split over all dies, partial sums reduced.

Parameters read from the runtime policy: ``owner`` (the die owning each routed micro-slice,
required), ``shared_owner`` (the same for the shared experts' slices, when the layer has them),
``channels`` and ``shared_channels`` (the DRAM channel holding each micro-slice; default the
channel nearest to its die).

For one routing the expansion emits, per die, in this order:

1. **x all-gather**: every home die's tokens are broadcast to all dies along the tree of the
   target's routes from that die (each die receives each block once and forwards it to its
   children); pass k holds every tree edge at depth k+1, sends before recvs, as EP's relay does;
2. **shared experts**: the die's own shared micro-slices for all tokens;
3. **routed experts**: for each activated expert (ascending id; ``param order = balanced``:
   hot slices spread among cold ones, :mod:`.tp_order`), each micro-slice the die owns:
   ``load`` into the next free slot (round robin, double-buffering DRAM against compute),
   ``gemm``/``act``/``accum`` for the expert's tokens, ``free``; the die now holds a partial
   output for every token;
4. **y reduce**: for each home die, the partial outputs of its tokens flow up the same tree
   (deepest edges first): each die adds what its children send and sends the sum to its parent,
   so the home die ends with the full sum.

Bytes: each die loads ``1/D`` of every activated expert; each link of a broadcast tree carries
each token's input once, and each link of a reduce tree its partial output once.

With ``param window`` the same work runs as chunks, one expert's tokens gathered and reduced
at a time (:mod:`.tp_chunked`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np

from moec.backends.interp.expand import (
    ExpandContext,
    register,
    stream_runs,
    token_set,
    token_sets,
)
from moec.backends.interp.expand.streaming import Run
from moec.backends.interp.expand.tp_order import balanced, expert_groups
from moec.ir.cost import dram_occupancy, slice_compute_time
from moec.ir.stream.params import TPParams
from moec.ir.stream.program import (
    Block,
    Instr,
    Recv,
    Send,
    TokenSet,
)
from moec.ir.target import Target

if TYPE_CHECKING:
    from moec.backends.interp.expand.tp_chunked import Chunk


def tree_edges(target: Target, root: int) -> list[tuple[int, int, int]]:
    """Edges ``(depth, parent, child)`` of the tree of ``target.route(root, d)`` over all dies
    ``d``: a die's parent is the die before it on its route from ``root``."""
    out = []
    for d in range(target.num_dies):
        if d != root:
            path = target.route(root, d)
            out.append((len(path) - 1, path[-2], d))
    return sorted(out)


def broadcast(
    out: dict[int, list[Instr]], target: Target, layer: str, blocks: dict[int, tuple[TokenSet, int]]
) -> None:
    """Every ``root -> (tokens, nbytes)`` x block to every die, down the root's route tree."""
    edges = [(k, root, a, b) for root in sorted(blocks) for k, a, b in tree_edges(target, root)]
    for depth in sorted({e[0] for e in edges}):
        live = [e for e in edges if e[0] == depth]
        for _, root, a, b in live:
            ts, n = blocks[root]
            out[a].append(Send(peer=b, nbytes=n, block=Block(layer, "x", ts)))
        for _, root, a, b in live:
            ts, n = blocks[root]
            out[b].append(Recv(peer=a, nbytes=n, block=Block(layer, "x", ts)))


def reduce_to_home(
    out: dict[int, list[Instr]], target: Target, layer: str, blocks: dict[int, tuple[TokenSet, int]]
) -> None:
    """Partial ``y`` of each ``home -> (tokens, nbytes)`` summed up the home's route tree, the
    deepest edges first, so every die sends once, after adding what its children sent."""
    edges = [(k, home, a, b) for home in sorted(blocks) for k, a, b in tree_edges(target, home)]
    for depth in sorted({e[0] for e in edges}, reverse=True):
        live = [e for e in edges if e[0] == depth]
        for _, home, parent, child in live:
            ts, n = blocks[home]
            out[child].append(Send(peer=parent, nbytes=n, block=Block(layer, "y", ts)))
        for _, home, parent, child in live:
            ts, n = blocks[home]
            out[parent].append(Recv(peer=child, nbytes=n, block=Block(layer, "y", ts)))


def _channels(ctx: ExpandContext, given: tuple[int, ...] | None, owner: list[int]) -> list[int]:
    """The channel of each slice: as given, else the one nearest its owner."""
    if given is not None:
        return list(given)
    return [ctx.target.nearest_channel(d).id for d in owner]


def _chunks(
    ctx: ExpandContext, params: TPParams, owner: list[int], channels: list[int]
) -> list[Chunk]:
    """TP's work as chunks (:mod:`.tp_chunked`): the shared experts for every token, then each
    activated expert (ascending id) for its tokens, with the die and channel of each slice;
    with ``chunk``, each cut into pieces of at most that many tokens (``numpy.array_split``)."""
    m, r = ctx.layer, ctx.routing
    T, k = r.ids.shape
    out: list[Chunk] = []
    if m.shared_ffn and ctx.shared_layout is not None:
        assert params.shared_owner is not None  # required when the layer has shared experts
        shared_owner = list(params.shared_owner)
        shared_channels = _channels(ctx, params.shared_channels, shared_owner)
        js = list(zip(range(len(shared_owner)), shared_owner, shared_channels, strict=True))
        everyone = np.arange(T, dtype=np.int64)
        n = 1 if params.chunk is None else -(-T // params.chunk)
        out += [(None, piece, js) for piece in np.array_split(everyone, n)]
    routed = list(zip(range(len(owner)), owner, channels, strict=True))
    pieces: list[Chunk] = []
    for e, part_t in expert_groups(r.ids):
        n = 1 if params.chunk is None else -(-part_t.size // params.chunk)
        pieces += [(e, piece, routed) for piece in np.array_split(part_t, n)]
    if params.order == "balanced":  # chunk by chunk, as die 0 sees them (every die alike)
        mine = [(j, ch) for j, d, ch in routed if d == 0]
        costs = [
            (sum(_compute(ctx, 0, e, int(ts.size), j) for j, _ in mine),
             sum(dram_occupancy(ctx.target, ch, ctx.slice_bytes(e, j)) for j, ch in mine))
            for e, ts, _ in pieces
        ]  # fmt: skip
        pieces = [pieces[i] for i in balanced(costs)]
    return out + pieces


def _compute(ctx: ExpandContext, die: int, expert: int, tokens: int, j: int) -> float:
    """Seconds of routed micro-slice ``j`` of ``expert`` for ``tokens`` on ``die``."""
    m = ctx.layer
    return slice_compute_time(
        ctx.target, die, tokens, m.hidden, ctx.layout.width(j), m.gated, ctx.precision(expert)
    )


def die_order(
    ctx: ExpandContext, die: int, groups: list[tuple[int, TokenSet, int]], owner: list[int],
    channels: list[int], order: str,
) -> list[tuple[int, int, TokenSet]]:  # fmt: skip
    """``die``'s routed micro-slices ``(expert, j, tokens)`` in ``order``
    (:mod:`.tp_order`); ``groups``: each activated expert, its tokens and their count."""
    items = [(e, j, ts) for e, ts, _ in groups for j, d in enumerate(owner) if d == die]
    if order != "balanced":
        return items
    n = {e: count for e, _, count in groups}
    costs = [
        (_compute(ctx, die, e, n[e], j), dram_occupancy(ctx.target, channels[j], ctx.slice_bytes(e, j)))
        for e, j, _ in items
    ]  # fmt: skip
    return [items[i] for i in balanced(costs)]


def _owned(owner: list[int]) -> dict[int, list[int]]:
    """Per die, the slices it owns (``owner[j]``: slice j's die), ascending; the dies in the
    order of their first slice (the order a walk over the slices meets them)."""
    out: dict[int, list[int]] = {}
    for j, d in enumerate(owner):
        out.setdefault(d, []).append(j)
    return out


@register("tp")
def expand(ctx: ExpandContext) -> dict[int, list[Instr]]:
    t, m, r = ctx.target, ctx.layer, ctx.routing
    D = t.num_dies
    params = ctx.typed(TPParams)
    owner = list(params.owner)
    channels = _channels(ctx, params.channels, owner)
    T, k = r.ids.shape
    home = np.asarray(r.home_die, dtype=np.int64)
    out: dict[int, list[Instr]] = {d: [] for d in range(D)}
    homes = {}
    for h in range(D):
        toks = np.nonzero(home == h)[0]
        if toks.size:
            homes[h] = (token_set(toks), ctx.activation_bytes(int(toks.size)))

    # 1. x all-gather
    broadcast(out, t, m.name, homes)

    # 2./3. compute the owned micro-slices: each die's runs, in this order
    runs: defaultdict[int, list[Run]] = defaultdict(list)
    everyone = TokenSet.span(0, T)
    if params.window is not None:
        from moec.backends.interp.expand.tp_chunked import expand_chunked  # imports this module

        return expand_chunked(ctx, _chunks(ctx, params, owner, channels), params.window)
    if m.shared_ffn and ctx.shared_layout is not None:
        assert params.shared_owner is not None  # required when the layer has shared experts
        shared_owner = list(params.shared_owner)
        shared_channels = _channels(ctx, params.shared_channels, shared_owner)
        for d, js in _owned(shared_owner).items():
            runs[d].append((None, shared_channels, everyone, js))
    active = expert_groups(r.ids)
    sets = token_sets([toks for _, toks in active])
    groups = [(e, ts, int(toks.size)) for (e, toks), ts in zip(active, sets, strict=True)]
    if params.order == "natural":
        owned = _owned(owner)
        for e, ts, _ in groups:
            for d, js in owned.items():
                runs[d].append((e, channels, ts, js))
    else:
        for d in range(D):
            for e, j, ts in die_order(ctx, d, groups, owner, channels, params.order):
                runs[d].append((e, channels[j], ts, (j,)))
    for d, die_runs in runs.items():
        stream_runs(out[d], ctx, ctx.slots_of(d), [0], die_runs)

    # 4. y reduce to the home dies
    reduce_to_home(out, t, m.name, homes)
    return out
