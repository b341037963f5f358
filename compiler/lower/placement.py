"""Expert placement plans: popularity-aware placement (Hydra) and replication with balanced
packing (DeepSeek's EPLB).

Decide, then rewrite: these are plain functions from per-expert loads (routed-token counts of a
calibration run or a routing trace) to a plan; the ``hydra`` and ``eplb`` lowerings write the plan
into the layer's runtime policy. Every choice has an explicit tie-break (lower expert id, lower die
id), so the same loads give the same plan.

Popularity-aware placement, greedy longest-processing-time (LPT): experts by decreasing load, each
to the die with the least load so far (among dies with a free expert slot when ``max_per_die`` is
set)::

    >>> lpt_placement([8, 1, 5, 4], num_dies=2)
    [0, 0, 1, 1]

EPLB: give one more replica, ``extra`` times, to the expert with the highest load per replica
(:func:`replicate`), then pack the replicas onto dies, heaviest first, each to the least-loaded die
that has room and does not hold that expert yet (:func:`pack_replicas`)::

    >>> eplb_plan([12, 2, 2, 4], num_dies=2, extra=2)
    [[0, 1], [0], [1], [0, 1]]
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from moec.ir.errors import ScheduleError
from moec.ir.target import Target


def _check(load: Sequence[float], num_dies: int) -> list[float]:
    if num_dies < 1:
        raise ScheduleError(f"placement needs at least one die, found {num_dies}")
    values = [float(v) for v in load]
    if not values:
        raise ScheduleError("placement needs at least one expert, found none")
    bad = [i for i, v in enumerate(values) if not math.isfinite(v) or v < 0]
    if bad:
        raise ScheduleError(
            f"expert load must be a finite number >= 0, expert {bad[0]} has {values[bad[0]]}"
        )
    return values


def lpt_placement(
    load: Sequence[float], num_dies: int, *, max_per_die: int | None = None
) -> list[int]:
    """The die of each expert, balancing the summed load per die (greedy LPT).

    Experts go in order of decreasing load (ties: lower id first) to the die with the least load
    so far; ties go to the die holding fewer experts, then to the lower die id. With
    ``max_per_die`` a die takes at most that many experts (``ceil(E / num_dies)`` keeps expert
    memory as even as round-robin EP does).
    """
    values = _check(load, num_dies)
    if max_per_die is not None and max_per_die * num_dies < len(values):
        raise ScheduleError(
            f"{len(values)} experts do not fit {num_dies} dies of {max_per_die} experts each"
        )
    die_load = [0.0] * num_dies
    count = [0] * num_dies
    out = [0] * len(values)
    for e in sorted(range(len(values)), key=lambda i: (-values[i], i)):
        open_dies = [d for d in range(num_dies) if max_per_die is None or count[d] < max_per_die]
        d = min(open_dies, key=lambda x: (die_load[x], count[x], x))
        out[e] = d
        die_load[d] += values[e]
        count[d] += 1
    return out


def die_loads(load: Sequence[float], placement: Sequence[int], num_dies: int) -> list[float]:
    """Summed expert load per die under ``placement`` (die of each expert)."""
    out = [0.0] * num_dies
    for e, d in enumerate(placement):
        out[d] += float(load[e])
    return out


def replicate(load: Sequence[float], extra: int, max_replicas: int) -> list[int]:
    """Replica count per expert after ``extra`` greedy replications (EPLB's ``replicate_experts``).

    Every expert starts with one replica; each step gives one more to the expert with the highest
    load per replica (ties: lower id) that has fewer than ``max_replicas`` (a replica per die at
    most). Experts with no load are never replicated, so fewer than ``extra`` replicas may be
    added.
    """
    values = _check(load, 1)
    if extra < 0:
        raise ScheduleError(f"replica budget must be >= 0, found {extra}")
    counts = [1] * len(values)
    for _ in range(extra):
        candidates = [e for e in range(len(values)) if counts[e] < max_replicas and values[e] > 0]
        if not candidates:
            break
        best = max(candidates, key=lambda e: (values[e] / counts[e], -e))
        counts[best] += 1
    return counts


def pack_replicas(load: Sequence[float], counts: Sequence[int], num_dies: int) -> list[list[int]]:
    """The dies holding each expert's replicas (sorted), packing replicas onto dies evenly.

    Replicas (each carrying ``load / count`` of its expert) go heaviest first (ties: lower expert
    id) to the least-loaded die (ties: fewer replicas, lower id) that holds fewer than
    ``ceil(replicas / num_dies)`` replicas and no replica of the same expert. When every die with
    room already holds the expert, the room limit gives way (never the one-replica-per-die rule).
    """
    values = _check(load, num_dies)
    if len(counts) != len(values):
        raise ScheduleError(f"{len(counts)} replica counts for {len(values)} experts")
    bad = [e for e, c in enumerate(counts) if not 1 <= c <= num_dies]
    if bad:
        raise ScheduleError(
            f"expert {bad[0]} has {counts[bad[0]]} replicas, expected 1..{num_dies} (one per die)"
        )
    room = math.ceil(sum(counts) / num_dies)
    die_load = [0.0] * num_dies
    held = [0] * num_dies
    dies: list[list[int]] = [[] for _ in values]
    items = [(values[e] / counts[e], e) for e in range(len(values)) for _ in range(counts[e])]
    for share, e in sorted(items, key=lambda it: (-it[0], it[1])):
        free = [d for d in range(num_dies) if d not in dies[e]]
        with_room = [d for d in free if held[d] < room]
        d = min(with_room or free, key=lambda x: (die_load[x], held[x], x))
        dies[e].append(d)
        die_load[d] += share
        held[d] += 1
    return [sorted(ds) for ds in dies]


def eplb_plan(load: Sequence[float], num_dies: int, extra: int) -> list[list[int]]:
    """EPLB: :func:`replicate` with a budget of ``extra`` replicas, then :func:`pack_replicas`."""
    counts = replicate(load, extra, max_replicas=num_dies)
    return pack_replicas(load, counts, num_dies)


def assign_channels(owners: Sequence[int], weights: Sequence[float], target: Target) -> list[int]:
    """The DRAM channel holding each item (an expert, replica or micro-slice) read by die
    ``owners[i]``, about ``weights[i]`` bytes per iteration, spreading the bytes over the
    channels in proportion to their bandwidth while keeping items near their die.

    Items go in order of how far their die is from any channel (dies with a channel first; ties:
    die, then heavier item, then index); each takes the nearest channel (ties: lower id) that
    stays within its share of the total (``total x channel GB/s / all GB/s``) up to half the
    item (items are lumpy: a whole expert should not leave its die for a small excess), else the
    channel
    that would finish its bytes first (ties: nearer, lower id). On a package where every die has
    its own channel and loads are even, that is each die's own channel; on the 3x3 package (4
    corner channels for 9 dies) it avoids the nearest-channel rule's pile-up on one channel.
    """
    chans = list(target.channels)
    if not chans:
        raise ScheduleError(f"target {target.name!r} has no DRAM channel")
    if len(owners) != len(weights):
        raise ScheduleError(f"{len(owners)} owners for {len(weights)} weights")
    total_bw = sum(c.gbps for c in chans)
    total = float(sum(weights))
    cap = {c.id: total * c.gbps / total_bw for c in chans}
    load = {c.id: 0.0 for c in chans}
    hops = {(d, c.id): target.hops(d, c.die) for d in set(owners) for c in chans}
    reach = {d: min(hops[(d, c.id)] for c in chans) for d in set(owners)}
    out = [0] * len(owners)
    order = sorted(range(len(owners)), key=lambda i: (reach[owners[i]], owners[i], -weights[i], i))
    for i in order:
        d, w = owners[i], float(weights[i])
        near = sorted(chans, key=lambda c: (hops[(d, c.id)], c.id))
        fit = [c for c in near if load[c.id] + w / 2 <= cap[c.id] * (1 + 1e-9)]
        best = (
            fit[0]
            if fit
            else min(near, key=lambda c: ((load[c.id] + w) / c.gbps, hops[(d, c.id)], c.id))
        )
        out[i] = best.id
        load[best.id] += w
    return out


def activation_probability(load: Sequence[float], sample_tokens: int, tokens: int) -> list[float]:
    """Chance that each expert is routed at least one of ``tokens`` tokens, from its load in a
    sample of ``sample_tokens`` tokens: ``1 - (1 - load / sample_tokens) ** tokens``."""
    if sample_tokens <= 0:
        return [1.0] * len(load)
    return [1.0 - (1.0 - min(1.0, float(v) / sample_tokens)) ** tokens for v in load]
