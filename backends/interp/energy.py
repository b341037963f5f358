"""The run's energy accounting: joules per die and per part, charged by the timing handlers.

The op-graph builder (:mod:`.opgraph`) and the timing handlers (:mod:`.timing_ops`) charge each
instruction's energy where they already know its bytes and FLOPs, with the formulas of
:mod:`moec.ir.cost.energy`; :func:`.timing.run_timing` adds static power over the makespan. A
charge goes to the die where the energy is spent:

- a DRAM read to the die the channel is attached to; a link crossing to the link's source die
  (its transmitter; the pJ/bit is the whole link's); a host-link crossing to the loading die;
- SRAM writes to the die receiving the data, SRAM reads to the die sending or computing;
- compute to the computing die; static power of a die and of its channels to that die.

Each dynamic charge also remembers the op it belongs to, so the Chrome trace can draw a power
counter per die (:func:`power_counters`) and a layer-by-layer run can give each MoE layer its
own joules (:func:`.summary.layer_parts`).
"""

from __future__ import annotations

from itertools import chain, compress, repeat
from operator import is_
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from moec.ir.cost.energy import (
    accum_energy,
    act_energy,
    dense_energy,
    die_static_energy,
    gemm_energy,
)
from moec.ir.energy import PARTS
from moec.ir.target import Target

if TYPE_CHECKING:
    from moec.backends.interp.opgraph import Builder, DieState

_INDEX = {p: k for k, p in enumerate(PARTS)}


#: One charge as the ledger logs it: (op offset from the block's first op, die, part index, joules)
Charge = tuple[int, int, int, float]


