"""The bounds ``--strategy auto`` predicts with, and why a schedule sits above the floor.

:func:`bound_terms` plays one candidate's program, expanded for the routing, against the cost
model: per MoE layer, each DRAM channel's occupancy (a channel serves one load at a time) and
each die's expert compute (a die runs one compute op at a time), every op at the interpreter's
own formulas. The larger of the busiest channel and the busiest die is a lower bound on that
layer's span for *this* schedule (:func:`predicted_layers`); :func:`any_schedule_floor` is the
bound that holds for *every* schedule of the same work (:mod:`moec.ir.cost.floor`).

:func:`floor_gap` says where a measured schedule's time goes between the two: compute the
schedule adds over the floor's (its cut's partial folds and issues, each micro-slice's partial
sums on the vector unit, dies unequally loaded), DRAM occupancy it adds (a DMA setup per load,
channels unequally loaded), and what the interpreter measures beyond its own bound (DRAM and
compute not overlapped: the pipeline's fill and drain, loads stalled on full slots).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from moec.backends.interp.expand import expand_program
from moec.backends.interp.simulate import check_routings
from moec.ir.cost import (
    accum_time,
    act_time,
    dram_occupancy,
    gemm_time,
    schedule_floor,
    slice_activation,
)
from moec.ir.cost.floor import ScheduleFloor
from moec.ir.routing import RoutingTrace
from moec.ir.stream import (
    Accum,
    Act,
    Gemm,
    Load,
    Program,
    Recv,
    SliceRef,
    TensorRef,
)
from moec.ir.stream.layouts import layouts_for
from moec.ir.stream.values import HOST_CHANNEL
from moec.ir.target import Target


@dataclass(frozen=True)
class BoundTerms:
    """One MoE layer of one schedule against the cost model (seconds): per DRAM channel its
    occupancy and load count, per die its expert compute and, within it, the vector unit's
    partial sums (each ``accum``'s scale-and-add over the layer's hidden width)."""

    channel_s: tuple[float, ...]
    loads: tuple[int, ...]
    die_s: tuple[float, ...]
    partial_sums_s: tuple[float, ...]

    @property
    def bound_s(self) -> float:
        return max(max(self.channel_s, default=0.0), max(self.die_s, default=0.0))


def bound_terms(program: Program, target: Target, routing: RoutingTrace) -> list[BoundTerms]:
    """Per MoE layer (in ``program.layers`` order), its :class:`BoundTerms` once expanded for
    ``routing``: every load's channel occupancy, every gemm/act/accum on a slice loaded or
    received by the die that runs it."""
    static = expand_program(program, target, check_routings(program, target, routing))
    index = {m.name: k for k, m in enumerate(static.layers)}
    busy = np.zeros((len(index), len(target.channels)))
    loads = np.zeros((len(index), len(target.channels)), dtype=np.int64)
    channel = {c.id: k for k, c in enumerate(target.channels)}
    compute = np.zeros((len(index), target.num_dies))
    vector = np.zeros((len(index), target.num_dies))
    layouts = layouts_for(static)
    layers = {m.name: m for m in static.layers}
    for st in static.streams:
        held: dict[int, SliceRef] = {}
        for i in st.instrs:
            if (
                isinstance(i, Load | Recv)
                and isinstance(i.content, SliceRef)
                and i.slot is not None
            ):
                held[i.slot] = i.content
            if isinstance(i, Load) and i.channel != HOST_CHANNEL:
                owner = _load_layer(i.content, index)
                if owner is not None:
                    busy[owner, channel[i.channel]] += dram_occupancy(target, i.channel, i.nbytes)
                    loads[owner, channel[i.channel]] += 1
            elif isinstance(i, Gemm | Act | Accum) and i.slot in held:
                c = held[i.slot]
                m = layers[c.layer]
                policy = program.policy(c.layer)
                prec = m.dtype
                if c.expert is not None and policy is not None and policy.precision:
                    prec = policy.precision[c.expert]
                w, n = layouts[(c.layer, c.expert is None)].width(c.slice), len(i.tokens)
                if isinstance(i, Gemm):
                    t = gemm_time(target, st.die, n, m.hidden, w * (2 if m.gated else 1), prec)
                elif isinstance(i, Act):
                    t = act_time(target, st.die, n, w, prec, slice_activation(m.gated), m.gated)
                else:
                    t = accum_time(target, st.die, n, w, m.hidden, prec)
                    vector[index[c.layer], st.die] += t - gemm_time(
                        target, st.die, n, w, m.hidden, prec
                    )
                compute[index[c.layer], st.die] += t
    return [
        BoundTerms(
            tuple(float(x) for x in busy[k]),
            tuple(int(x) for x in loads[k]),
            tuple(float(x) for x in compute[k]),
            tuple(float(x) for x in vector[k]),
        )  # fmt: skip
        for k in range(len(index))
    ]


def predicted_layers(program: Program, target: Target, routing: RoutingTrace) -> list[float]:
    """Per MoE layer (in ``program.layers`` order), a lower bound on its span once expanded for
    ``routing``: the larger of its busiest DRAM channel's occupancy over the layer's loads and
    its busiest die's expert compute on slices loaded or received there (:func:`bound_terms`).
    Layers' spans add up (``moec bench``), so the sum bounds the whole program."""
    return [t.bound_s for t in bound_terms(program, target, routing)]


