"""``annotate-importance{seed=0,tokens=64,trace=PATH}``: how much each routed expert matters.

Per MoE layer and expert, from calibration (:mod:`moec.compiler.calibration`: numerics on seeded
inputs when the weights are present, else a routing trace; ``trace=synth:zipf=1.2;seed=3`` (``;``
between the synthetic keys, as ``,`` separates pass options) or a file path forces a trace), it records in ``layer.annotations`` (one value per expert, rounded to 6
significant digits so the printed IR is stable):

- ``routed_frac``: fraction of calibration tokens routed to the expert;
- ``gate_mass``: the expert's share of all gate weight (sums to 1 over the layer);
- ``contribution``: mean over tokens of ``gate x ||expert output||`` (0 where not routed), numerics
  only;
- ``importance``: the expert's share of the layer's routed output: ``contribution`` normalized to
  sum 1 (``gate_mass`` when there are no numerics).

The lowering copies these lists into the stream program's ``RuntimePolicy.annotations``, so
they print as ``annotate importance = [...]`` in the runtime part. The calibration's provenance
goes to ``module.metadata["moec.calibration"]``; later passes reuse the same settings.

    before: %y = moe(%x) {experts=8, top_k=2, ...}
    after:  %y = moe(%x) {experts=8, top_k=2, ..., gate_mass=[0.21, ...], importance=[0.19, ...],
                          routed_frac=[0.41, ...], contribution=[0.52, ...]}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moec.compiler.calibration import LayerCalibration, calibrate, describe
from moec.compiler.passes.pipeline import ModulePass, PassResult, register
from moec.ir.graph import Module
from moec.ir.moe import MoELayer, expert_ffn

CALIBRATION_KEY = "moec.calibration"


def rounded(values: np.ndarray) -> list[float]:
    """Floats rounded to 6 significant digits (stable printing, exact round trip through text)."""
    return [float(f"{float(v):.6g}") for v in np.asarray(values, np.float64)]


@dataclass(frozen=True)
class ExpertStats:
    """Per-expert calibration statistics of one layer (arrays of length ``num_experts``)."""

    routed_frac: np.ndarray
    gate_mass: np.ndarray
    contribution: np.ndarray | None

    @property
    def importance(self) -> np.ndarray:
        base = self.contribution if self.contribution is not None else self.gate_mass
        total = float(base.sum())
        return base / total if total > 0 else np.full_like(base, 1.0 / base.size)


def expert_stats(layer: MoELayer, cal: LayerCalibration) -> ExpertStats:
    """Routed fraction, gate-mass share and mean output contribution of every expert."""
    E = layer.num_experts
    T = max(int(cal.ids.shape[0]), 1)
    ids, gates = np.asarray(cal.ids), np.asarray(cal.gates, np.float64)
    valid = ids >= 0
    counts = np.bincount(ids[valid], minlength=E).astype(np.float64)
    mass = np.bincount(ids[valid], weights=gates[valid], minlength=E)
    total = float(mass.sum())
    share = mass / total if total > 0 else np.zeros(E)
    contribution: np.ndarray | None = None
    if cal.x is not None:
        contribution = np.zeros(E)
        for e in range(E):
            rows, slots = np.nonzero(ids == e)
            if rows.size:
                out = expert_ffn(layer, e, cal.x[rows])
                norms = np.linalg.norm(out.astype(np.float64), axis=1)
                contribution[e] = float((gates[rows, slots] * norms).sum()) / T
    return ExpertStats(counts / T, share, contribution)


def annotate(layer: MoELayer, stats: ExpertStats) -> None:
    layer.annotations.routed_frac = rounded(stats.routed_frac)
    layer.annotations.gate_mass = rounded(stats.gate_mass)
    if stats.contribution is not None:
        layer.annotations.contribution = rounded(stats.contribution)
    else:
        layer.annotations.contribution = None
    layer.annotations.importance = rounded(stats.importance)


def trace_spec(option: str) -> str:
    """A pass option ``trace=synth:zipf=1.2;seed=3`` as a routing spec (``;`` -> ``,``)."""
    return option.replace(";", ",")


@register
@dataclass(frozen=True)
class AnnotateImportance(ModulePass):
    """Annotate every MoE layer's experts with routed fraction, gate mass and importance."""

    name = "annotate-importance"
    seed: int = 0
    tokens: int = 64
    trace: str = ""

    def __post_init__(self) -> None:
        if self.tokens < 1:
            raise ValueError(f"tokens must be >= 1, found {self.tokens}")

    def run(self, module: Module) -> PassResult:
        cals = calibrate(module, seed=self.seed, tokens=self.tokens, trace=trace_spec(self.trace))
        for op, cal in zip(module.moe_ops(), cals, strict=True):
            layer: MoELayer = op.layer
            annotate(layer, expert_stats(layer, cal))
        if cals:
            module.metadata[CALIBRATION_KEY] = describe(
                module, seed=self.seed, tokens=self.tokens, trace=trace_spec(self.trace)
            )
        return PassResult(module, bool(cals))