class EnergyLedger:
    """Joules per die and part (:data:`moec.ir.energy.PARTS`), and per op for the trace.

    Charges are logged, and added into the joules when the joules or the per-op charges are
    read (:meth:`flush`). A charge is logged as a *block*: a tuple of rows ``(op offset, die,
    part index, joules)`` and the op its offsets start from. The builder's memoized shapes (a
    streamed micro-slice's eight charges, a read's, a transfer's) are long-lived tuples, so a
    block is registered once, by identity, and every later charge of that shape is two list
    appends (:meth:`log`). The flush expands the blocks into rows with numpy and adds them with
    ``np.add.at``, which adds in row order: every sum is the same float as the charges added
    one by one in the order they were made (the rows keep that order)."""

    def __init__(self, num_dies: int) -> None:
        self._joules = np.zeros((num_dies, len(PARTS)))
        #: the blocks logged since the last flush: their first ops and their registered indices
        self._firsts: list[int] = []
        self._which: list[int] = []
        #: blocks logged as arrays (:meth:`log_indexed`), in turn with the lists' stretches
        #: before them: (firsts, registered indices)
        self._logged: list[tuple[np.ndarray, np.ndarray]] = []
        #: the flushed charges not yet dropped (:meth:`drop_rows`): (ops, dies, parts, joules)
        self._rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._forget_blocks()

    def _forget_blocks(self) -> None:
        """Empty the block registry (nothing logged may refer to it: right after a flush)."""
        #: how many times the registry was emptied: a registered index holds while it stays
        self.epoch = getattr(self, "epoch", -1) + 1
        #: the registered blocks (kept alive, so that their ids stay theirs) and their index by id
        self._blocks: list[tuple[Charge, ...]] = []
        self._index: dict[int, int] = {}
        #: per registered block: its rows' place in the tables, and the tables (numpy: offset,
        #: die, part, joules per row; each block's start and size), extended at a flush by the
        #: blocks registered since
        self._start: list[int] = []
        self._len: list[int] = []
        self._registered_rows = 0
        self._tables: tuple[np.ndarray, ...] = (
            np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
            np.zeros(0, np.int64), np.zeros(0, np.int64),
        )  # fmt: skip
        self._tabled = 0
        #: blocks of one-off charges, by value
        self._by_value: dict[tuple[Charge, ...], tuple[Charge, ...]] = {}
        #: :meth:`charge_indexed`'s blocks by (die, id of the parts), and those parts kept alive
        self._indexed: dict[tuple[int, int], tuple[Charge, ...]] = {}
        self._pinned: list[object] = []

    def log(self, first: int, block: tuple[Charge, ...]) -> None:
        """Charge ``block``'s rows at ops ``first + offset``. ``block`` must stay alive and
        unchanged while the ledger does (a memoized shape's tuple): it is known by its id."""
        self._firsts.append(first)
        self._which.append(self.register(block))

    def register(self, block: tuple[Charge, ...]) -> int:
        """``block``'s index, registering it if it is new (known by its id from then on, so it
        must stay alive and unchanged while the ledger does, as for :meth:`log`). A builder
        registers a memoized template's block when it makes the template, so that a run's
        :meth:`log_run` finds every block known."""
        k = self._index.get(id(block))
        return self._register(block) if k is None else k

    def _register(self, block: tuple[Charge, ...]) -> int:
        """Register ``block`` (known by its id from now on); its index."""
        k = self._index[id(block)] = len(self._blocks)
        self._blocks.append(block)
        self._start.append(self._registered_rows)
        self._len.append(len(block))
        self._registered_rows += len(block)
        return k

    def log_run(self, firsts: list[int], blocks: list[tuple[Charge, ...]]) -> None:
        """:meth:`log` of each ``(firsts[k], blocks[k])`` in turn, in one call (a run of
        streamed micro-slices: :func:`.slice_chain.slice_run`)."""
        index = self._index
        found = list(map(index.get, map(id, blocks)))  # every block known: looked up in C
        if None in found:  # some new: registered in turn (a block may come twice)
            for j in list(compress(range(len(found)), map(is_, found, repeat(None)))):
                found[j] = self.register(blocks[j])
        self._firsts += firsts
        self._which += cast("list[int]", found)

    def log_indexed(self, firsts: np.ndarray, which: np.ndarray) -> None:
        """:meth:`log` of blocks ``which`` (their :meth:`register` indices) at ops ``firsts``,
        in turn, given as int64 arrays (a compiled relay run's: :mod:`.relay_compiled`): kept
        as arrays (copied) until the flush."""
        if len(firsts):
            self._spill()
            self._logged.append((firsts.copy(), which.copy()))

    def _spill(self) -> None:
        """The blocks logged one by one so far as an array stretch (before a later one)."""
        if self._firsts:
            n = len(self._firsts)
            first = np.fromiter(self._firsts, np.int64, n)
            self._logged.append((first, np.fromiter(self._which, np.int64, n)))
            self._firsts.clear()
            self._which.clear()

    def charge(self, die: int, part: str, joules: float, op: int) -> None:
        """Add ``joules`` of ``part`` on ``die``, spent by ``op``."""
        rows = ((0, die, _INDEX[part], joules),)
        self.log(op, self._by_value.setdefault(rows, rows))

    def charge_parts(self, die: int, parts: dict[str, float], op: int) -> None:
        for part in PARTS:
            if part in parts:
                self.charge(die, part, parts[part], op)

    def charge_indexed(self, die: int, parts: tuple[tuple[int, float], ...], op: int) -> None:
        """:meth:`charge_parts` of parts given as ``(part index, joules)`` in ``PARTS`` order
        (``parts``: a memoized tuple, known by its id)."""
        key = (die, id(parts))
        rows = self._indexed.get(key)
        if rows is None:
            rows = self._indexed[key] = tuple((0, die, k, j) for k, j in parts)
            self._pinned.append(parts)
        self.log(op, rows)

    def flush(self) -> None:
        """Add the logged charges into the joules, in the order they were logged."""
        if not self._firsts and not self._logged:
            return
        if self._tabled < len(self._blocks):
            fresh = list(chain.from_iterable(self._blocks[self._tabled :]))
            cols = list(zip(*fresh, strict=True)) if fresh else [(), (), (), ()]
            off, die, part, j, start, size = self._tables
            self._tables = (
                np.concatenate([off, np.asarray(cols[0], np.int64)]),
                np.concatenate([die, np.asarray(cols[1], np.int64)]),
                np.concatenate([part, np.asarray(cols[2], np.int64)]),
                np.concatenate([j, np.asarray(cols[3], np.float64)]),
                np.asarray(self._start, np.int64), np.asarray(self._len, np.int64),
            )  # fmt: skip
            self._tabled = len(self._blocks)
        off, die, part, j, start, size = self._tables
        self._spill()
        if len(self._logged) == 1:
            first, which = self._logged[0]
        else:
            first = np.concatenate([f for f, _ in self._logged])
            which = np.concatenate([w for _, w in self._logged])
        self._logged.clear()
        n = size[which]
        # each logged block's rows: its registered rows in turn (a block's first row minus
        # where it lands, repeated over its rows, plus the landing place)
        row = np.arange(int(n.sum())) + np.repeat(start[which] - (np.cumsum(n) - n), n)
        rows = (np.repeat(first, n) + off[row], die[row], part[row], j[row])
        np.add.at(self._joules.reshape(-1), rows[1] * len(PARTS) + rows[2], rows[3])
        self._rows.append(rows)

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every charge not dropped, in charge order: (ops, dies, part indices, joules)."""
        self.flush()
        if not self._rows:
            return (np.zeros(0, np.int64),) * 3 + (np.zeros(0),)  # type: ignore[return-value]
        if len(self._rows) > 1:
            ops, dies, parts, js = (np.concatenate(list(c)) for c in zip(*self._rows, strict=True))
            self._rows = [(ops, dies, parts, js)]
        return self._rows[0]

    def drop_rows(self) -> None:
        """Forget the per-op charges (the joules keep them) and the registered blocks: a
        layer-by-layer run's part is done, and the next part's shapes are its own."""
        self.flush()
        self._rows.clear()
        self._forget_blocks()

    @property
    def by_op(self) -> list[tuple[int, int, int, float]]:
        """``(op, die, part index, joules)`` of every dynamic charge not dropped, in charge
        order."""
        ops, dies, parts, js = self.rows()
        return list(zip(ops.tolist(), dies.tolist(), parts.tolist(), js.tolist(), strict=True))

    @property
    def joules(self) -> list[list[float]]:
        """Joules per die and part so far (a copy)."""
        self.flush()
        return self._joules.tolist()

    def add_static(self, target: Target, span_s: float) -> None:
        """Static power of every die (and its channels) over ``span_s`` seconds."""
        self.flush()
        for d in range(self._joules.shape[0]):
            self._joules[d, _INDEX["static"]] += die_static_energy(target, d, span_s)

    # --- totals ---
    def breakdown(self) -> dict[str, float]:
        """Joules per part over all dies."""
        joules = self.joules
        return {p: sum(row[k] for row in joules) for k, p in enumerate(PARTS)}

    def per_die(self) -> list[dict[str, float]]:
        """Joules per part of each die."""
        return [{p: row[k] for k, p in enumerate(PARTS)} for row in self.joules]

    @property
    def total(self) -> float:
        return sum(self.breakdown().values())

    def of_ops(self, ops: Any, target: Target, span_s: float) -> dict[str, float]:
        """Joules per part of the ops ``op`` for which ``ops[op]`` is true (e.g. the MoE
        layers' ops), plus static power over ``span_s`` (their time)."""
        out = dict.fromkeys(PARTS, 0.0)
        for op, _, k, j in self.by_op:
            if ops[op]:
                out[PARTS[k]] += j
        dies = self._joules.shape[0]
        out["static"] = sum(die_static_energy(target, d, span_s) for d in range(dies))
        return out


def slice_energy_parts(
    t: Target, opcode: str, tokens: int, hidden: int, width: int, gated: bool, prec: str,
    dtype: str,
) -> tuple[tuple[int, float], ...]:  # fmt: skip
    """The joules of a ``gemm``/``act``/``accum`` on a micro-slice for ``tokens`` tokens, with
    the weights at ``prec`` (``dtype``: the layer's), as ``(part index, joules)`` in ``PARTS``
    order (what :meth:`EnergyLedger.charge_indexed` takes)."""
    if opcode == "gemm":
        parts = gemm_energy(t, tokens, hidden, width, gated, prec, dtype)
    elif opcode == "act":
        parts = act_energy(t, tokens, width, gated)
    else:
        parts = accum_energy(t, tokens, hidden, width, prec)
    return tuple((k, parts[p]) for k, p in enumerate(PARTS) if p in parts)


def charge_dense(b: Builder, s: DieState, op: int, flops: float) -> None:
    """Charge a dense island's FLOPs at the layer precision."""
    b.energy.charge(s.die, "compute", dense_energy(b.t, flops, b.dense_precision), op)


def power_counters(
    ledger: EnergyLedger, target: Target, start: list[float], end: list[float]
) -> list[dict[str, Any]]:  # fmt: skip
    """Chrome ``"C"`` (counter) events: per die, its power in watts over time, static power
    plus each op's dynamic energy spread evenly over the op's span. Ops of zero duration (none
    that move data or compute) would be impulses and are left out."""
    deltas: dict[int, dict[float, float]] = {}
    for op, die, _, j in ledger.by_op:
        dur = end[op] - start[op]
        if dur <= 0 or j == 0.0:
            continue
        d = deltas.setdefault(die, {})
        d[start[op]] = d.get(start[op], 0.0) + j / dur
        d[end[op]] = d.get(end[op], 0.0) - j / dur
    events: list[dict[str, Any]] = []
    makespan = max(end, default=0.0)
    for die in range(target.num_dies):
        static_w = die_static_energy(target, die, 1.0)
        w = static_w
        points = sorted(deltas.get(die, {}).items())
        events.append(_counter(die, 0.0, w))
        for t, dw in points:
            w += dw
            events.append(_counter(die, t, max(w, static_w)))
        events.append(_counter(die, makespan, static_w))
    return events


def _counter(die: int, t: float, watts: float) -> dict[str, Any]:
    return {
        "ph": "C", "pid": 0, "tid": die, "ts": t * 1e6, "name": f"die {die} power",
        "args": {"W": round(watts, 9)},
    }  # fmt: skip
