"""Analytic lower bounds of an MoE layer iteration: what no schedule can beat on a target.

The bound charges weights at the DRAM channels' pin bandwidth and FLOPs at the dies' peak, so it
stays a lower bound of the calibrated machine too (which only adds costs); ``moec bench``
reports every latency against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moec.ir.cost.compute import bytes_per_element
from moec.ir.cost.transfer import GB
from moec.ir.moe import MoELayer
from moec.ir.target import Target


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
    shared_params = mats * hidden * shared_ffn  # shared experts are gated like the routed ones
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