def _load_layer(content: SliceRef | TensorRef, index: Mapping[str, int]) -> int | None:
    """The MoE layer a load belongs to: a slice's layer, or a tensor named ``L.<...>``."""
    name = content.layer if isinstance(content, SliceRef) else content.name.split(".", 1)[0]
    return index.get(name)


def layer_floors(program: Program, target: Target, routing: RoutingTrace) -> list[ScheduleFloor]:
    """Per MoE layer of ``program``, :func:`~moec.ir.cost.schedule_floor` for ``routing``."""
    return [
        schedule_floor(
            target, hidden=m.hidden, ffn=m.ffn, ids=lr.ids, gated=m.gated,
            shared_ffn=m.shared_ffn, precision=m.dtype,
        )
        for m, lr in zip(program.layers, routing.layers, strict=False)
    ]  # fmt: skip


def any_schedule_floor(program: Program, target: Target, routing: RoutingTrace) -> float:
    """The sum over ``program``'s MoE layers of :func:`~moec.ir.cost.schedule_floor` for
    ``routing``: a lower bound on the MoE layers' span that holds for every schedule of the
    same work on ``target`` (not only for auto's candidates), so ``best / floor`` is the most
    any schedule could gain on a measured latency."""
    return sum(f.bound_s for f in layer_floors(program, target, routing))


def floor_gap(
    program: Program, target: Target, routing: RoutingTrace, measured_s: float
) -> list[str]:  # fmt: skip
    """Why ``program`` (measured at ``measured_s``, the MoE layers' span) is above the
    any-schedule floor: its compute, DRAM and overlap beyond the floor's, summed over the MoE
    layers (module doc), as lines of text."""
    terms = bound_terms(program, target, routing)
    floors = layer_floors(program, target, routing)
    floor = sum(f.bound_s for f in floors)
    bound = sum(t.bound_s for t in terms)
    die = sum(max(t.die_s, default=0.0) for t in terms)
    mean = sum(float(np.mean(t.die_s)) if t.die_s else 0.0 for t in terms)
    vec = sum(max(t.partial_sums_s, default=0.0) for t in terms)
    chan = sum(max(t.channel_s, default=0.0) for t in terms)
    cmean = sum(float(np.mean(t.channel_s)) if t.channel_s else 0.0 for t in terms)
    f_compute = sum(f.compute_s for f in floors)
    f_dram = sum(f.dram_s for f in floors)
    loads = sum(sum(t.loads) for t in terms)
    ms = lambda s: f"{s * 1e3:.3f} ms"  # noqa: E731
    pct = lambda a, b: f"{(a / b - 1) * 100:+.1f}%" if b > 0 else "-"  # noqa: E731
    return [
        f"above the any-schedule floor {ms(floor)} by {pct(measured_s, floor)} "
        f"(measured {ms(measured_s)}, its own bound {ms(bound)}):",
        f"  compute: busiest die {ms(die)}, mean die {ms(mean)} against the floor's "
        f"{ms(f_compute)} ({pct(mean, f_compute)} from cutting experts into slices and tokens over dies: "
        f"partial folds, an issue per op, weight tiles loaded per op for fewer tokens, "
        f"{ms(vec)} of partial sums on the busiest die's vector unit; "
        f"{pct(die, mean)} from dies unequally loaded)",
        f"  DRAM: busiest channel {ms(chan)}, mean {ms(cmean)} against the floor's "
        f"{ms(f_dram)} ({loads} loads, a DMA setup each; {pct(chan, cmean)} from channels "
        "unequally loaded)",
        f"  overlap: measured {pct(measured_s, bound)} over its own bound (DRAM and compute not "
        "overlapped: pipeline fill and drain, loads waiting for a free slot, transfers)",
    ]
