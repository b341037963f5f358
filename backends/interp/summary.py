"""What the reports keep of a timing run's ops, per MoE layer, so that a run can drop its ops.

``moec bench``'s figures (:func:`moe_summary`: MoE latency, per-layer latencies, utilization,
bytes and energy of the MoE layers' ops) are sums over each layer's ops: :func:`layer_parts`
computes one :class:`LayerPart` per MoE layer of a :class:`~.timing.Timeline`, and
:func:`moe_summary` adds the parts, layer after layer. A run simulated one layer at a time
(:mod:`.layered`) keeps only the parts and the spans (:class:`RunSummary`), and gives the same
figures, bit for bit, as the same parts taken from the whole run's timeline: each part sums its
own ops in op order, and ops of one layer keep their relative order in either run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from moec.backends.interp.instr_column import InstrColumn
from moec.backends.interp.opgraph import LOAD, XFER
from moec.ir.cost.energy import die_static_energy
from moec.ir.energy import PARTS
from moec.ir.target import Target

if TYPE_CHECKING:
    from moec.backends.interp.timing import Timeline

_NBYTES = attrgetter("nbytes")


@dataclass
class LayerPart:
    """One MoE layer's share of a run: its span, and its ops' busy time per resource, DRAM and
    link bytes, and dynamic joules per part (:data:`moec.ir.energy.PARTS`)."""

    layer: int
    start: float
    end: float
    busy: np.ndarray
    dram_bytes: int
    link_bytes: int
    joules: list[float]


@dataclass
class RunSummary:
    """What a layer-by-layer run keeps instead of its ops: each MoE layer's and dense island's
    span (``(start, end)`` by index; absent: no op) and the MoE layers' parts in the order the
    layers first appear among the ops."""

    layer_spans: dict[int, tuple[float, float]] = field(default_factory=dict)
    island_spans: dict[int, tuple[float, float]] = field(default_factory=dict)
    parts: list[LayerPart] = field(default_factory=list)


def _widen(spans: dict[int, tuple[float, float]], k: int, lo: float, hi: float) -> None:
    old = spans.get(k)
    spans[k] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))


def tag_spans(
    tags: Sequence[int], start: Sequence[float], end: Sequence[float]
) -> dict[int, tuple[float, float]]:
    """Per tag (a layer or island index; -1 is none), the earliest start and latest end of its
    ops, in the order the tags first appear among the ops."""
    out: dict[int, tuple[float, float]] = {}
    # no op tagged (a part without a dense island): every entry the one -1 object, counted
    # by identity in C (``max`` compares each pair)
    if isinstance(tags, list) and tags.count(-1) == len(tags):
        return out
    tag = _column(tags, np.int64)
    ops = np.flatnonzero(tag >= 0)
    present, first = np.unique(tag[ops], return_index=True)
    s, e = _column(start, np.float64), _column(end, np.float64)
    for j in np.argsort(first, kind="stable").tolist():
        mine = ops[tag[ops] == present[j]]
        out[int(present[j])] = (float(s[mine].min()), float(e[mine].max()))
    return out


def merge_spans(into: dict[int, tuple[float, float]], more: dict[int, tuple[float, float]]) -> None:
    """Widen ``into`` by ``more`` (a later part of the same run)."""
    for k, (lo, hi) in more.items():
        _widen(into, k, lo, hi)


def layer_parts(tl: Timeline) -> list[LayerPart]:
    """One :class:`LayerPart` per MoE layer with ops in ``tl``, in the order the layers first
    appear among the ops."""
    layer = _column(tl.layer, np.int64)
    in_moe = layer >= 0
    top = int(layer.max(initial=-1))
    if top >= 0 and int(layer.min(initial=top, where=in_moe)) == top:
        return [_one_layer(tl, top, layer, in_moe)]  # a part's one layer (a layered run's)
    return _layers(tl, layer)


def _one_layer(tl: Timeline, k: int, layer: np.ndarray, mine: np.ndarray) -> LayerPart:
    """:func:`_layers`'s part for the one MoE layer ``k`` of ``tl`` (``mine``: its ops, a
    mask), its ops picked by masks over whole columns (one pass each) rather than gathered
    from the layer's ops and picked again: the same ops in the same (op) order, so the same
    sums."""
    t = tl.target
    D, C = t.num_dies, len(t.channels)
    start, end, kind, res = _op_columns(tl)
    P = len(PARTS)
    joules = [0.0] * P
    if tl.energy is not None:
        c_ops, _, c_part, c_j = tl.energy.rows()
        on = mine[c_ops]  # the charges of the layer's ops
        if on.all():
            acc = np.bincount(c_part, weights=c_j, minlength=P)
        else:
            acc = np.bincount(c_part[on], weights=c_j[on], minlength=P)
        joules = acc.tolist()
    held = np.flatnonzero(mine & (res >= 0))  # the ops holding a resource
    busy = np.bincount(res[held], weights=(end - start)[held], minlength=tl.num_resources)
    moves = mine & ((kind == LOAD) | (kind == XFER))
    on_wire = (D <= res) & (res < D + C + len(t.links))  # the ops holding a channel or link
    if not on_wire.any(where=~moves):
        # every op holding a channel or a link is a load or transfer of the layer (a layered
        # run's part): the layer's bytes are the run's, which the op-graph builder counted per
        # read and transfer, so no instruction is made or read for them
        # (test_one_layer_bytes_are_its_ops_bytes)
        dram, link = sum(tl.dram_bytes), sum(tl.link_bytes.values())
    else:
        moved = np.flatnonzero(moves)
        dram, link = _moved_bytes(tl, moved, res[moved], D, C)
    lo = float(start.min(where=mine, initial=np.inf))
    hi = float(end.max(where=mine, initial=-np.inf))
    return LayerPart(k, lo, hi, busy, dram, link, joules)


def _moved_bytes(
    tl: Timeline, moved: np.ndarray, held: np.ndarray, D: int, C: int
) -> tuple[int, int]:  # fmt: skip
    """The DRAM and link bytes of the loads and transfers ``moved`` (holding ``held``)."""
    nbytes = _nbytes(tl.instr, moved.tolist())
    dram = int(nbytes[(D <= held) & (held < D + C)].sum())
    link = int(nbytes[(D + C <= held) & (held < D + C + len(tl.target.links))].sum())
    return dram, link


def _layers(tl: Timeline, layer: np.ndarray) -> list[LayerPart]:
    """:func:`layer_parts` for any number of layers: each layer's ops gathered in op order (a
    stable sort by layer)."""
    t = tl.target
    D, C = t.num_dies, len(t.channels)
    start, end, kind, res = _op_columns(tl)
    moe = np.flatnonzero(layer >= 0)
    tags = layer[moe]
    present, first = np.unique(tags, True)
    # each layer's joules per part: its ops' charges added in charge order (np.bincount adds
    # in row order, as the charges were made, and as np.add.at did)
    P = len(PARTS)
    rows = int(present.max()) + 1 if present.size else 0
    acc: np.ndarray = np.zeros((rows, P))
    if tl.energy is not None and present.size:
        c_ops, _, c_part, c_j = tl.energy.rows()
        c_layer = layer[c_ops]
        mine = c_layer >= 0
        cell = c_layer[mine] * P + c_part[mine]
        acc = np.bincount(cell, weights=c_j[mine], minlength=rows * P).reshape(rows, P)
    joules: dict[int, list[float]] = {int(k): acc[k].tolist() for k in present}
    # each layer's ops in op order (a stable sort by layer)
    ops_by = moe[np.argsort(tags, kind="stable")]
    op_cut = np.searchsorted(layer[ops_by], present, side="left").tolist()
    op_cut.append(ops_by.size)
    dur = end - start
    parts = []
    for j in np.argsort(first, kind="stable").tolist():
        k = int(present[j])
        ops = ops_by[op_cut[j] : op_cut[j + 1]]
        mine = ops[res[ops] >= 0]  # the ops holding a resource
        busy = np.bincount(res[mine], weights=dur[mine], minlength=tl.num_resources)
        moved = ops[(kind[ops] == LOAD) | (kind[ops] == XFER)]
        dram, link = _moved_bytes(tl, moved, res[moved], D, C)
        parts.append(
            LayerPart(
                k, float(start[ops].min()), float(end[ops].max()), busy, dram, link, joules[k]
            )
        )
    return parts


def _nbytes(instrs: list[Any], ops: list[int]) -> np.ndarray:
    """The ``nbytes`` of ``instrs[op]`` for each of ``ops`` (0 for one without: none, or no
    such field), read by one ``map`` in C when every one has it (the usual case): each
    instruction is visited once (they are scattered in memory: a visit is a cache miss); a
    kernel op's read from its records (:meth:`.instr_column.InstrColumn.nbytes`)."""
    if isinstance(instrs, InstrColumn):
        return instrs.nbytes(ops, _of)
    return _of(list(map(instrs.__getitem__, ops)))


