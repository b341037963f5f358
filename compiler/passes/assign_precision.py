"""``assign-precision``: a weight precision (fp16, int8, int4) for every routed expert, applied.

Two ways to decide (exactly one per use), then one rewrite:

- ``assign-precision{tiers=0.6/0.9}`` (HOBBIT-style): experts sorted by gate mass (hottest first,
  ties by id); an expert whose cumulative share *before* it is below 0.6 keeps fp16, below 0.9
  gets int8, the rest int4 (so the hottest expert is always fp16). One value ``tiers=0.7`` means
  fp16 then int4.
- ``assign-precision{budget=0.01,objective=latency}`` (MxMoE-style, greedy): minimize the layer's
  expected weight-streaming latency subject to ``sum_e error_e(p_e) x importance_e <= budget``,
  i.e. the estimated relative error of the layer's routed output; each step takes the one-step
  downgrade (fp16 -> int8 -> int4) with the most latency saved per unit of error.
  ``objective=accuracy`` is the reverse: minimize the error until the latency is at most
  ``budget`` x the all-fp16 latency (fewest error per latency saved first).

Costs come from the target's cost model (``target=`` option, default ``fsedp-2x2``): expert e at
precision p costs ``routed_frac_e x typical_dram_time(bytes_e(p)) + compute(its tokens, p)``; compute is
``compute_time`` (FLOPs at peak) on the ideal machine, ``slice_compute_time`` of the whole expert
(array folds, vector unit, issue) on the calibrated one.
Errors are measured: ``error_e(p)`` is the relative output error of expert e with its weights at
p on the calibration tokens routed to it (gate-weighted); without weights (shape-only models) a
seeded Gaussian proxy matrix of the expert's shape gives one nominal error per precision.

The rewrite quantizes for real (:mod:`moec.compiler.quantize`: symmetric, per output channel, or
for int4 ``block``-wise along the input features, int4 packed; int8 stays per channel because
ONNX Runtime's block-wise 8-bit QMoE also quantizes activations, which would break the exact
export) and **replaces the layer's weights by their
dequantized values**, so every backend computes the approximation; ``annotations.precision``
holds the per-expert list (copied into the stream program's ``precision [...]`` table, which the
interpreter charges DRAM bytes and compute at) and ``annotations.quant_error`` the measured
error at the chosen precision. Biases, router and shared experts stay in float.

    before: %y = moe(%x) {experts=8, ..., gate_mass=[0.31, 0.22, ...]}
    after:  %y = moe(%x) {experts=8, ..., precision=['fp16', 'int8', ..., 'int4'], ...}
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from moec.compiler.calibration import calibrate
from moec.compiler.passes.annotate_importance import rounded, trace_spec
from moec.compiler.passes.pipeline import ModulePass, PassError, PassResult, register
from moec.compiler.quantize import PRECISIONS, apply_precision
from moec.ir.cost import (
    ACTIVATION_OPS,
    bytes_per_element,
    compute_time,
    slice_compute_time,
    typical_dram_time,
)
from moec.ir.errors import MoecError
from moec.ir.graph import Module, TensorType, Weight
from moec.ir.moe import MoELayer, expert_ffn
from moec.ir.target import Target, load_target

OBJECTIVES = ("latency", "accuracy")
#: Canonical expert weights and the axis quantization groups run along (the input features).
_QUANTIZED = ("w_gate", "w_up", "w_down")


# --- decide -----------------------------------------------------------------------------------
def plan_tiers(gate_mass: list[float], tiers: tuple[float, ...]) -> list[str]:
    """HOBBIT-style tiers: fp16 for the top ``tiers[0]`` of gate mass, int8 up to ``tiers[1]``."""
    order = sorted(range(len(gate_mass)), key=lambda e: (-gate_mass[e], e))
    total = float(sum(gate_mass)) or 1.0
    names = PRECISIONS if len(tiers) == 2 else ("fp16", "int4")
    plan = [names[-1]] * len(gate_mass)
    before = 0.0
    for e in order:
        tier = next((i for i, t in enumerate(tiers) if before / total < t), len(tiers))
        plan[e] = names[tier]
        before += gate_mass[e]
    return plan


def plan_budget(
    latency: np.ndarray, error: np.ndarray, budget: float, objective: str = "latency"
) -> list[str]:
    """Greedy plan over ``latency[e, p]`` and ``error[e, p]`` (p indexes :data:`PRECISIONS`).

    ``objective="latency"``: lowest latency with ``sum error <= budget``; ``"accuracy"``: lowest
    error with ``sum latency <= budget x sum latency[:, 0]`` (ValueError if unreachable).
    """
    E, P = latency.shape
    level = np.zeros(E, dtype=np.int64)
    lat_cap = budget * float(latency[:, 0].sum())

    def totals() -> tuple[float, float]:
        idx = np.arange(E)
        return float(latency[idx, level].sum()), float(error[idx, level].sum())

    while True:
        lat, err = totals()
        if objective == "accuracy" and lat <= lat_cap * (1 + 1e-12):
            break
        best: tuple[float, int] | None = None
        for e in range(E):
            if level[e] + 1 >= P:
                continue
            d_lat = float(latency[e, level[e]] - latency[e, level[e] + 1])
            d_err = max(float(error[e, level[e] + 1] - error[e, level[e]]), 0.0)
            if objective == "latency":
                if err + d_err > budget * (1 + 1e-12):
                    continue
                score = d_lat / max(d_err, 1e-30)
            else:
                score = -d_err / max(d_lat, 1e-30)
            if best is None or score > best[0]:
                best = (score, e)
        if best is None:
            if objective == "accuracy":
                raise ValueError(
                    f"latency budget {budget} of all-fp16 is unreachable: int4 everywhere gives "
                    f"{float(latency[:, -1].sum()) / max(float(latency[:, 0].sum()), 1e-30):.4g}"
                )
            break
        level[best[1]] += 1
    return [PRECISIONS[int(i)] for i in level]


# --- measure ----------------------------------------------------------------------------------
def _canonical_to_rows(w: np.ndarray) -> np.ndarray:
    return np.transpose(w, (0, 2, 1))  # [E, d, F] -> [E, F, d] (output channels x inputs)


def quantized_expert_weights(
    layer: MoELayer, experts: list[int], precision: str, block: int | None
) -> dict[str, np.ndarray]:
    """Canonical weights of ``experts`` (stacked [n, ...]) at ``precision``."""
    out: dict[str, np.ndarray] = {}
    for key in _QUANTIZED:
        if not layer.has(key):
            continue
        w = np.asarray(layer.array(key)[experts], np.float32)
        q = apply_precision(
            _canonical_to_rows(w), precision, block if precision == "int4" else None
        )
        out[key] = np.ascontiguousarray(_canonical_to_rows(q))
    return out


def _with_weights(layer: MoELayer, arrays: dict[str, np.ndarray]) -> MoELayer:
    weights = dict(layer.weights)
    for key, arr in arrays.items():
        weights[key] = Weight(layer.weights[key].name, TensorType("f32", arr.shape), arr)
    return dataclasses.replace(
        layer, weights=weights, num_experts=next(iter(arrays.values())).shape[0]
    )


def measured_errors(
    layer: MoELayer, ids: np.ndarray, gates: np.ndarray, x: np.ndarray, block: int | None
) -> np.ndarray:
    """``error[e, p]``: gate-weighted relative output error of expert e at precision p."""
    E = layer.num_experts
    err = np.zeros((E, len(PRECISIONS)))
    for p, precision in enumerate(PRECISIONS):
        q_layer = _with_weights(
            layer, quantized_expert_weights(layer, list(range(E)), precision, block)
        )
        for e in range(E):
            rows, slots = np.nonzero(ids == e)
            if not rows.size:
                continue
            g = np.asarray(gates[rows, slots], np.float64)
            ref = expert_ffn(layer, e, x[rows]).astype(np.float64)
            got = expert_ffn(q_layer, e, x[rows]).astype(np.float64)
            denom = float((g * np.linalg.norm(ref, axis=1)).sum())
            num = float((g * np.linalg.norm(got - ref, axis=1)).sum())
            err[e, p] = num / denom if denom > 0 else 0.0
    return err


def nominal_errors(layer: MoELayer, block: int | None, seed: int) -> np.ndarray:
    """Relative weight error per precision of a seeded Gaussian proxy of one expert matrix."""
    rng = np.random.default_rng(seed)
    K, N = min(layer.hidden, 512), min(layer.ffn, 512)
    if block and K % block:
        K = max(block, K - K % block)
    w = rng.standard_normal((1, N, K)).astype(np.float32)
    row = [
        float(np.linalg.norm(apply_precision(w, p, block) - w) / np.linalg.norm(w))
        for p in PRECISIONS
    ]
    return np.tile(np.array(row), (layer.num_experts, 1))


def expert_latency(
    layer: MoELayer, target: Target, routed_frac: list[float], tokens: int
) -> np.ndarray:
    """``latency[e, p]``: expected seconds to stream and compute expert e at precision p."""
    params = layer.expert_param_count()
    flops = layer.flops_per_token_expert()
    lat = np.zeros((layer.num_experts, len(PRECISIONS)))
    for p, precision in enumerate(PRECISIONS):
        nbytes = params * bytes_per_element(precision)
        load = typical_dram_time(target, nbytes)
        for e, frac in enumerate(routed_frac):
            if target.ideal:
                work = compute_time(target, 0, flops * frac * tokens, precision)
            else:  # the array's shape: a few tokens cost about a weight-tile load per fold
                n = math.ceil(frac * tokens)
                work = (
                    slice_compute_time(
                        target,
                        0,
                        n,
                        layer.hidden,
                        layer.ffn,
                        layer.gated,
                        precision,
                        layer.activation if layer.activation in ACTIVATION_OPS else None,
                    )  # fmt: skip
                    if n > 0
                    else 0.0
                )
            lat[e, p] = frac * load + work
    return lat


# --- the pass ---------------------------------------------------------------------------------
@register
@dataclass(frozen=True)
class AssignPrecision(ModulePass):
    """Per-expert precision from importance and cost; weights replaced by their dequantized values."""

    name = "assign-precision"
    tiers: tuple[float, ...] = ()
    budget: float = -1.0
    objective: str = "latency"
    block: int = 0
    target: str = "fsedp-2x2"
    seed: int = 0
    tokens: int = 64
    trace: str = ""

    def __post_init__(self) -> None:
        if bool(self.tiers) == (self.budget >= 0):
            raise ValueError("give exactly one of tiers=A/B or budget=X")
        if self.tiers:
            t = self.tiers
            if len(t) > 2 or any(not 0 < v <= 1 for v in t) or list(t) != sorted(t):
                raise ValueError(f"tiers must be 1 or 2 ascending shares in (0, 1], found {t}")
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be one of {', '.join(OBJECTIVES)}, found {self.objective!r}"
            )
        if self.block < 0 or self.block == 1:
            raise ValueError(f"block must be 0 (per channel) or >= 2, found {self.block}")
        if self.tokens < 1:
            raise ValueError(f"tokens must be >= 1, found {self.tokens}")

    def _plan(
        self, layer: MoELayer, target: Target | None, cal_x: np.ndarray | None,
        ids: np.ndarray, gates: np.ndarray,
    ) -> tuple[list[str], np.ndarray | None]:  # fmt: skip
        block = self.block or None
        if self.tiers:
            mass = layer.annotations.gate_mass
            if mass is None:
                raise PassError(
                    "no gate_mass annotation: run annotate-importance first", layer.name
                )
            errors = measured_errors(layer, ids, gates, cal_x, block) if cal_x is not None else None
            return plan_tiers(list(mass), self.tiers), errors
        importance = layer.annotations.importance
        frac = layer.annotations.routed_frac
        if importance is None or frac is None:
            raise PassError("no importance annotation: run annotate-importance first", layer.name)
        if cal_x is not None:
            errors = measured_errors(layer, ids, gates, cal_x, block)
        else:
            errors = nominal_errors(layer, block, self.seed)
        weighted = errors * np.asarray(importance, np.float64)[:, None]
        assert target is not None
        latency = expert_latency(layer, target, list(frac), int(ids.shape[0]))
        try:
            return plan_budget(latency, weighted, self.budget, self.objective), errors
        except ValueError as err:
            raise PassError(str(err), layer.name) from None

    def run(self, module: Module) -> PassResult:
        layers: list[MoELayer] = [op.layer for op in module.moe_ops()]
        if not layers:
            return PassResult(module, False)
        target = None
        if not self.tiers:
            try:
                target = load_target(self.target)
            except MoecError as err:
                raise PassError(f"option target: {err.one_line()}", self.name) from None
        block = self.block or None
        for lay in layers:
            for dim in (lay.hidden, lay.ffn):
                if (block and dim % block) or dim % 2:
                    raise PassError(
                        f"block {self.block} does not divide the expert's dimensions "
                        f"(hidden {lay.hidden}, ffn {lay.ffn}; int4 needs them even)",
                        lay.name,
                    )
        cals = calibrate(module, seed=self.seed, tokens=self.tokens, trace=trace_spec(self.trace))
        for lay, cal in zip(layers, cals, strict=True):
            x = cal.x if lay.weights_present else None
            plan, errors = self._plan(lay, target, x, cal.ids, cal.gates)
            apply_plan(lay, plan, block)
            if errors is not None:
                idx = [PRECISIONS.index(p) for p in plan]
                lay.annotations.quant_error = rounded(errors[np.arange(len(plan)), idx])
        return PassResult(module, True)


def apply_plan(layer: MoELayer, plan: list[str], block: int | None) -> None:
    """Quantize each expert to its precision and store the dequantized weights and the table."""
    if len(plan) != layer.num_experts:
        raise PassError(
            f"precision plan has {len(plan)} entries for {layer.num_experts} experts", layer.name
        )
    if layer.weights_present:
        arrays = {
            k: np.array(layer.array(k), np.float32, copy=True) for k in _QUANTIZED if layer.has(k)
        }
        for precision in PRECISIONS:
            experts = [e for e, p in enumerate(plan) if p == precision]
            if not experts:
                continue
            for key, q in quantized_expert_weights(layer, experts, precision, block).items():
                arrays[key][experts] = q
        for key, arr in arrays.items():
            layer.weights[key] = Weight(layer.weights[key].name, TensorType("f32", arr.shape), arr)
    layer.annotations.precision = list(plan)
    if block:
        layer.annotations.quant_block = block
    else:
        layer.annotations.quant_block = None
