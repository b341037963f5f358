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
counter per die (:func:`power_counters`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


class EnergyLedger:
    """Joules per die and part (:data:`moec.ir.energy.PARTS`), and per op for the trace."""

    def __init__(self, num_dies: int) -> None:
        self.joules = [[0.0] * len(PARTS) for _ in range(num_dies)]
        #: (op, die, part index, joules) of every dynamic charge, in charge order
        self.by_op: list[tuple[int, int, int, float]] = []

    def charge(self, die: int, part: str, joules: float, op: int) -> None:
        """Add ``joules`` of ``part`` on ``die``, spent by ``op``."""
        k = _INDEX[part]
        self.joules[die][k] += joules
        self.by_op.append((op, die, k, joules))

    def charge_parts(self, die: int, parts: dict[str, float], op: int) -> None:
        for part in PARTS:
            if part in parts:
                self.charge(die, part, parts[part], op)

    def charge_indexed(self, die: int, parts: tuple[tuple[int, float], ...], op: int) -> None:
        """:meth:`charge_parts` of parts given as ``(part index, joules)`` in ``PARTS`` order."""
        row, by_op = self.joules[die], self.by_op
        for k, j in parts:
            row[k] += j
            by_op.append((op, die, k, j))

    def add_static(self, target: Target, span_s: float) -> None:
        """Static power of every die (and its channels) over ``span_s`` seconds."""
        for d in range(len(self.joules)):
            self.joules[d][_INDEX["static"]] += die_static_energy(target, d, span_s)

    # --- totals ---
    def breakdown(self) -> dict[str, float]:
        """Joules per part over all dies."""
        return {p: sum(row[k] for row in self.joules) for k, p in enumerate(PARTS)}

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
        out["static"] = sum(die_static_energy(target, d, span_s) for d in range(len(self.joules)))
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
