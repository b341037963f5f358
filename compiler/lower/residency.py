"""Offloading: which experts of a layer live in device memory and which in host memory.

A target with a host tier (``npu8-hbm``: PCIe 64 GB/s per device) can hold experts that do not
fit, or are not worth, device memory (HBM/DDR). The strategy option ``resident=F`` (every
strategy accepts it, :data:`~moec.compiler.lower.common.COMMON_OPTIONS`) keeps
``round(F x E)`` experts of each layer resident and declares the others' tensors on the host
(``tensor L.e5 fp16 [...] host bytes B``); the runtime policy records the choice per expert
(``annotate resident = [1, 0, ...]``), which the interpreter reads to load those experts over
the die's host link and the CAEE rule reads to predict that cost.

Which experts stay resident, hottest first (ties: lower id), by the first basis available:

1. the per-expert annotations of ``annotate-importance`` (``importance``, else ``gate_mass``,
   else ``routed_frac``): calibrated popularity;
2. the routing trace given at compile time (``--routing``): pairs routed to each expert in that
   layer;
3. nothing: the first ``round(F x E)`` experts by id.

Without the option, a layer that ``caee-prune{resident=F}`` annotated keeps that pass's choice.

    >>> resident_plan(8, 0.5, scores=[0.1, 0.4, 0.0, 0.2, 0.3, 0.0, 0.0, 0.0])
    [1, 1, 0, 1, 1, 0, 0, 0]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moec.ir.moe import MoELayer
from moec.ir.routing import LayerRouting

#: Annotations of ``annotate-importance`` that rank experts, in order of preference.
RANKING_ANNOTATIONS = ("importance", "gate_mass", "routed_frac")


def resident_plan(
    experts: int, fraction: float, scores: Sequence[float] | None = None
) -> list[int]:
    """1 for the ``round(fraction x experts)`` highest-scoring experts (ties: lower id), else 0;
    without scores, the first ones by id."""
    n = max(0, min(experts, round(fraction * experts)))
    if scores is None:
        return [1 if e < n else 0 for e in range(experts)]
    hot = set(sorted(range(experts), key=lambda e: (-float(scores[e]), e))[:n])
    return [1 if e in hot else 0 for e in range(experts)]


def expert_scores(layer: MoELayer, routing: LayerRouting | None) -> tuple[list[float] | None, str]:
    """The popularity of each expert of ``layer`` and what it was taken from (see module doc)."""
    E = layer.num_experts
    for key in RANKING_ANNOTATIONS:
        values = layer.annotations.per_expert(key, E)
        if values is not None:
            return [float(v) for v in values], key
    if routing is not None:
        ids = np.asarray(routing.ids).reshape(-1)
        load = np.bincount(ids[ids >= 0], minlength=E)[:E]
        return [float(v) for v in load], "trace"
    return None, "id"


def layer_residency(
    layer: MoELayer, fraction: float | None, routing: LayerRouting | None
) -> list[int] | None:
    """Per expert 1 (device memory) or 0 (host) for ``layer``; None when every expert is
    resident. ``fraction`` None: the ``resident`` annotation of ``caee-prune``, if any."""
    E = layer.num_experts
    if fraction is None:
        given = layer.annotations.resident
        if isinstance(given, list) and len(given) == E and not all(given):
            return [1 if v else 0 for v in given]
        return None
    if fraction >= 1.0:
        return None
    scores, _ = expert_scores(layer, routing)
    return resident_plan(E, fraction, scores)
