"""Micro-slice layouts and slots as the runtime part sees them: one definition for the verifier
and the interpreter's expansion.

A layer whose program declares no layout gets :func:`default_layout` (the fewest even slices of
which one fits the smallest slot); :func:`free_slots_at` says which slots a die's static part
leaves free at its ``moe L`` placeholder; :func:`slice_bytes` is a micro-slice's size. The
verifier checks a program against exactly what expansion will use, so anything expansion
rejects for the program's own reasons is rejected by ``moec inspect`` first.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

from moec.ir.cost import bytes_per_element
from moec.ir.errors import ScheduleError
from moec.ir.stream.params import StrategyParams
from moec.ir.stream.program import (
    DieStream,
    Free,
    Load,
    MoE,
    MoEDecl,
    Program,
    Recv,
    RuntimePolicy,
    SliceLayout,
    SlotPool,
)


def slice_bytes(mats: int, hidden: int, width: int, precision: str) -> int:
    """Bytes of a micro-slice: ``mats`` projections of ``hidden x width`` at ``precision``."""
    return int(math.ceil(mats * hidden * width * bytes_per_element(precision)))


def free_slots_at(p: Program, layer: str) -> dict[int, list[int]]:
    """Per die, the slots not held by the static part at that die's ``moe layer`` placeholder."""
    out: dict[int, list[int]] = {}
    pools = {s.die: s for s in p.slots}
    for st in p.streams:
        for i, held in _held_at_placeholders(st):
            if i.layer == layer:
                out[st.die] = _free(pools.get(st.die), held)
                break
    return out


def free_slots_by_layer(p: Program) -> dict[str, dict[int, list[int]]]:
    """:func:`free_slots_at` of every layer at once (one walk of each stream, not one per
    layer): per layer, per die, the slots free at that die's first ``moe layer``."""
    out: dict[str, dict[int, list[int]]] = {}
    pools = {s.die: s for s in p.slots}
    for st in p.streams:
        for i, held in _held_at_placeholders(st):
            at_layer = out.setdefault(i.layer, {})
            if st.die not in at_layer:
                at_layer[st.die] = _free(pools.get(st.die), held)
    return out


def _held_at_placeholders(st: DieStream) -> Iterator[tuple[MoE, set[int]]]:
    """Each ``moe`` placeholder of a die stream, with the slots its static part holds there
    (a live set: read it before resuming)."""
    held: set[int] = set()
    for i in st.instrs:
        if isinstance(i, MoE):
            yield i, held
        elif isinstance(i, Load) or (isinstance(i, Recv) and i.slot is not None):
            held.add(i.slot)  # type: ignore[arg-type]
        elif isinstance(i, Free):
            held.discard(i.slot)


def _free(pool: SlotPool | None, held: set[int]) -> list[int]:
    return [k for k in range(pool.count) if k not in held] if pool else []


def default_layout(p: Program, m: MoEDecl) -> SliceLayout:
    """Fewest even micro-slices of the layer such that one fits the smallest slot of any die."""
    sizes = [s.nbytes for s in p.slots]
    if not sizes:
        raise ScheduleError(
            f"does not fit SRAM: layer {m.name} needs buffer slots but the program declares none",
            p.filename,
        )
    mats = 3 if m.gated else 2
    per_col = slice_bytes(mats, m.hidden, 1, m.dtype)
    cols = max(1, min(sizes) // max(per_col, 1))
    if cols < 1 or per_col > min(sizes):
        raise ScheduleError(
            f"does not fit SRAM: one column of layer {m.name} needs {per_col} bytes, the "
            f"smallest slot holds {min(sizes)}",
            p.filename,
        )
    count = max(1, math.ceil(m.ffn / cols))
    return SliceLayout.even(m.name, m.ffn, count)


def layouts_for(p: Program) -> dict[tuple[str, bool], SliceLayout]:
    """Every layer's routed (and shared) layout, defaulting those the program does not declare."""
    out = {(lay.layer, lay.shared): lay for lay in p.layouts}
    for m in p.layers:
        if p.policy(m.name) is None:
            continue
        if (m.name, False) not in out:
            out[(m.name, False)] = default_layout(p, m)
        if m.shared_ffn and (m.name, True) not in out:
            sh = dataclasses.replace(m, ffn=m.shared_ffn, gated=True)
            lay = default_layout(p, sh)
            out[(m.name, True)] = dataclasses.replace(lay, shared=True)
    return out


def micro_slice_bytes(
    m: MoEDecl,
    policy: RuntimePolicy,
    params: StrategyParams | None,
    layout: SliceLayout | None,
    expert: int | None,
    j: int,
) -> int:
    """Bytes of micro-slice ``j`` of ``expert`` (None: the shared experts) at its precision.

    The lowering's byte counts (``slice_bytes``/``shared_slice_bytes`` parameters; biases ride
    with slice 0) win when they apply: one list per layer, so only when every expert has the
    layer's precision. Otherwise the slice's projections at the expert's precision-table entry.
    """
    assert layout is not None
    given = None
    if params is not None:
        given = params.slice_bytes if expert is not None else params.shared_slice_bytes
    if given is not None and (expert is None or not policy.precision):
        return given[j]
    precision = policy.precision[expert] if expert is not None and policy.precision else m.dtype
    mats = 3 if m.gated else 2  # shared experts are gated exactly when the routed ones are
    return slice_bytes(mats, m.hidden, layout.width(j), precision)


def largest_slice(
    m: MoEDecl,
    policy: RuntimePolicy,
    params: StrategyParams | None,
    layouts: dict[tuple[str, bool], SliceLayout],
) -> tuple[int, str]:
    """The largest micro-slice the expansion of ``m`` will load, and whose it is."""
    experts: list[int | None] = list(range(m.experts) if policy.precision else range(1))
    shared = layouts.get((m.name, True))
    if shared is not None:
        experts.append(None)
    best, what = 0, ""
    for e in experts:
        lay = layouts[(m.name, False)] if e is not None else shared
        assert lay is not None
        need = max(micro_slice_bytes(m, policy, params, lay, e, j) for j in range(lay.count))
        if need > best:
            best, what = need, ("shared experts" if e is None else f"expert {e}")
    return best, what
