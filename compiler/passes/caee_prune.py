"""``caee-prune{threshold=0.8,resident=1.0}``: straggler-aware expert pruning (CAEE) as a rule.

CAEE (arXiv 2606.29982, "Beyond Uniform Experts") decides per iteration, once routing is known,
so this pass only records the rule: ``layer.annotations.skip_rule = ("caee", threshold)``,
carried into the stream program as ``skip caee threshold 0.8``. The interpreter's scheduler runs
it before expanding each layer (``backends/interp/rules/caee.py``): predict every device's time
with the cost model, and on the straggler only drop the lowest benefit/cost (token, expert) pairs
(never a token's first choice) until it no longer sets the makespan or its kept gate mass would
fall below ``threshold`` x its original; the dropped weight moves to experts that run anyway.

``resident`` < 1 is the offloading mode: only that fraction of each layer's experts stays in
device memory (the hottest by gate mass, so ``annotate-importance`` must run first), the rest
come over the host link; recorded as the per-expert annotation ``resident`` (1/0).

    before: %y = moe(%x) {experts=8, top_k=2, ...}
    after:  %y = moe(%x) {experts=8, top_k=2, ..., skip_rule=('caee', 0.8)}
"""

from __future__ import annotations

from dataclasses import dataclass

from moec.compiler.passes.pipeline import ModulePass, PassError, PassResult, register
from moec.compiler.passes.skip_second import set_rule
from moec.ir.graph import Module
from moec.ir.moe import MoELayer


def resident_set(gate_mass: list[float], fraction: float) -> list[int]:
    """1 for the hottest ``round(fraction x E)`` experts by gate mass (ties: lower id), else 0."""
    E = len(gate_mass)
    n = max(0, min(E, round(fraction * E)))
    hot = sorted(range(E), key=lambda e: (-gate_mass[e], e))[:n]
    return [1 if e in set(hot) else 0 for e in range(E)]


@register
@dataclass(frozen=True)
class CaeePrune(ModulePass):
    """Record the CAEE runtime rule (and, offloading, which experts are resident)."""

    name = "caee-prune"
    threshold: float = 0.8
    resident: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], found {self.threshold}")
        if not 0.0 <= self.resident <= 1.0:
            raise ValueError(f"resident must be a fraction in [0, 1], found {self.resident}")

    def run(self, module: Module) -> PassResult:
        layers: list[MoELayer] = [op.layer for op in module.moe_ops()]
        for lay in layers:
            set_rule(lay, "caee", self.threshold)
            if self.resident < 1.0:
                mass = lay.annotations.gate_mass
                if mass is None:
                    raise PassError(
                        "resident < 1 keeps the hottest experts resident: run annotate-importance "
                        "first",
                        lay.name,
                    )
                lay.annotations.resident = resident_set(list(mass), self.resident)
        return PassResult(module, bool(layers))
