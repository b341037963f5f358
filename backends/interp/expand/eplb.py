"""EPLB (``strategy eplb``): expert parallelism over replicas of the hot experts.

Parameters read from the runtime policy: ``replicas`` (per expert, the dies holding a replica,
required) and ``channels`` (per expert, the DRAM channel of each replica; default the channel
nearest to the replica's die).

The one decision made at run time is which replica serves which token
(:func:`split_tokens`): the expert's tokens are divided into quotas that differ by at most one
(replicas in listed order get the larger ones), a token whose home die holds a replica goes there
while that replica has quota left, and every other token, in ascending order, to the replica with
quota left that is fewest hops from its home (ties: the lower die). Then each (expert, replica)
with tokens runs as an expert does in EP (:mod:`.ep`): inputs sent from the home dies, the
replica's die streams the expert's micro-slices from its channel and computes, the partial
outputs go back to the home dies; shared experts are split across the dies and loaded once per
iteration, as EP does (:func:`.ep.expand_work`).
"""

from __future__ import annotations

import numpy as np

from moec.backends.interp.expand import ExpandContext, register
from moec.backends.interp.expand.ep import expand_work
from moec.ir.stream.params import EPLBParams
from moec.ir.stream.program import Instr
from moec.ir.target import Target


def split_tokens(
    tokens: list[int], home: list[int], dies: list[int], target: Target
) -> dict[int, list[int]]:
    """Which tokens (ascending) each replica die serves; see the module docstring."""
    n, r = len(tokens), len(dies)
    quota = {d: n // r + (1 if i < n % r else 0) for i, d in enumerate(dies)}
    out: dict[int, list[int]] = {d: [] for d in dies}
    rest = []
    for t, h in zip(tokens, home, strict=True):
        if h in quota and quota[h] > 0:
            out[h].append(t)
            quota[h] -= 1
        else:
            rest.append((t, h))
    # per home die, the replicas fewest hops first (ties: the lower die): a token goes to the
    # first with quota left (a route per home and replica, not per token)
    nearest: dict[int, list[int]] = {}
    for t, h in rest:
        order = nearest.get(h)
        if order is None:
            order = nearest[h] = sorted(dies, key=lambda d: (target.hops(h, d), d))
        d = next(d for d in order if quota[d] > 0)
        out[d].append(t)
        quota[d] -= 1
    return {d: sorted(ts) for d, ts in out.items()}


def _replicas(ctx: ExpandContext) -> tuple[list[list[int]], list[list[int]]]:
    """Per expert, its replicas' dies and each replica's channel (default: nearest its die)."""
    params = ctx.typed(EPLBParams)
    replicas = [list(ds) for ds in params.replicas]
    if params.channels is None:
        t = ctx.target
        return replicas, [[t.nearest_channel(d).id for d in ds] for ds in replicas]
    return replicas, [list(c) for c in params.channels]


@register("eplb")
def expand(ctx: ExpandContext) -> dict[int, list[Instr]]:
    t, r = ctx.target, ctx.routing
    replicas, channels = _replicas(ctx)
    T, k = r.ids.shape
    home = np.asarray(r.home_die, dtype=np.int64)
    pair_e = r.ids.reshape(-1).astype(np.int64)
    pair_t = np.repeat(np.arange(T, dtype=np.int64), k)
    pair_t, pair_e = pair_t[pair_e >= 0], pair_e[pair_e >= 0]  # -1: dropped by a skip rule
    # the replica serving each (token, expert) pair
    order = np.lexsort((pair_t, pair_e))
    se, st = pair_e[order], pair_t[order]
    cut = np.nonzero(np.diff(se))[0] + 1
    work: list[tuple[int, int, int, np.ndarray]] = []  # (die, expert, channel, tokens)
    for part_e, part_t in zip(np.split(se, cut), np.split(st, cut), strict=True):
        if part_e.size == 0:
            continue
        e = int(part_e[0])
        if len(replicas[e]) == 1:  # one replica serves every token (split_tokens' answer)
            work.append((replicas[e][0], e, channels[e][0], part_t))
            continue
        toks = part_t.tolist()
        split = split_tokens(toks, home[part_t].tolist(), replicas[e], t)
        for i, d in enumerate(replicas[e]):
            if split[d]:
                work.append((d, e, channels[e][i], np.asarray(split[d], dtype=np.int64)))

    return expand_work(ctx, work)
