"""Expert parallelism (``strategy ep``): whole experts on dies, tokens travel to them.

Parameters read from the runtime policy: ``placement`` (required, the die of each expert),
``channels`` (optional, the DRAM channel holding each expert; default: the channel nearest to
the expert's die) and, for a layer with shared experts, ``shared`` (``split``, the default, or
``replicated``), ``shared_owner`` and ``shared_channels`` (the die computing each shared
micro-slice and the channel it is loaded from; defaults below).

**Shared experts.** A GPU EP deployment replicates the shared experts on every device, which is
free there because their weights are resident. Here weights stream from DRAM every iteration, so
replicas would load the shared weights D times. The EP expansion therefore runs them as
DeepSeek-V3's decoding deployment does, as one more expert that every token selects, with its
columns cut over the dies (``split``): die ``shared_owner[j]`` loads shared micro-slice ``j``
once and computes it for every token; the partial sums reach the home dies with the routed
experts' outputs. Each shared slice is loaded once per iteration, as in TP and FSE-DP. Defaults:
``shared_owner[j] = j * D // count``; ``shared_channels``: each slice, in order, on the channel
that would finish its bytes first (ties: fewer hops from the owner, lower id), which spreads
the bytes evenly when a lowering (Hydra's) does not choose. ``replicated`` is the data-parallel
form: every die loads all shared slices from its nearest channel for its own tokens.

For one routing the expansion emits, per die, in this order:

1. **x out**: without split shared experts, each home die sends, once per expert die, the
   activations of its tokens routed to any expert there (``send x L tokens ...``), relayed hop
   by hop along ``target.route``; hop k of every route is emitted before hop k+1, sends before
   recvs, so relays never wait on a later transfer. With split shared experts every die needs
   every token: each home die's tokens are broadcast down its route tree (TP's all-gather,
   :func:`~moec.backends.interp.expand.tp.broadcast`), which also serves the routed experts;
2. **shared experts** (if the layer has them): ``split``: the die's own shared slices for all
   tokens; ``replicated``: every shared slice for the die's own tokens;
3. **routed experts**: for each expert placed on the die with tokens, in the order
   :func:`~moec.backends.interp.expand.load_order.order_work` chooses against per-channel
   demand over time (not ascending id), each micro-slice j: ``load`` into the next free slot (round robin, so the slots double-buffer DRAM
   against compute), ``gemm``/``act``/``accum`` for the expert's tokens, ``free``;
4. **y back**: each expert die returns the partial outputs of each home die's tokens as one
   ``y`` block along the route back; the home die sums them into its output. With split shared
   experts every die holds partial outputs of every token, so they are reduced up each home
   die's route tree instead (:func:`~moec.backends.interp.expand.tp.reduce_to_home`).

**Split experts** (``split``, a hybrid within the layer): an expert listed there does not run
whole on its ``placement`` die; its micro-slices are cut over all dies as TP cuts them (slice
``j`` on die ``j * D // S``, loaded from channel ``split_channels[j]``, default the one nearest
that die), and each die computes its slices for all of the expert's tokens. Its tokens travel to
every die in step 1 and every die's partial output returns with the ``y`` blocks of step 4, which
sum partial outputs anyway. Each die streams its split slices after the shared experts and before
its whole experts, so the hottest experts, which would make one die the straggler, are spread
over the package while the rest keep EP's traffic (a token of a whole expert still goes to one
die only).

Steps 1-4 take a list of (die, expert, channel, tokens) work items (:func:`expand_work`), so a
strategy that only decides differently which die serves which tokens (EPLB's replicas) can reuse
them.

Before/after on die 1 of a 2-die ring, expert 1 of ``moe0`` on die 1, tokens 2..3 homed on die 0
and routed to it::

    moe moe0                      recv x moe0 tokens 2..3 <- 0 bytes 256
                          ==>     load s0 <- ch1 moe0:e1:s0 bytes 24576
                                  gemm s0 tokens 2..3 / act ... / accum ... / free s0
                                  send y moe0 tokens 2..3 -> 0 bytes 256
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from moec.backends.interp.expand import ExpandContext, register, stream_runs, token_set, token_sets
from moec.backends.interp.expand.ep_chunked import expand_chunked, no_split, relay
from moec.backends.interp.expand.load_order import Piece, Work, order_work
from moec.backends.interp.expand.streaming import Run
from moec.backends.interp.expand.tp import broadcast, reduce_to_home
from moec.ir.stream.params import EPParams, SharedExpertParams
from moec.ir.stream.program import (
    Instr,
    TokenSet,
)
from moec.ir.target import Target


def balanced_channels(target: Target, owner: list[int], nbytes: list[int]) -> list[int]:
    """Each item, in order, on the channel that would finish its bytes first (ties: fewer hops
    from its owner die, lower id): the bytes spread over the channels by bandwidth."""
    load = {c.id: 0.0 for c in target.channels}
    out = []
    for d, n in zip(owner, nbytes, strict=True):
        c = min(
            target.channels,
            key=lambda c: ((load[c.id] + n) / c.gbps, target.hops(d, c.die), c.id),
        )
        load[c.id] += n
        out.append(c.id)
    return out


def shared_plan(ctx: ExpandContext) -> tuple[list[int], list[int]] | None:
    """(die, channel) of each shared micro-slice when the shared experts are split over the dies;
    None when the layer has none or runs them ``replicated``."""
    m, t, lay = ctx.layer, ctx.target, ctx.shared_layout
    if not m.shared_ffn or lay is None:
        return None
    params = ctx.typed(SharedExpertParams)
    if params.shared == "replicated":
        return None
    D = t.num_dies
    if params.shared_owner is not None:
        owner = list(params.shared_owner)
    else:
        owner = [j * D // lay.count for j in range(lay.count)]
    if params.shared_channels is not None:
        channels = list(params.shared_channels)
    else:
        nbytes = [ctx.slice_bytes(None, j) for j in range(lay.count)]
        channels = balanced_channels(t, owner, nbytes)
    return owner, channels


def expand_work(
    ctx: ExpandContext, work: list[Work], pieces: Sequence[Piece] = (),
    window: int | None = None, chunk: int | None = None,
) -> dict[int, list[Instr]]:  # fmt: skip
    """Steps 1-4 of the module docstring for the routed ``work`` items (each die's items in
    :func:`~moec.backends.interp.expand.load_order.order_work`'s order), the split experts'
    ``pieces`` (a die's share of an expert's slices) and the layer's shared experts; with
    ``window``, chunked dispatch (:mod:`.ep_chunked`, ``chunk`` tokens at most per item)."""
    t, m, r = ctx.target, ctx.layer, ctx.routing
    D, T = t.num_dies, r.tokens
    home = np.asarray(r.home_die, dtype=np.int64)
    out: dict[int, list[Instr]] = {d: [] for d in range(D)}
    split = shared_plan(ctx)
    work = order_work(ctx, work, split, pieces)
    if window is not None:
        return expand_chunked(ctx, work, split, window, chunk)

    homes: dict[int, tuple[TokenSet, int]] = {}
    groups: dict[tuple[int, int], np.ndarray] = {}
    group_ts: dict[tuple[int, int], TokenSet] = {}
    if split is not None:  # 1. x all-gather: every die computes shared slices for every token
        for h in range(D):
            toks = np.nonzero(home == h)[0]
            if toks.size:
                homes[h] = (token_set(toks), ctx.activation_bytes(int(toks.size)))
        broadcast(out, t, m.name, homes)
    else:  # 1. x out: per (home, expert die) the distinct tokens needed there
        needs = [(d, toks) for d, _, _, toks in work] + [(p[0], p[3]) for p in pieces]
        parts = [(d, toks[home[toks] != d]) for d, toks in needs]
        if parts:
            pd = np.concatenate([np.full(p.size, d, dtype=np.int64) for d, p in parts])
            pt = np.concatenate([p for _, p in parts]).astype(np.int64)
            key = np.unique((home[pt] * D + pd) * T + pt)
            hd, tok = key // T, key % T
            cut = np.nonzero(np.diff(hd))[0] + 1
            for part_hd, part_t in zip(np.split(hd, cut), np.split(tok, cut), strict=True):
                if part_hd.size:
                    c = int(part_hd[0])
                    groups[(c // D, c % D)] = part_t
        group_ts = dict(zip(groups, token_sets(list(groups.values())), strict=True))
        x_routes = [
            (t.route(h, d), group_ts[(h, d)], ctx.activation_bytes(int(toks.size)))
            for (h, d), toks in sorted(groups.items())
        ]
        relay(out, x_routes, m.name, "x")

    # 2. shared experts (each die's runs are collected here and streamed after step 3)
    runs: defaultdict[int, list[Run]] = defaultdict(list)
    if split is not None:
        owner, channels = split
        everyone = TokenSet.span(0, T)
        for j, d in enumerate(owner):
            runs[d].append((None, channels[j], everyone, [j]))
    elif m.shared_ffn and ctx.shared_layout is not None:
        for d in range(D):
            own = np.nonzero(home == d)[0]
            if own.size:
                ch = t.nearest_channel(d).id
                runs[d].append((None, ch, token_set(own), range(ctx.shared_layout.count)))

    # 3. routed experts: each die's share of the split ones, then its whole ones
    for (d, e, ch, _, js), ts in zip(pieces, token_sets([p[3] for p in pieces]), strict=True):
        runs[d].append((e, ch, ts, list(js)))
    every = range(ctx.layout.count)
    for (d, e, ch, _), ts in zip(work, token_sets([w[3] for w in work]), strict=True):
        runs[d].append((e, ch, ts, every))
    for d, die_runs in runs.items():
        stream_runs(out[d], ctx, ctx.slots_of(d), [0], die_runs)

    # 4. y back to the home dies
    if split is not None:
        reduce_to_home(out, t, m.name, homes)
    else:
        y_routes = [
            (t.route(d, h), group_ts[(h, d)], ctx.activation_bytes(int(toks.size)))
            for (h, d), toks in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        ]
        relay(out, y_routes, m.name, "y")
    return out


@register("ep")
def expand(ctx: ExpandContext) -> dict[int, list[Instr]]:
    t, m, r = ctx.target, ctx.layer, ctx.routing
    D, E = t.num_dies, m.experts
    params = ctx.typed(EPParams)
    placement = params.placement
    if params.channels is not None:
        channels = list(params.channels)
    else:
        nearest = [t.nearest_channel(d).id for d in range(D)]
        channels = [nearest[placement[e]] for e in range(E)]
    T, k = r.ids.shape
    pair_e = r.ids.reshape(-1).astype(np.int64)
    pair_t = np.repeat(np.arange(T, dtype=np.int64), k)
    pair_t, pair_e = pair_t[pair_e >= 0], pair_e[pair_e >= 0]  # -1: dropped by a skip rule
    order = np.lexsort((pair_t, pair_e))
    se, st = pair_e[order], pair_t[order]
    cut = np.nonzero(np.diff(se))[0] + 1
    work: list[Work] = []
    pieces: list[Piece] = []
    if params.window is not None:
        no_split(params.split, m.name)
    split = set(params.split or ())
    S = ctx.layout.count
    split_ch = list(params.split_channels or ())
    if not split_ch:
        split_ch = [t.nearest_channel(j * D // S).id for j in range(S)]
    for part_e, part_t in zip(np.split(se, cut), np.split(st, cut), strict=True):
        if part_e.size == 0:
            continue
        e = int(part_e[0])
        if e not in split:
            work.append((placement[e], e, channels[e], part_t))
            continue
        for d in range(D):  # TP's cut: slice j on die j * D // S, grouped by channel
            for ch in sorted({split_ch[j] for j in range(S) if j * D // S == d}):
                js = tuple(j for j in range(S) if j * D // S == d and split_ch[j] == ch)
                pieces.append((d, e, ch, part_t, js))
    return expand_work(ctx, work, pieces, params.window, params.chunk)
