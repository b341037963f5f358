"""The any-schedule floor of an MoE layer iteration on the calibrated machine.

:mod:`moec.ir.cost.bound` charges pin bandwidth and peak FLOPs; this floor keeps the calibrated
model's own costs and still holds for *every* schedule the ISA can express (any placement,
slicing, load order, token split), because each term only counts work no schedule can avoid:

- **DRAM**: every activated expert (and the shared experts, if any) is read from DRAM at least
  once, in at least one load (a ``load`` carries one micro-slice of one expert). Channel ``c``
  streams at ``r_c = gbps x efficiency`` and every load first holds it for the DMA setup ``s_c``
  (:func:`~moec.ir.cost.transfer.dram_occupancy`). If the busiest channel is busy for ``T``,
  ``T x sum(r_c) >= sum_c r_c x occupancy_c >= bytes + loads x min_c(r_c s_c)``, so
  ``dram_s = (bytes + loads x min_c(r_c s_c)) / sum_c r_c``. The last byte then still needs the
  channel's access latency to arrive: ``+ min_c latency_c``.
- **Compute**: every (token, expert) pair is computed. An expert's ``n`` tokens cost at least
  its whole-expert micro-slice for all ``n`` tokens on one die
  (:func:`~moec.ir.cost.compute.slice_compute_time` with width ``ffn``): every formula it sums is
  super-additive (cutting the columns or the tokens over dies or slices adds folds, partial
  tiles, ceilings and issue costs, never removes them), so the dies' summed compute is at least
  ``sum_e slice_compute_time(n_e, ffn)`` (exact for equal dies, as every preset has; for unequal
  dies each expert is charged at its fastest die), and the busiest die at least that over the
  die count: ``compute_s``. No compute starts before the first load
  has arrived (a latency, a setup and one burst): ``+ first_load_s``.

``bound_s = max(dram_s + latency, compute_s + first_load_s)``. It is a floor for the layer's
own work on one iteration's batch from cold SRAM; token buffering (pairs deferred to the next
iteration) and weights already resident are outside it. ``target.ideal`` reduces every formula
(no setup, no bursts, peak FLOPs), so the floor then equals :func:`moe_layer_bound` plus the
latencies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moec.ir.cost.compute import bytes_per_element, slice_compute_time
from moec.ir.cost.transfer import dma_setup_time, dram_data_time
from moec.ir.target import Target


@dataclass(frozen=True)
class ScheduleFloor:
    """The any-schedule floor of one MoE layer iteration and its terms (seconds, bytes)."""

    dram_s: float
    latency_s: float
    compute_s: float
    first_load_s: float
    weight_bytes: float

    @property
    def bound_s(self) -> float:
        return max(self.dram_s + self.latency_s, self.compute_s + self.first_load_s)


def schedule_floor(
    target: Target,
    *,
    hidden: int,
    ffn: int,
    ids: np.ndarray,
    gated: bool = True,
    shared_ffn: int = 0,
    precision: str = "fp16",
) -> ScheduleFloor:
    """The floor (module doc) of one MoE layer for the routing ``ids`` ([tokens, k]; -1: none).

    ``hidden``/``ffn``: the expert's model and FFN widths; ``shared_ffn`` > 0 adds shared experts
    that every token runs through; ``precision``: the weights' precision.
    """
    ids = np.asarray(ids)
    valid = ids[ids >= 0]
    experts, counts = np.unique(valid, return_counts=True)
    tokens = int(ids.shape[0]) if ids.ndim else 0
    mats = 3 if gated else 2
    per_expert = mats * hidden * ffn * bytes_per_element(precision)
    groups = [(int(n), ffn) for n in counts]  # (tokens, width) of each unavoidable computation
    loads = len(experts)
    weight_bytes = loads * per_expert
    if shared_ffn > 0 and tokens > 0:
        weight_bytes += mats * hidden * shared_ffn * bytes_per_element(precision)
        groups.append((tokens, shared_ffn))
        loads += 1
    channels = [c for c in target.channels if c.gbps > 0]
    if not channels or loads == 0:
        return ScheduleFloor(0.0 if loads == 0 else float("inf"), 0.0, 0.0, 0.0, weight_bytes)
    # bytes per second each channel sustains: the inverse slope of dram_data_time
    rates = [1.0 / dram_data_time(target, c, c.burst_bytes) * c.burst_bytes for c in channels]
    setup = min(r * dma_setup_time(target, c.die) for r, c in zip(rates, channels, strict=True))
    dram_s = (weight_bytes + loads * setup) / sum(rates)
    latency = min(c.latency_s for c in channels)
    first = min(
        c.latency_s + dma_setup_time(target, c.die) + dram_data_time(target, c, 1)
        for c in channels
    )  # fmt: skip
    work = sum(
        min(
            slice_compute_time(target, d.id, n, hidden, w, gated, precision)
            for d in target.dies
        )
        for n, w in groups
    )  # fmt: skip
    compute_s = work / target.num_dies
    return ScheduleFloor(dram_s, latency, compute_s, first, weight_bytes)
