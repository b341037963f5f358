"""FSE-DP's hard lower bound (``iteration_bound`` in ``backends/interp/expand/fsedp.py``): each
die's compute summed once per kind of slice (``Unit.alike``) gives the same float as one call
per slice, as the bound was first written (kept here as the reference)."""

from __future__ import annotations

import pytest
from slice_cases import bench_case, phi_case

from moec.backends.interp.expand.fsedp import _context, _iteration, iteration_bound
from moec.compiler.lower import lower as lower_strategy
from moec.ir.cost import dram_occupancy
from moec.ir.routing import LayerRouting, RoutingTrace
from moec.ir.stream import Program, TargetRef
from moec.ir.target import Target, load_target


def _per_slice(p: Program, target: Target, layer: str, routing: LayerRouting) -> float:
    """The bound slice by slice and die by die: one occupancy and one compute call each."""
    prob = _iteration(_context(p, target, layer, routing)).problem
    held = [0.0] * len(target.channels)
    busy = [0.0] * target.num_dies
    reads = 1
    for u in prob.units:
        if not u.tokens:
            continue
        if prob.rules == "naive":
            reads = len(u.tokens)
        for j, nbytes in enumerate(u.slice_bytes):
            held[u.channels[j]] += reads * dram_occupancy(target, u.channels[j], nbytes)
            for d in u.tokens:
                busy[d] += sum(u.compute(d, j))
    return max(max(held, default=0.0), max(busy, default=0.0))


def _bounds(
    case: tuple[object, TargetRef, RoutingTrace], strategy: str, slices: int
) -> tuple[float, float]:
    module, ref, trace = case
    target = load_target(ref.spec, dict(ref.overrides))
    p = lower_strategy(module, ref, strategy, {"slices": str(slices)}, trace, fit_only=True)
    name, r0 = p.layers[0].name, trace.layers[0]
    return iteration_bound(p, target, name, r0), _per_slice(p, target, name, r0)


@pytest.mark.parametrize("strategy", ["fsedp-naive", "fsedp", "fsedp-r5", "fsedp-buf"])
@pytest.mark.parametrize("slices", [12, 16, 48])  # 12 and 48 cut Phi's 3200 columns unevenly
def test_the_bound_is_the_per_slice_sum_to_the_bit(strategy: str, slices: int) -> None:
    fast, slow = _bounds(phi_case(64.0, 256), strategy, slices)
    assert fast == slow and fast > 0


@pytest.mark.parametrize("tokens", [64, 1024])  # DRAM-bound, compute-bound
def test_the_bound_with_shared_experts_is_the_per_slice_sum(tokens: int) -> None:
    # DeepSeek-MoE-16B: two shared experts (a unit of their own, on every die with tokens)
    case = bench_case("deepseek-moe-16b", "fsedp-4x4", (), tokens)
    for slices in (9, 16):
        fast, slow = _bounds(case, "fsedp-paired", slices)
        assert fast == slow and fast > 0
