"""The layer-by-layer run (issue 19) gives the whole program's report, with memory flat in layers."""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from moec.backends.interp import layered
from moec.backends.interp.layered import plan_parts, walk_part
from moec.backends.interp.simulate import RunResult, gc_paused, simulate
from moec.bench import _Workloads, moe_metrics
from moec.compiler.lower import lower
from moec.ir.routing import RoutingTrace
from moec.ir.stream import Program, TargetRef, load_program
from moec.ir.stream.program import Free, Load, Recv, Send, Signal, SliceRef
from moec.ir.target import load_target
from moec.run import run_program

GOLDEN = Path(__file__).parent / "golden" / "msp"
ENERGY = ("energy_j", "energy_breakdown_j", "energy_per_die_j", "energy_per_token_j")


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-30)
    return bool(a == b)


def assert_same_run(whole: RunResult, layered: RunResult) -> None:
    """Every figure of the two reports equal; energy to float rounding (a transfer's joules
    reach the other die's sum in another order); ``moe_metrics`` (bench rows) bit-equal."""
    assert layered.timeline.summary is not None and layered.expanded is None
    assert whole.timeline.summary is None
    a, b = whole.report.to_dict(), layered.report.to_dict()
    ea, eb = [a.pop(k, None) for k in ENERGY], [b.pop(k, None) for k in ENERGY]
    assert json.dumps(a) == json.dumps(b)
    assert _close(ea, eb)
    assert repr(moe_metrics(whole.timeline)) == repr(moe_metrics(layered.timeline))
    assert len(whole.routings) == len(layered.routings)
    for x, y in zip(whole.routings, layered.routings, strict=True):
        assert x.name == y.name
        assert (x.ids == y.ids).all() and (x.gates == y.gates).all()
        assert (x.home_die == y.home_die).all()


#: the tiny models' goldens in the default run, the 9 Phi-3.5-MoE ones (20 s each) slow
GOLDENS = [
    n if n.startswith("tiny") else pytest.param(n, marks=pytest.mark.slow)
    for n in sorted(p.name for p in GOLDEN.glob("*.msp"))
]


@pytest.mark.parametrize("name", GOLDENS)
def test_layered_run_equals_the_whole_run_on_every_golden(name: str) -> None:
    program = load_program(str(GOLDEN / name))
    assert plan_parts(program) is not None  # every shipped program is cut at its barriers
    for ideal in ("true", "false") if name.startswith("tiny") else ("false",):
        runs = [
            run_program(
                program,
                base_dir=str(GOLDEN),
                routing="synth:zipf=1.0,seed=0",
                overrides=[("ideal", ideal)],
                allow_overflow=True,
                layered=layered,
            )  # fmt: skip
            for layered in (False, True)
        ]
        assert_same_run(*runs)


@pytest.mark.parametrize("strategy", ["ep", "fsedp-paired", "fsedp-buf"])
def test_layered_numerics_run_equals_the_whole_run(strategy: str) -> None:
    from moec.compiler.cli.main import main

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "p.msp"
        assert main(["compile", "tiny_deepseek", "-o", str(out), "--strategy", strategy]) in (
            0,
            None,
        )
        runs = [run_program(str(out), layered=layered) for layered in (False, True)]
    assert runs[0].outputs is not None and runs[1].outputs is not None
    for k, v in runs[0].outputs.items():
        assert (v == runs[1].outputs[k]).all()
    assert_same_run(*runs)


def _shape_only(layers: int, tokens: int, strategy: str) -> tuple[Program, RoutingTrace]:
    """Qwen3-30B-A3B's first ``layers`` MoE layers (shape only) lowered for ``strategy`` on
    fsedp-2x2, with the bench's seeded routing."""
    with tempfile.TemporaryDirectory() as tmp:
        work = _Workloads("synth:zipf=1.0,seed=0", "sample", tmp)
        module = work.module("qwen3-30b-a3b", layers, "")
        trace = work.trace("qwen3-30b-a3b", layers, tokens, 4)
        return lower(module, TargetRef("fsedp-2x2"), strategy, {}, trace), trace


@pytest.mark.parametrize("strategy", ["ep", "fsedp-paired"])
def test_per_layer_latencies_equal_the_layers_run_one_by_one(strategy: str) -> None:
    target = load_target("fsedp-2x2")
    program, trace = _shape_only(4, 64, strategy)
    whole = simulate(program, target=target, routings=trace, layered=True)
    spans = whole.report.layers
    assert [s.name for s in spans] == [m.name for m in program.layers]
    alone, _ = _shape_only(1, 64, strategy)
    for k, lr in enumerate(trace.layers):
        one = RoutingTrace(
            trace.model, trace.num_dies, [dataclasses.replace(lr, name=alone.layers[0].name)]
        )
        single = simulate(alone, target=target, routings=one)
        assert math.isclose(single.report.layers[0].latency_s, spans[k].latency_s, rel_tol=1e-9)


