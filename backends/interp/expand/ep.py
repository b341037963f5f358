"""Expert parallelism (``strategy ep``): whole experts on dies, tokens travel to them.

Parameters read from the runtime policy: ``placement`` (required, the die of each expert) and
``channels`` (optional, the DRAM channel holding each expert; default: the channel nearest to
the expert's die, where the EP lowering declares the expert's tensors).

For one routing the expansion emits, per die, in this order:

1. **x out**: each home die sends, once per expert die, the activations of its tokens routed to
   any expert there (``send x L tokens ...``), relayed hop by hop along ``target.route``; hop k
   of every route is emitted before hop k+1, sends before recvs, so relays never wait on a later
   transfer;
2. **shared experts** (if the layer has them): every die streams the shared micro-slices from its
   nearest channel and computes them for its own tokens;
3. **routed experts**: for each expert placed on the die with tokens (ascending id), each
   micro-slice j: ``load`` into the next free slot (round robin, so the slots double-buffer DRAM
   against compute), ``gemm``/``act``/``accum`` for the expert's tokens, ``free``;
4. **y back**: each expert die returns the partial outputs of each home die's tokens as one
   ``y`` block along the route back; the home die sums them into its output.

Before/after on die 1 of a 2-die ring, expert 1 of ``moe0`` on die 1, tokens 2..3 homed on die 0
and routed to it::

    moe moe0                      recv x moe0 tokens 2..3 <- 0 bytes 256
                          ==>     load s0 <- ch1 moe0:e1:s0 bytes 24576
                                  gemm s0 tokens 2..3 / act ... / accum ... / free s0
                                  send y moe0 tokens 2..3 -> 0 bytes 256
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from moec.backends.interp.expand import ExpandContext, register, token_set
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
    SliceRef,
    TokenSet,
)


def _relay(
    out: dict[int, list[Instr]],
    routes: list[tuple[list[int], TokenSet, int]],
    layer: str,
    which: str,
) -> None:
    """Move each ``(path, tokens, nbytes)`` block hop by hop: pass k = all hop-k sends, then recvs."""
    hops = max((len(path) - 1 for path, _, _ in routes), default=0)
    for k in range(hops):
        live = [(path[k], path[k + 1], ts, n) for path, ts, n in routes if len(path) > k + 1]
        for a, b, ts, n in live:
            out[a].append(Send(peer=b, nbytes=n, block=Block(layer, which, ts)))  # type: ignore[arg-type]
        for a, b, ts, n in live:
            out[b].append(Recv(peer=a, nbytes=n, block=Block(layer, which, ts)))  # type: ignore[arg-type]


def _stream_slices(
    out: list[Instr], ctx: ExpandContext, die: int, expert: int | None, channel: int,
    ts: TokenSet, cursor: list[int],
) -> None:  # fmt: skip
    """Load, compute and free every micro-slice of ``expert`` on ``die`` for tokens ``ts``."""
    slots = ctx.slots_of(die)
    lay = ctx.layout if expert is not None else ctx.shared_layout
    assert lay is not None
    name = ctx.layer.name
    for j in range(lay.count):
        s = slots[cursor[0] % len(slots)]
        cursor[0] += 1
        out.append(Load(s, channel, SliceRef(name, expert, j), ctx.slice_bytes(expert, j)))
        out.append(Gemm(s, ts))
        out.append(Act(s, ts))
        out.append(Accum(s, ts))
        out.append(Free(s))


@register("ep")
def expand(ctx: ExpandContext) -> dict[int, list[Instr]]:
    t, m, r = ctx.target, ctx.layer, ctx.routing
    D, E = t.num_dies, m.experts
    placement = ctx.int_list("placement", E, 0, D)
    if "channels" in ctx.policy.params:
        channels = ctx.int_list("channels", E, 0, len(t.channels))
    else:
        nearest = [t.nearest_channel(d).id for d in range(D)]
        channels = [nearest[placement[e]] for e in range(E)]
    place = np.asarray(placement, dtype=np.int64)
    T, k = r.ids.shape
    home = np.asarray(r.home_die, dtype=np.int64)
    pair_e = r.ids.reshape(-1).astype(np.int64)
    pair_t = np.repeat(np.arange(T, dtype=np.int64), k)
    pair_t, pair_e = pair_t[pair_e >= 0], pair_e[pair_e >= 0]  # -1: dropped by a skip rule
    pair_d = place[pair_e]
    pair_h = home[pair_t]
    out: dict[int, list[Instr]] = {d: [] for d in range(D)}

    # 1. x out: per (home, expert die) the distinct tokens needed there
    remote = pair_d != pair_h
    key = np.unique((pair_h[remote] * D + pair_d[remote]) * T + pair_t[remote])
    groups: dict[tuple[int, int], np.ndarray] = {}
    if key.size:
        hd, tok = key // T, key % T
        cut = np.nonzero(np.diff(hd))[0] + 1
        for part_hd, part_t in zip(np.split(hd, cut), np.split(tok, cut), strict=True):
            c = int(part_hd[0])
            groups[(c // D, c % D)] = part_t
    x_routes = []
    for (h, d), toks in sorted(groups.items()):
        x_routes.append((t.route(h, d), token_set(toks), ctx.activation_bytes(int(toks.size))))
    _relay(out, x_routes, m.name, "x")

    # 2. shared experts, data parallel on each die's own tokens
    cursors: defaultdict[int, list[int]] = defaultdict(lambda: [0])
    if m.shared_ffn and ctx.shared_layout is not None:
        for d in range(D):
            own = np.nonzero(home == d)[0]
            if own.size:
                ch = t.nearest_channel(d).id
                _stream_slices(out[d], ctx, d, None, ch, token_set(own), cursors[d])

    # 3. routed experts, on their die, ascending id
    order = np.lexsort((pair_t, pair_e))
    se, st = pair_e[order], pair_t[order]
    cut = np.nonzero(np.diff(se))[0] + 1
    for part_e, part_t in zip(np.split(se, cut), np.split(st, cut), strict=True):
        if part_e.size == 0:
            continue
        e = int(part_e[0])
        d = placement[e]
        _stream_slices(out[d], ctx, d, e, channels[e], token_set(part_t), cursors[d])

    # 4. y back: per (expert die, home) the tokens whose partial sums live on the expert die
    y_routes = []
    for (h, d), toks in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        y_routes.append((t.route(d, h), token_set(toks), ctx.activation_bytes(int(toks.size))))
    _relay(out, y_routes, m.name, "y")
    return out
