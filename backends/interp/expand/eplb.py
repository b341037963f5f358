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
from moec.ir.errors import ProgramError
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
    for t, h in rest:
        d = min((d for d in dies if quota[d] > 0), key=lambda d: (target.hops(h, d), d))
        out[d].append(t)
        quota[d] -= 1
    return {d: sorted(ts) for d, ts in out.items()}


def _replicas(ctx: ExpandContext) -> tuple[list[list[int]], list[list[int]]]:
    t, E = ctx.target, ctx.layer.experts
    where = ctx.policy.loc or ctx.where
    raw = ctx.policy.params.get("replicas")

    def dies_ok(v: object) -> bool:
        return (
            isinstance(v, list) and len(v) >= 1 and len(set(v)) == len(v)
            and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < t.num_dies for d in v)
        )  # fmt: skip

    if not isinstance(raw, list) or len(raw) != E or not all(dies_ok(v) for v in raw):
        raise ProgramError(
            f"runtime {ctx.layer.name}: param replicas must be {E} lists of distinct dies in "
            f"0..{t.num_dies - 1}, found {raw!r}",
            where,
        )
    replicas = [list(v) for v in raw]  # type: ignore[union-attr]
    chans = ctx.policy.params.get("channels")
    if chans is None:
        return replicas, [[t.nearest_channel(d).id for d in ds] for ds in replicas]
    ok = isinstance(chans, list) and len(chans) == E and all(
        isinstance(c, list) and len(c) == len(ds)
        and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < len(t.channels) for x in c)
        for c, ds in zip(chans, replicas, strict=False)
    )  # fmt: skip
    if not ok:
        raise ProgramError(
            f"runtime {ctx.layer.name}: param channels must give a channel per replica, "
            f"found {chans!r}",
            where,
        )
    return replicas, [list(c) for c in chans]  # type: ignore[union-attr]


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
        toks = part_t.tolist()
        split = split_tokens(toks, home[part_t].tolist(), replicas[e], t)
        for i, d in enumerate(replicas[e]):
            if split[d]:
                work.append((d, e, channels[e][i], np.asarray(split[d], dtype=np.int64)))

    return expand_work(ctx, work)
