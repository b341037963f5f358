"""Shared fixtures of the strategy tests: a hand-sized target and MoE layer, runs, coverage.

The ``hand`` target makes every duration a round number: 2 dies in a row, 1e12 FLOP/s each
(500 MACs at 1 GHz, fp16), one DRAM channel per die at 1 GB/s, links of 1 GB/s, no latencies. The
layer has hidden 10 and FFN 20 at fp16, so a whole expert (one micro-slice) is
3 x 10 x 20 x 2 = 1200 bytes (1200 ns to load) and a token's activations are 20 bytes (20 ns
per hop).
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from moec.backends.interp import RunResult, simulate
from moec.compiler.lower import lower
from moec.ir.graph import Builder, Module, TensorType
from moec.ir.moe import MoELayer, declared
from moec.ir.routing import LayerRouting, RoutingTrace
from moec.ir.stream import Accum, Program, SliceRef, TargetRef

HAND_TOML = """\
name = "hand"
topology = "mesh"
dies_x = 2
dies_y = 1
ideal = true

[die]
macs = 500
clock_mhz = 1000
sram_mib = 1

[d2d]
gbps = 1
latency_ns = 0

[dram]
placement = "all"
gbps_per_channel = 1
latency_ns = 0
"""

NS = 1e-9


def hand_target(folder: Path) -> str:
    path = folder / "hand.toml"
    path.write_text(HAND_TOML)
    return os.fspath(path)


def moe_module(experts: int, top_k: int, tokens: int, hidden: int = 10, ffn: int = 20) -> Module:
    """A module that is one shape-only MoE layer (fp16 at lowering)."""
    m = Module("hand")
    b = Builder(m)
    x = b.input("x", TensorType("f16", (tokens, hidden)))
    weights = {
        "router_w": declared("router_w", "f16", (experts, hidden)),
        "w_gate": declared("w_gate", "f16", (experts, hidden, ffn)),
        "w_up": declared("w_up", "f16", (experts, hidden, ffn)),
        "w_down": declared("w_down", "f16", (experts, ffn, hidden)),
    }
    layer = MoELayer("moe0", experts, top_k, hidden, ffn, weights)
    op = b.op("moe", [x], ["y"], {"layer": layer}, types=[TensorType("f16", (tokens, hidden))])
    m.outputs.append(op.outputs[0])
    return m


def routing(ids: list[list[int]], home: list[int], experts: int, num_dies: int = 2) -> RoutingTrace:
    a = np.asarray(ids, dtype=np.int64)
    gates = np.full(a.shape, 1.0 / a.shape[1], dtype=np.float32)
    lr = LayerRouting("moe0", experts, a.shape[1], a, gates, np.asarray(home, dtype=np.int64))
    return RoutingTrace("hand", num_dies, [lr])


def run(
    module: Module, target: str, strategy: str, trace: RoutingTrace,
    options: dict[str, str] | None = None,
) -> tuple[Program, RunResult]:  # fmt: skip
    p = lower(module, TargetRef(target), strategy, options or {}, trace)
    return p, simulate(p, routings=trace)


def layer_latency(result: RunResult) -> float:
    """The MoE layer's span (first to last of its instructions)."""
    (span,) = result.report.layers
    return span.latency_s


def coverage(expanded: Program) -> Counter[tuple[int, int, int]]:
    """How often each (token, expert, slice) is accumulated in an expanded program."""
    out: Counter[tuple[int, int, int]] = Counter()
    for st in expanded.streams:
        held: dict[int, SliceRef] = {}
        for i in st.instrs:
            content = getattr(i, "content", None)
            if isinstance(content, SliceRef) and getattr(i, "slot", None) is not None:
                held[i.slot] = content  # type: ignore[attr-defined]
            if isinstance(i, Accum):
                c = held[i.slot]
                if c.expert is not None:
                    for t in i.tokens:
                        out[(t, c.expert, c.slice)] += 1
    return out


def expected_coverage(trace: RoutingTrace, slices: int) -> Counter[tuple[int, int, int]]:
    lr = trace.layers[0]
    return Counter(
        (t, int(e), j) for t in range(lr.tokens) for e in lr.ids[t] for j in range(slices)
    )
