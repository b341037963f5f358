"""A layer-by-layer run past a die's SRAM stops at the first layer that overflows (issue 19)."""

from __future__ import annotations

import dataclasses
import sys
import tempfile

import pytest
from sram_cases import under_reserve

import moec.backends.interp.simulate  # noqa: F401 - the module, for its expand_runtime
from moec.bench import _Workloads
from moec.compiler.lower import lower
from moec.ir.errors import ScheduleError
from moec.ir.routing import LayerRouting, RoutingTrace
from moec.ir.stream import Program, TargetRef
from moec.ir.target import load_target

sim = sys.modules["moec.backends.interp.simulate"]  # the package exports simulate, a function


def _program(monkeypatch: pytest.MonkeyPatch) -> tuple[Program, RoutingTrace]:
    """Phi-3.5-MoE's first 4 MoE layers at 256 tokens under EP on fsedp-2x2, slots sized by the
    uniform-routing estimate; layers 0 and 1 routed uniformly (they fit), 2 and 3 by the bench's
    Zipf routing (the hot experts' dies gather more tokens than reserved: they do not)."""
    under_reserve(monkeypatch)
    with tempfile.TemporaryDirectory() as tmp:
        flat = _Workloads("synth:zipf=0.0,seed=0", "sample", tmp).trace("phi3.5-moe", 4, 256, 4)
        work = _Workloads("synth:zipf=1.0,seed=0", "sample", tmp)
        module = work.module("phi3.5-moe", 4, "")
        skewed = work.trace("phi3.5-moe", 4, 256, 4)
        mixed: list[LayerRouting] = [*flat.layers[:2], *skewed.layers[2:]]
        trace = dataclasses.replace(skewed, layers=mixed)
        return lower(module, TargetRef("fsedp-2x2"), "ep", {}, trace), trace


def test_layered_run_stops_at_the_first_layer_past_sram(monkeypatch: pytest.MonkeyPatch) -> None:
    program, trace = _program(monkeypatch)
    target = load_target("fsedp-2x2")
    expanded: list[str] = []
    expand = sim.expand_runtime

    def counting(p: Program, t: object, m: object, *a: object) -> object:
        expanded.append(m.name)  # type: ignore[attr-defined]
        return expand(p, t, m, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(sim, "expand_runtime", counting)
    # allowed: every layer runs, and the run went past SRAM
    r = sim.simulate(program, target=target, routings=trace, layered=True, allow_overflow=True)
    assert expanded == ["moe0", "moe1", "moe2", "moe3"]
    assert r.report.extra["sram_over_bytes"] > 0
    # the whole run refuses it only at its end, without naming a layer
    expanded.clear()
    with pytest.raises(
        ScheduleError, match=r"does not fit SRAM: die \d holds \d+ bytes at its pea"
    ):
        sim.simulate(program, target=target, routings=trace)
    assert expanded == ["moe0", "moe1", "moe2", "moe3"]
    # layer by layer: refused at moe2, the first that overflows, and moe3 is never expanded
    expanded.clear()
    with pytest.raises(ScheduleError) as err:
        sim.simulate(program, target=target, routings=trace, layered=True)
    assert expanded == ["moe0", "moe1", "moe2"]
    msg = str(err.value)
    assert msg.startswith(f"{program.name}: does not fit SRAM: die ") and "\n" not in msg
    assert " bytes at its peak in moe2 (" in msg and msg.endswith(
        "(--allow-overflow runs it anyway)"
    )
