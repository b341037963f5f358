"""The slice choices' shared test case: Phi-3.5-MoE's first MoE layer on fsedp-2x2 under a
seeded Zipf(1.0) trace, at a given SRAM per die (``tests/test_expert_slices.py``,
``tests/test_fsedp_slices.py``)."""

from __future__ import annotations

from moec.compiler.bench.spec import load_bench_model, truncate
from moec.ir.graph import Module
from moec.ir.routing import RoutingTrace
from moec.ir.routing_synth import SynthSpec, parse_routing_spec
from moec.ir.stream import TargetRef


def phi_case(sram_mib: float, tokens: int) -> tuple[Module, TargetRef, RoutingTrace]:
    """(one-layer module, target with ``sram_mib`` per die, its routing of ``tokens``)."""
    module = truncate(load_bench_model("phi3.5-moe").module, 1)
    ref = TargetRef("fsedp-2x2", (("sram_mib_per_die", sram_mib),))
    spec = parse_routing_spec("synth:zipf=1.0,seed=0")
    assert isinstance(spec, SynthSpec)
    m = module.moe_ops()[0].layer
    trace = spec.make([(m.num_experts, m.top_k)], tokens, 4, model="phi3.5-moe")
    return module, ref, trace
