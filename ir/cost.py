"""The analytic cost model: how long compute, DRAM, link and host transfers take on a target.

One place for the costs that compiler decisions (placement, slice count, cost-aware pruning) and
the interpreter's instruction durations share. Every function is a pure formula over an *idle*
resource; contention (queueing on a link, channel or compute unit) is what the interpreter adds.
A time here is ``latency + bytes / bandwidth``, but a resource's *occupancy* is
``bytes / bandwidth`` only: access latency is pipelined (a DMA engine keeps several requests
outstanding), so it delays one transfer's arrival and overlaps the next transfer's data; two
reads queued on one channel take ``latency + 2 bytes / bandwidth`` in the interpreter.

Units: bytes, seconds, FLOPs (2 per multiply-accumulate); GB/s means 1e9 bytes per second.

- compute:  ``flops / die.flops_per_s(precision)``
- DRAM:     ``channel.latency_s + nbytes / channel bandwidth``
- one hop:  ``link.latency_s + nbytes / link bandwidth``
- a route:  **cut-through** (wormhole): the head pays every hop's latency, the body streams at
  the slowest link's bandwidth, ``sum(latency) + nbytes / min(bandwidth)``
  (:func:`transfer_time`). A block relayed die to die (an FSE-DP slice a die computes before
  forwarding, an activation block) is store-and-forward instead: a sequence of one-hop
  :func:`link_time` calls.
- a load from a channel on another die: the DRAM read and the route, cut-through,
  ``channel latency + sum(link latency) + nbytes / min(channel and link bandwidths)``
  (:func:`load_time`). Occupancy is not that time: the channel is busy for ``bytes / channel
  bandwidth``, and each link only for its own ``bytes / link bandwidth`` (at 25.6 GB/s DRAM
  over a 288 GB/s link, about 9% of the read); the interpreter holds the links that long, as a
  reservation placed so the data can have crossed them as early as possible, which on an idle
  package gives exactly :func:`load_time`.
- host:     ``host.latency_s + nbytes / host bandwidth`` over the die's own PCIe-class link.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moec.ir.errors import TargetError
from moec.ir.moe import MoELayer
from moec.ir.target import PRECISION_BYTES, Channel, Target

GB = 1e9


def bytes_per_element(precision: str) -> float:
    """Bytes of one element: fp32 4, fp16/bf16 2, int8 1, int4 0.5."""
    b = PRECISION_BYTES.get(precision)
    if b is None:
        raise TargetError(
            f"unknown precision {precision!r}, expected one of {', '.join(PRECISION_BYTES)}"
        )
    return b


def compute_time(target: Target, die: int, flops: float, precision: str = "fp16") -> float:
    """Seconds for ``flops`` on ``die``'s MAC array at peak throughput."""
    return float(flops) / target.die(die).flops_per_s(precision)


def dram_time(target: Target, channel: int | Channel, nbytes: float) -> float:
    """Seconds to read or write ``nbytes`` on one idle DRAM channel.

    The channel is occupied for ``nbytes / bandwidth`` only; its latency is pipelined.
    """
    ch = target.channel(channel) if isinstance(channel, int) else channel
    return ch.latency_s + float(nbytes) / (ch.gbps * GB)


def link_time(target: Target, src: int, dst: int, nbytes: float) -> float:
    """Seconds to move ``nbytes`` over the idle direct link ``src -> dst`` (one hop).

    The link is occupied for ``nbytes / bandwidth`` only; its latency is pipelined.
    """
    lk = target.link(src, dst)
    return lk.latency_s + float(nbytes) / (lk.gbps * GB)


def transfer_time(target: Target, a: int, b: int, nbytes: float) -> float:
    """Seconds to move ``nbytes`` from die ``a`` to die ``b`` along ``target.route`` (cut-through).

    Zero when ``a == b``. On idle links; each link is occupied for ``nbytes / its bandwidth``
    only (latency is pipelined).
    """
    path = target.route(a, b)
    if len(path) < 2:
        return 0.0
    links = [target.link(s, d) for s, d in zip(path, path[1:], strict=False)]
    return sum(lk.latency_s for lk in links) + float(nbytes) / (min(lk.gbps for lk in links) * GB)


