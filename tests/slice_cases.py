"""The slice choices' shared test cases: Phi-3.5-MoE's first MoE layer on fsedp-2x2 under a
seeded Zipf(1.0) trace, at a given SRAM per die (``tests/test_expert_slices.py``,
``tests/test_fsedp_slices.py``), and any bench model's first layers on any target
(``tests/test_fsedp_slices_*.py``)."""

from __future__ import annotations

from moec.compiler.bench.spec import load_bench_model, truncate
from moec.ir.graph import Module
from moec.ir.routing import RoutingTrace
from moec.ir.routing_synth import SynthSpec, parse_routing_spec
from moec.ir.stream import TargetRef
from moec.ir.target import load_target


def phi_case(sram_mib: float, tokens: int) -> tuple[Module, TargetRef, RoutingTrace]:
    """(one-layer module, target with ``sram_mib`` per die, its routing of ``tokens``)."""
    module = truncate(load_bench_model("phi3.5-moe").module, 1)
    ref = TargetRef("fsedp-2x2", (("sram_mib_per_die", sram_mib),))
    spec = parse_routing_spec("synth:zipf=1.0,seed=0")
    assert isinstance(spec, SynthSpec)
    m = module.moe_ops()[0].layer
    trace = spec.make([(m.num_experts, m.top_k)], tokens, 4, model="phi3.5-moe")
    return module, ref, trace


def bench_case(
    model: str, target: str, overrides: tuple, tokens: int, layers: int = 1
) -> tuple[Module, TargetRef, RoutingTrace]:
    """(``model``'s first ``layers`` layers, ``target`` with ``overrides``, a seeded Zipf(1.0)
    routing of ``tokens`` over its dies)."""
    module = truncate(load_bench_model(model).module, layers)
    ref = TargetRef(target, overrides)
    spec = parse_routing_spec("synth:zipf=1.0,seed=0")
    assert isinstance(spec, SynthSpec)
    shapes = [(op.layer.num_experts, op.layer.top_k) for op in module.moe_ops()]
    dies = load_target(target, dict(overrides)).num_dies
    return module, ref, spec.make(shapes, tokens, dies, model=model)
