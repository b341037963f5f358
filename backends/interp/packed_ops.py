"""The op graph's ``kind``, ``dur`` and ``res`` of the ops a compiled relay run added, kept as
the kernel's arrays.

A compiled relay run (:mod:`.relay_compiled`) adds tens of thousands of ops at once, its
columns numpy arrays. Turned into Python numbers for the graph's lists (``.tolist()``, a list's
``+=``), they were turned back into arrays by the event loop (``np.fromiter``): about 4 ms per
100k ops and column, a whole-model FSE-DP run's 60 parts of ~100k ops each. :func:`pack` keeps
the arrays (the graph's ``packed``: per run its first op and its three arrays) and puts cheap
placeholders in the lists, so op ids and ``len(g.kind)`` stay what they were; no builder reads
those three columns back while building (they are appended, never read or set). Once the
graph is built, :func:`columns` gives the three columns as arrays (the lists' runs between the
packed ones converted, the packed arrays copied in; :func:`take_columns` also drops the lists,
for their last reader) and :func:`unpack` writes the packed values into the lists (for a caller
that wants lists: the same numbers as the lists had before).

Placeholders are -1 for ``kind`` (no kind: a stray reader fails), NaN for ``dur``, -1 for
``res``.
"""

from __future__ import annotations

import math
from itertools import repeat
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from moec.backends.interp.opgraph import OpGraph


def pack(g: OpGraph, kind: np.ndarray, dur: np.ndarray, res: np.ndarray) -> None:
    """Append ops of ``kind``, ``dur`` and ``res`` (arrays of one length) to ``g``'s columns,
    as arrays (module doc); the caller appends the other columns. The arrays are copied (a
    kernel's are views of buffers sized for the most ops a run could add)."""
    n = len(kind)
    g.packed.append((len(g.kind), kind.copy(), dur.copy(), res.copy()))
    g.kind += repeat(-1, n)
    g.dur += repeat(math.nan, n)
    g.res += repeat(-1, n)


def columns(g: OpGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``g``'s ``kind``, ``dur`` and ``res`` as int64, float64 and int64 arrays."""
    return (
        _column(g.kind, g.packed, 1, np.int64),
        _column(g.dur, g.packed, 2, np.float64),
        _column(g.res, g.packed, 3, np.int64),
    )


def take_columns(g: OpGraph) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`columns`, for their last reader: ``g``'s three lists and packed runs are dropped
    (``g.kind`` and the others no longer exist), so their memory is free before the event loop
    and the SRAM accounting run (a DeepSeek-V3 fsedp run's peak RSS 13-19 MB lower)."""
    out = columns(g)
    del g.kind, g.dur, g.res
    g.packed = []
    return out


def _column(values: list[Any], packed: list[Any], k: int, dtype: type) -> np.ndarray:
    """One column: the list's stretches between packed runs converted, the runs copied in."""
    n = len(values)
    if not packed:
        return np.fromiter(values, dtype, n)
    out: np.ndarray = np.empty(n, dtype)
    at = 0
    for run in packed:
        first, arr = run[0], run[k]
        if first > at:
            out[at:first] = np.fromiter(values[at:first], dtype, first - at)
        at = first + len(arr)
        out[first:at] = arr
    if at < n:
        out[at:] = np.fromiter(values[at:], dtype, n - at)
    return out


def unpack(g: OpGraph) -> None:
    """Write the packed runs' values into ``g``'s lists (Python numbers, as ``.tolist()`` gives
    them) and forget the runs."""
    for first, kind, dur, res in g.packed:
        end = first + len(kind)
        g.kind[first:end] = kind.tolist()
        g.dur[first:end] = dur.tolist()
        g.res[first:end] = res.tolist()
    g.packed = []
