"""Bench metrics count each byte once, on the resource that moves it.

A DRAM load from a channel on another die is one timeline op on the channel and one per hop of
its route: its bytes are DRAM bytes once and link bytes once per hop.
"""

from __future__ import annotations

import pytest

from moec.backends.interp import simulate
from moec.bench import moe_metrics
from moec.compiler.bench.spec import load_bench_model, truncate
from moec.compiler.lower import lower, parse_strategy
from moec.ir.routing_synth import synth_zipf
from moec.ir.stream import TargetRef
from moec.ir.stream.program import HOST_CHANNEL, Load, Recv
from moec.ir.target import load_target


@pytest.mark.parametrize("strategy", ["ep", "fsedp-r5", "tp"])
def test_dram_and_link_bytes_match_the_expanded_program(strategy: str) -> None:
    target = load_target("fsedp-3x3")  # channels on the corner dies only: remote loads happen
    # two of Qwen3's 48 layers: a layer-to-layer hand-off is in, and the run takes a second
    module = truncate(load_bench_model("qwen3-30b-a3b").module, 2)
    name, options = parse_strategy(strategy)
    program = lower(module, TargetRef("fsedp-3x3"), name, options, None, tokens=32)
    layers = [(m.name, 128, 8) for m in program.layers]
    trace = synth_zipf(len(layers), 128, 8, 32, seed=0, num_dies=target.num_dies)
    result = simulate(program, routings=trace)
    metrics = moe_metrics(result.timeline)

    dram = link = 0
    for stream in result.expanded.streams:
        for instr in stream.instrs:
            if isinstance(instr, Load) and instr.channel != HOST_CHANNEL:
                dram += instr.nbytes
                link += instr.nbytes * target.hops(target.channel(instr.channel).die, stream.die)
            elif isinstance(instr, Recv):
                link += instr.nbytes
    assert metrics["dram_bytes"] == dram
    assert metrics["link_bytes"] == link
    assert dram == result.report.total_dram_bytes - sum(i.nbytes for i in program.islands)