def _peak_bytes(layers: int, layered: bool = True) -> int:
    target = load_target("fsedp-2x2")
    program, trace = _shape_only(layers, 16, "fsedp-paired")
    tracemalloc.start()
    try:
        with gc_paused():  # as moec bench runs it: cycles of finished parts collected by the run
            simulate(program, target=target, routings=trace, layered=layered)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_layered_run_memory_is_flat_in_layers() -> None:
    _peak_bytes(1)  # first-use caches (expander modules, cost tables) out of the comparison
    two, six = _peak_bytes(2), _peak_bytes(6)
    # one layer's instructions and ops alive at a time: 3x the layers, not 3x the memory (with
    # the collector paused and no collection between parts this read 16.0 MB against 8.8 MB)
    assert six < 1.3 * two, (two, six)


def test_a_paused_run_freezes_the_callers_objects_and_thaws_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the collector paused (``simulate`` pauses it), the objects made before the run are
    frozen while it runs (the collections between parts skip them) and thawed after; with
    objects a caller froze, nothing is frozen or thawed."""
    target = load_target("fsedp-2x2")
    program, trace = _shape_only(2, 16, "ep")
    frozen: list[int] = []
    run = layered._run_parts

    def spy(*a: Any) -> Any:
        frozen.append(gc.get_freeze_count())
        return run(*a)

    monkeypatch.setattr(layered, "_run_parts", spy)
    simulate(program, target=target, routings=trace, layered=True)
    assert frozen and frozen[0] > 0 and gc.get_freeze_count() == 0
    gc.freeze()
    try:
        mine = gc.get_freeze_count()
        with gc_paused():
            simulate(program, target=target, routings=trace, layered=True)
        assert frozen[-1] == mine == gc.get_freeze_count()
    finally:
        gc.unfreeze()


def _fill(slot: int = 1) -> Load:
    return Load(slot, 0, SliceRef("moe0", 0, 0), 64)


@pytest.mark.parametrize(
    "streams, want",
    [
        ({0: [_fill(), Free(1)]}, (True, False)),
        ({0: [_fill(), Free(1), _fill()]}, (False, False)),  # filled again, never freed
        ({0: [Free(1), _fill()]}, (False, False)),
        ({0: [Send(1, 64)], 1: [Recv(0, 64)]}, (True, False)),
        ({0: [Send(1, 64)], 1: [Recv(0, 64, slot=2)]}, (False, False)),  # the recv's slot held
        ({0: [Send(1, 64)], 1: []}, (False, False)),  # a send another part receives
        ({0: [Recv(1, 64)], 1: [Send(0, 64), Send(0, 64)]}, (False, False)),
        ({0: [Signal("moe0.deferred")], 1: [_fill()]}, (False, True)),
        ({0: [Signal("moe0"), Signal("moe1.deferred")]}, (True, True)),
    ],
)
def test_walk_part_finds_what_a_part_leaves_to_another(streams: dict, want: tuple) -> None:
    assert walk_part(streams) == want


@pytest.mark.parametrize("strategy", ["ep", "fsedp-r5", "fsedp-buf"])
def test_one_layer_bytes_are_its_ops_bytes(
    strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:  # fmt: skip
    """A layered part's DRAM and link bytes, taken from the op-graph builder's counts, equal
    the bytes of its loads' and transfers' instructions (the per-op sums of ``_layers``)."""
    import numpy as np

    from moec.backends.interp import summary

    seen: list[tuple[list[tuple[int, int]], list[tuple[int, int]]]] = []

    def both(tl: Any) -> list[summary.LayerPart]:
        fast = summary.layer_parts(tl)
        ref = summary._layers(tl, np.asarray(tl.layer, np.int64))
        seen.append(
            (
                [(p.dram_bytes, p.link_bytes) for p in fast],
                [(p.dram_bytes, p.link_bytes) for p in ref],
            )
        )
        return fast

    monkeypatch.setattr(layered, "layer_parts", both)
    program, trace = _shape_only(2, 16, strategy)
    simulate(program, target=load_target("fsedp-2x2"), routings=trace, layered=True)
    moved = [f for f, _ in seen if f]
    assert len(moved) == 2 and all(d > 0 for ((d, _),) in moved)
    assert all(fast == ref for fast, ref in seen)