def load_time(target: Target, channel: int | Channel, die: int, nbytes: float) -> float:
    """Seconds until ``nbytes`` read from ``channel`` have arrived in ``die``, on an idle package.

    :func:`dram_time` when the channel is on ``die``; otherwise the read streams through
    ``target.route(channel.die, die)`` cut-through: ``channel latency + sum(link latency) +
    nbytes / min(channel bandwidth, link bandwidths)``. This is what the interpreter times a
    ``load`` at when nothing else holds the channel or the links; it occupies the channel for
    ``nbytes / channel bandwidth`` and each link for ``nbytes / link bandwidth`` (latencies are
    pipelined).
    """
    ch = target.channel(channel) if isinstance(channel, int) else channel
    path = target.route(ch.die, die)
    links = [target.link(s, d) for s, d in zip(path, path[1:], strict=False)]
    lat = ch.latency_s + sum(lk.latency_s for lk in links)
    return lat + float(nbytes) / (min([ch.gbps, *(lk.gbps for lk in links)]) * GB)


def host_time(target: Target, nbytes: float) -> float:
    """Seconds to move ``nbytes`` between host memory and one die over its idle host link.

    The link is occupied for ``nbytes / bandwidth`` only; its latency is pipelined.
    """
    if target.host is None:
        raise TargetError(f"target {target.name!r} has no host tier")
    return target.host.latency_s + float(nbytes) / (target.host.gbps * GB)


@dataclass(frozen=True)
class LayerBound:
    """The analytic lower bound of one MoE layer iteration and its two terms."""

    dram_s: float
    compute_s: float
    weight_bytes: float
    flops: float

    @property
    def bound_s(self) -> float:
        return max(self.dram_s, self.compute_s)


def lower_bound(
    target: Target, weight_bytes: float, flops: float, precision: str = "fp16"
) -> LayerBound:
    """``max(weight_bytes / total DRAM bandwidth, flops / total compute)`` on ``target``."""
    dram_bw = target.total_dram_gbps() * GB
    dram_s = float(weight_bytes) / dram_bw if dram_bw > 0 else float("inf")
    compute_s = float(flops) / target.total_flops_per_s(precision)
    return LayerBound(dram_s, compute_s, float(weight_bytes), float(flops))


def moe_layer_bound(
    target: Target,
    *,
    hidden: int,
    ffn: int,
    ids: np.ndarray,
    gated: bool = True,
    shared_ffn: int = 0,
    precision: str = "fp16",
) -> LayerBound:
    """Lower bound of one MoE layer iteration for the routing ``ids`` ([tokens, k]; -1 = none).

    Weight bytes: every activated (distinct) expert's projections once, plus the shared experts
    when ``shared_ffn > 0``, at ``precision``. FLOPs: 2 per multiply-accumulate of every routed
    (token, expert) pair, plus every token through the shared experts.
    """
    mats = 3 if gated else 2
    ids = np.asarray(ids)
    valid = ids[ids >= 0]
    activated = int(np.unique(valid).size)
    tokens = int(ids.shape[0]) if ids.ndim else 0
    expert_params = mats * hidden * ffn
    shared_params = 3 * hidden * shared_ffn
    weight_bytes = (activated * expert_params + shared_params) * bytes_per_element(precision)
    flops = 2.0 * (int(valid.size) * expert_params + tokens * shared_params)
    return lower_bound(target, weight_bytes, flops, precision)


def layer_bound(
    target: Target, layer: MoELayer, ids: np.ndarray, precision: str = "fp16"
) -> LayerBound:
    """:func:`moe_layer_bound` with the shapes taken from a canonical MoE layer."""
    return moe_layer_bound(
        target, hidden=layer.hidden, ffn=layer.ffn, ids=ids, gated=layer.gated,
        shared_ffn=layer.shared_ffn if layer.has_shared else 0, precision=precision,
    )  # fmt: skip
