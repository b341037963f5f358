"""The FSE-DP scheduler's central load order: which (unit, micro-slice) dies pull next.

``natural``: unit by unit (shared experts first, then ascending expert id). ``paired``: the
expander orders the units hottest, coldest, 2nd hottest, 2nd coldest, ...; the slices of each
(hot, cold) pair interleave, so hot compute hides cold DRAM traffic slice by slice.
``balanced`` (moec's own): each next slice comes from the hottest remaining expert while the
compute issued so far lags the DRAM time issued so far, else from the coldest. The shared
experts go first, alone, in every order.
"""

from __future__ import annotations

import numpy as np

from moec.backends.interp.expand.fsedp_problem import Problem, Unit


def central_order(p: Problem) -> list[tuple[Unit, int]]:
    """(unit, slice) in the central load order: unit by unit, or with ``paired`` the two
    units of each consecutive pair slice by slice (hot, cold, hot, cold, ...)."""
    units = p.units
    out: list[tuple[Unit, int]] = []
    start = 1 if units and units[0].expert is None else 0  # shared experts go first, alone
    out += [(u, j) for u in units[:start] for j in range(len(u.slice_bytes))]
    if p.balanced:
        return out + balanced_order(units[start:], p.dram_bytes_per_s)
    step = 2 if p.paired else 1
    for k in range(start, len(units), step):
        group = units[k : k + step]
        for j in range(max(len(u.slice_bytes) for u in group)):
            out += [(u, j) for u in group if j < len(u.slice_bytes)]
    return out


def central_order_arrays(p: Problem) -> tuple[np.ndarray, np.ndarray]:
    """:func:`central_order` as two arrays, each (unit, slice) in that order: the unit's index
    in ``p.units`` and the slice (one sort, not a tuple per slice: the compiled scheduler's
    plan); ``balanced`` reads :func:`central_order`'s pairs."""
    units = p.units
    if p.balanced:
        ix = {id(u): i for i, u in enumerate(units)}
        order = central_order(p)
        return (
            np.fromiter((ix[id(u)] for u, _ in order), np.int64, len(order)),
            np.fromiter((j for _, j in order), np.int64, len(order)),
        )
    count = np.fromiter((len(u.slice_bytes) for u in units), np.int64, len(units))
    unit = np.repeat(np.arange(len(units), dtype=np.int64), count)
    j = np.arange(unit.size, dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
    start = 1 if units and units[0].expert is None else 0  # the shared experts: first, alone
    group = np.where(unit < start, -1, (unit - start) // (2 if p.paired else 1))
    by = np.lexsort((unit, j, group))  # group by group; in one, slice by slice, unit by unit
    return unit[by], j[by]


def balanced_order(units: list[Unit], bw: float) -> list[tuple[Unit, int]]:
    """Slices ordered so that compute keeps pace with DRAM all along: the next slice comes
    from the expert with the most compute per slice while the compute issued so far is
    behind the DRAM time issued so far, else from the one with the least (ties: load
    order). Compute of a slice: its slowest die; DRAM: bytes over ``bw`` (all channels'
    bandwidth, bytes per second).
    """
    heavy = [max(sum(u.compute(d, 0)) for d in u.tokens) for u in units]
    left = [len(u.slice_bytes) for u in units]
    rank = sorted(range(len(units)), key=lambda k: (-heavy[k], k))
    out: list[tuple[Unit, int]] = []
    comp = dram = 0.0
    while any(left):
        live = [k for k in rank if left[k]]
        k = live[0] if comp <= dram else live[-1]
        u = units[k]
        j = len(u.slice_bytes) - left[k]
        left[k] -= 1
        out.append((u, j))
        comp += max(sum(u.compute(d, j)) for d in u.tokens)
        dram += u.slice_bytes[j] / bw if bw > 0 else 0.0
    return out
