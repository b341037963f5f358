"""The order in which TP's dies stream their micro-slices (``param order`` of ``strategy tp``).

Every TP die owns the same share of every activated expert, so its stream is one slice per
(expert, owned slice) and the order decides when its compute and its channel are busy. A
slice's load holds the channel for the same time whatever its expert, but its compute grows
with the expert's tokens: in ascending expert id a skewed batch gives runs of hot slices whose
compute outlasts their loads (the die's slots fill and its channel idles) and runs of cold
ones whose loads outlast their compute (the die idles). Under Zipf 1.6 on Yuan2.0-M32, 256
tokens, fsedp-2x2, expert 26 takes 186 of the 512 pairs and expert 28 108.

``natural`` (the default): ascending expert id, each expert's slices in ascending index.
``balanced``: a list schedule against the die's own backlog: items (a slice, or under chunked
dispatch a chunk) ranked by compute minus load (the cost model's
:func:`~moec.ir.cost.slice_compute_time` and :func:`~moec.ir.cost.dram_occupancy`; ties: the
natural order); while the compute is not behind its loads the hottest item left goes next,
else the coldest, and the backlog (compute still queued when the next load lands, never
negative: a die cannot bank idle time) advances by the item's compute minus its load. Hot
slices are so spread among cold ones, each followed by enough cold ones for the compute to
catch up. The same bytes, the same tokens per slice, the same sums (in another order).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moec.ir.stream.params import TP_ORDERS

ORDERS = TP_ORDERS


def expert_groups(ids: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Each activated expert of routing ``ids`` (``[T, k]``, -1: dropped) with its tokens
    (ascending), by ascending expert id."""
    T, k = ids.shape
    pair_e = ids.reshape(-1).astype(np.int64)
    pair_t = np.repeat(np.arange(T, dtype=np.int64), k)
    pair_t, pair_e = pair_t[pair_e >= 0], pair_e[pair_e >= 0]  # -1: dropped by a skip rule
    keep = np.lexsort((pair_t, pair_e))
    se, st = pair_e[keep], pair_t[keep]
    cut = np.nonzero(np.diff(se))[0] + 1
    return [
        (int(part_e[0]), part_t)
        for part_e, part_t in zip(np.split(se, cut), np.split(st, cut), strict=True)
        if part_e.size
    ]


def balanced(costs: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of items ``(compute_s, load_s)`` in the ``balanced`` order (module docstring).

    >>> balanced([(3.0, 1.0), (0.5, 1.0), (0.5, 1.0), (3.0, 1.0), (0.2, 1.0)])
    [0, 4, 2, 1, 3]
    """
    rank = sorted(range(len(costs)), key=lambda i: (costs[i][1] - costs[i][0], i))
    lo, hi = 0, len(rank) - 1
    backlog = 0.0
    out: list[int] = []
    while lo <= hi:
        if backlog <= 0.0:
            i, lo = rank[lo], lo + 1
        else:
            i, hi = rank[hi], hi - 1
        backlog = max(0.0, backlog + costs[i][0] - costs[i][1])
        out.append(i)
    return out