def _of(objs: list[Any]) -> np.ndarray:
    """The ``nbytes`` of each of ``objs`` (0 for one without)."""
    try:
        return np.fromiter(map(_NBYTES, objs), np.int64, len(objs))
    except AttributeError:
        return np.fromiter((getattr(i, "nbytes", 0) for i in objs), np.int64, len(objs))


def _op_columns(tl: Timeline) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``tl``'s per-op start, end, kind and resource as arrays."""
    return (
        _column(tl.start, np.float64), _column(tl.end, np.float64),
        _column(tl.kind, np.int64), _column(tl.res, np.int64),
    )  # fmt: skip


def _column(values: Sequence[Any] | np.ndarray, dtype: type) -> np.ndarray:
    """A per-op column as an array (one already an array of ``dtype`` is used as it is)."""
    if isinstance(values, np.ndarray) and values.dtype == dtype:
        return values
    return np.fromiter(values, dtype=dtype, count=len(values))


def moe_summary(parts: list[LayerPart], t: Target, has_energy: bool = True) -> dict[str, Any]:
    """Latency, per-layer latencies, utilization, bytes and energy of the MoE layers (the
    ``moe_metrics`` of ``moec bench``) from their parts: sums over the parts in their order."""
    D, C, links = t.num_dies, len(t.channels), len(t.links)
    latency = sum(p.end - p.start for p in parts)
    scale = 1.0 / latency if latency > 0 else 0.0
    busy = np.zeros(parts[0].busy.size if parts else D + C + links)
    dram = link = 0
    for p in parts:
        busy = busy + p.busy
        dram += p.dram_bytes
        link += p.link_bytes
    energy: dict[str, float] = {}
    if has_energy:
        energy = dict.fromkeys(PARTS, 0.0)
        for p in parts:
            for k, name in enumerate(PARTS):
                energy[name] += p.joules[k]
        energy["static"] = sum(die_static_energy(t, d, latency) for d in range(D))

    def mean(a: np.ndarray) -> float:
        return round(float(a.mean()) * scale, 6) if a.size else 0.0

    return {
        "latency_s": latency,
        "layers_s": [p.end - p.start for p in sorted(parts, key=lambda p: p.layer)],
        "utilization": {
            "compute": mean(busy[:D]),
            "dram": mean(busy[D : D + C]),
            "links": mean(busy[D + C : D + C + links]),
        },
        "dram_bytes": int(dram),
        "link_bytes": int(link),
        "energy_breakdown_j": energy,
    }
