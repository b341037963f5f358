"""``skip-second{beta=auto|float}``: skip a token's lower-ranked experts far below its first.

Records, per MoE layer, the runtime rule ``skip second threshold beta`` (``layer.annotations
["skip_rule"] = ("second", beta)``, carried into the stream program's runtime policy). The
interpreter's scheduler executes it for each routing (``backends/interp/rules/skip_second.py``):
an expert after the token's first choice is dropped when its gate is below ``beta x`` the first's,
and the dropped weight moves onto the token's kept experts in proportion to their gates, so the
token's gate sum is unchanged (for a renormalizing router: exactly renormalizing over the kept
experts).

``beta=auto`` calibrates one beta per layer: the median over calibration tokens of the ratio
second gate / first gate (numerics on seeded inputs, or the trace given by ``trace=``; options
``seed``, ``tokens``, ``trace`` as for ``annotate-importance``). Layers with top-1 routing are
left alone.

    before: %y = moe(%x) {experts=8, top_k=2, ...}
    after:  %y = moe(%x) {experts=8, top_k=2, ..., skip_rule=('second', 0.412)}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moec.compiler.calibration import calibrate
from moec.compiler.passes.annotate_importance import trace_spec
from moec.compiler.passes.pipeline import ModulePass, PassError, PassResult, register
from moec.ir.graph import Module
from moec.ir.moe import MoELayer


def median_ratio(gates: np.ndarray) -> float:
    """Median over tokens of gate[:, 1] / gate[:, 0] (0 when the first gate is 0)."""
    g = np.asarray(gates, np.float64)
    ratio = np.where(g[:, 0] > 0, g[:, 1] / np.where(g[:, 0] > 0, g[:, 0], 1.0), 0.0)
    return float(np.median(ratio))


def set_rule(layer: MoELayer, rule: str, threshold: float) -> None:
    """Record the layer's runtime skip rule; the runtime part holds one rule per layer."""
    old = layer.annotations.skip_rule
    if old is not None and old[0] != rule:
        raise PassError(
            f"layer already has skip rule {old[0]!r}; the runtime part holds one rule per layer",
            layer.name,
        )
    layer.annotations.skip_rule = (rule, float(f"{threshold:.6g}"))


@register
@dataclass(frozen=True)
class SkipSecond(ModulePass):
    """Threshold skipping of lower-ranked experts (beta per layer, calibrated or given)."""

    name = "skip-second"
    beta: str = "auto"
    seed: int = 0
    tokens: int = 64
    trace: str = ""

    def __post_init__(self) -> None:
        if self.beta != "auto":
            try:
                value = float(self.beta)
            except ValueError:
                raise ValueError(f"beta must be auto or a number, found {self.beta!r}") from None
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"beta must be in [0, 1], found {value}")
        if self.tokens < 1:
            raise ValueError(f"tokens must be >= 1, found {self.tokens}")

    def run(self, module: Module) -> PassResult:
        layers: list[MoELayer] = [op.layer for op in module.moe_ops()]
        todo = [lay for lay in layers if lay.top_k >= 2]
        if not todo:
            return PassResult(module, False)
        betas: dict[str, float] = {}
        if self.beta == "auto":
            cals = calibrate(
                module, seed=self.seed, tokens=self.tokens, trace=trace_spec(self.trace)
            )
            for lay, cal in zip(layers, cals, strict=True):
                betas[lay.name] = median_ratio(cal.gates)
        for lay in todo:
            set_rule(lay, "second", betas[lay.name] if betas else float(self.beta))
        return PassResult(module, True)
