"""Interpreter timing sanity: idle-resource cases against the analytic cost model, contention,
backpressure, determinism, and the expanded static program against the original.

On the ideal machine (``ideal = true``): the cases derive peak-rate arithmetic by hand; the
calibrated terms through the interpreter are in ``test_interp_calibrated.py``."""

from __future__ import annotations

from dataclasses import replace

import pytest

from moec.backends.interp import simulate
from moec.backends.interp.timing import DELAY, Timeline, run_timing
from moec.ir.cost import compute_time, dram_time, link_time, load_time
from moec.ir.routing_synth import synth_zipf
from moec.ir.stream import (
    Accum,
    Act,
    Block,
    Dense,
    DieStream,
    Free,
    Gemm,
    Instr,
    IslandDecl,
    Load,
    MoE,
    MoEDecl,
    Program,
    Recv,
    RuntimePolicy,
    Send,
    Signal,
    SliceLayout,
    SliceRef,
    SlotPool,
    TargetRef,
    TokenSet,
    Wait,
    parse_program,
    print_program,
    verify_program,
)
from moec.ir.target import load_target

IDEAL = (("ideal", "true"),)
T2 = load_target("fsedp-2x2", dict(IDEAL))
HIDDEN, FFN, TOKENS = 64, 128, 16
SLICE = SliceRef("moe0", 0, 0)
SLICE_BYTES = 3 * HIDDEN * FFN * 2  # one fp16 slice covering the whole expert


def _program(streams: dict[int, list[Instr]], slots: int = 2, **kw: object) -> Program:
    layer = MoEDecl("moe0", 4, 1, HIDDEN, FFN, TOKENS, "x", "y")
    return Program(
        "t", TargetRef("fsedp-2x2", IDEAL), layers=[layer],
        layouts=[SliceLayout.even("moe0", FFN, 1)],
        slots=[SlotPool(d, slots, SLICE_BYTES) for d in range(4)],
        islands=[IslandDecl("isl", 10**9, 10**6)],
        streams=[DieStream(d, streams.get(d, [])) for d in range(4)], **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def _close(a: float, b: float, tol: float = 0.01) -> bool:
    return abs(a - b) <= tol * abs(b)


def test_compute_bound_dense_matches_analytic() -> None:
    flops = 3 * 10**9
    p = _program({0: [Dense("isl", flops, 0)]})
    r = simulate(p)
    assert _close(r.report.latency_s, compute_time(T2, 0, flops, "fp16"))
    assert _close(r.report.compute_utilization[0], 1.0)


def test_gemm_time_follows_the_slice_precision() -> None:
    tokens = TokenSet.span(0, TOKENS)
    p = _program({0: [Load(0, 0, SLICE, SLICE_BYTES), Gemm(0, tokens), Free(0)]})
    tl = run_timing(p, T2)
    gemm = next(k for k, i in enumerate(tl.instr) if isinstance(i, Gemm))
    flops = 2 * TOKENS * HIDDEN * FFN * 2
    assert _close(tl.end[gemm] - tl.start[gemm], compute_time(T2, 0, flops, "fp16"))
    # the same slice at int8 (half the bytes) runs twice as fast
    p8 = _program({0: [Load(0, 0, SLICE, SLICE_BYTES // 2), Gemm(0, tokens), Free(0)]})
    tl8 = run_timing(p8, T2)
    assert _close(tl8.end[gemm] - tl8.start[gemm], compute_time(T2, 0, flops, "int8"))


def test_dram_bound_load_matches_analytic() -> None:
    p = _program({0: [Load(0, 0, SLICE, SLICE_BYTES), Free(0)]})
    r = simulate(p)
    assert _close(r.report.latency_s, dram_time(T2, 0, SLICE_BYTES))
    assert r.report.dram_bytes == [SLICE_BYTES, 0, 0, 0]
    assert r.report.peak_sram_bytes == [SLICE_BYTES, 0, 0, 0]


def test_load_over_two_hops_is_cut_through() -> None:
    # channel 0 sits on die 0; die 3 is two hops away (0 -> 1 -> 3)
    tl = run_timing(_program({3: [Load(0, 0, SLICE, SLICE_BYTES), Free(0)]}), T2)
    r = simulate(_program({3: [Load(0, 0, SLICE, SLICE_BYTES), Free(0)]}))
    links = [T2.link(0, 1), T2.link(1, 3)]
    ch = T2.channel(0)
    # idle package: the DRAM read streams through both links, each hop adds its latency
    # t = ch.lat + lat(0->1) + lat(1->3) + bytes / min(25.6, 288, 288) GB/s
    expect = (
        ch.latency_s + sum(lk.latency_s for lk in links)
        + SLICE_BYTES / (min(ch.gbps, *(lk.gbps for lk in links)) * 1e9)
    )  # fmt: skip
    assert _close(r.report.latency_s, expect, 1e-9)
    assert _close(r.report.latency_s, load_time(T2, 0, 3, SLICE_BYTES), 1e-9)
    assert r.report.link_bytes["0->1"] == r.report.link_bytes["1->3"] == SLICE_BYTES
    assert r.report.link_bytes["0->2"] == 0
    # occupancy: the channel for the DRAM read, each link only for its own bytes (latency is
    # pipelined and holds nothing): the channel bytes / 25.6 GB/s = dram_time - channel latency,
    # a link bytes / 288 GB/s = link_time - link latency (about a tenth of the read); the last
    # link's hold ends one link latency before the data arrives
    busy = dict(zip(tl.resource_names, tl.busy, strict=True))
    assert _close(busy["ch0 (die 0)"], dram_time(T2, 0, SLICE_BYTES) - ch.latency_s, 1e-9)
    assert _close(busy["link 0->1"], link_time(T2, 0, 1, SLICE_BYTES) - links[0].latency_s, 1e-9)
    assert _close(busy["link 1->3"], link_time(T2, 1, 3, SLICE_BYTES) - links[1].latency_s, 1e-9)
    assert busy["link 0->1"] < 0.2 * busy["ch0 (die 0)"]
    last_hold = max(k for k in _ops(tl, Load) if tl.res[k] == tl.resource_names.index("link 1->3"))
    assert _close(tl.end[last_hold] + links[1].latency_s, tl.makespan, 1e-9)


def _remote_load_and_block(n: int, delay_flops: int = 0) -> Program:
    """Die 0 loads a slice from channel 3 (die 3; route 3 -> 2 -> 0) while die 2 sends an
    ``x`` block of ``n`` bytes to die 0 over link 2 -> 0, after ``delay_flops`` of compute."""
    x = Block("moe0", "x", TokenSet.span(0, TOKENS))
    before: list[Instr] = []
    if delay_flops:
        before = [Dense("isl", delay_flops, 0), Signal("go"), Wait("go", 1)]
    return _program({
        0: [Load(0, 3, SLICE, SLICE_BYTES), Recv(2, n, block=x), Free(0)],
        2: [*before, Send(0, n, block=x)],
    })  # fmt: skip


def _ops(tl: Timeline, cls: type) -> list[int]:
    """The ops of ``cls`` instructions that hold a resource (not their latency delays)."""
    return [k for k, i in enumerate(tl.instr) if isinstance(i, cls) and tl.kind[k] != DELAY]


def _arrival(tl: Timeline, op: int) -> float:
    """When the data of ``op``'s instruction has arrived (the end of its last op)."""
    return max(tl.end[k] for k, i in enumerate(tl.instr) if i is tl.instr[op])


def test_remote_load_does_not_block_a_d2d_transfer_for_the_dram_time() -> None:
    assert T2.route(3, 0) == [3, 2, 0]
    n = TOKENS * HIDDEN * 2
    p = _remote_load_and_block(n)
    verify_program(p)
    tl = run_timing(p, T2)
    (xfer,) = _ops(tl, Send)
    # the block crosses 2 -> 0 at once, not after the 1.9 us DRAM read of the slice
    assert tl.start[xfer] == 0.0
    assert _close(_arrival(tl, xfer), link_time(T2, 2, 0, n), 1e-9)
    # and the load is not delayed either: its hold of 2 -> 0 comes at the end of the read
    assert _close(tl.makespan, load_time(T2, 3, 0, SLICE_BYTES), 1e-9)
    assert tl.makespan > 10 * _arrival(tl, xfer)


def test_d2d_transfer_at_the_loads_tail_delays_its_arrival() -> None:
    # the block leaves die 2 just before the load's data can cross 2 -> 0: the load's hold of
    # that link starts when the block's ends, and the data arrives that much later (a hold is
    # bytes / link bandwidth; the link latency follows it, holding nothing)
    n = 16 * TOKENS * HIDDEN * 2
    read_end = dram_time(T2, 3, SLICE_BYTES) + T2.link(3, 2).latency_s
    at = read_end - 0.5 * SLICE_BYTES / (T2.link(2, 0).gbps * 1e9)  # inside the tail window
    flops = int(at * T2.die(2).flops_per_s("fp16"))
    tl = run_timing(_remote_load_and_block(n, flops), T2)
    (xfer,) = _ops(tl, Send)
    assert _close(tl.start[xfer], at, 1e-6)
    lk = T2.link(2, 0)
    assert _close(tl.end[xfer] - tl.start[xfer], n / (lk.gbps * 1e9), 1e-9)
    assert _close(_arrival(tl, xfer) - tl.start[xfer], link_time(T2, 2, 0, n), 1e-9)
    # the load's hold: bytes / 288 GB/s from the block's hold's end, then the link latency
    arrival = tl.end[xfer] + link_time(T2, 2, 0, SLICE_BYTES)
    assert arrival > load_time(T2, 3, 0, SLICE_BYTES)
    assert _close(tl.makespan, arrival, 1e-9)


def test_block_relayed_over_two_hops_is_two_link_times() -> None:
    ts = TokenSet.span(0, TOKENS)
    n = TOKENS * HIDDEN * 2
    x = Block("moe0", "x", ts)
    p = _program({
        0: [Send(1, n, block=x)],
        1: [Recv(0, n, block=x), Send(3, n, block=x)],
        3: [Recv(1, n, block=x)],
    })  # fmt: skip
    verify_program(p)
    r = simulate(p)
    assert _close(r.report.latency_s, link_time(T2, 0, 1, n) + link_time(T2, 1, 3, n))


def test_two_loads_on_one_channel_take_twice_as_long() -> None:
    one = simulate(_program({0: [Load(0, 0, SLICE, SLICE_BYTES), Free(0)]})).report.latency_s
    two = simulate(
        _program({
            0: [Load(0, 0, SLICE, SLICE_BYTES), Load(1, 0, SliceRef("moe0", 1, 0), SLICE_BYTES),
                Free(0), Free(1)],
        })
    ).report.latency_s  # fmt: skip
    # the channel is held for bytes / bandwidth per load; the latency overlaps the other
    # load's transfer: one = lat + b, two = lat + 2 b = 2 one - lat (twice as long to within
    # lat / b, 100 ns of 1.9 us on fsedp-2x2)
    lat = T2.channel(0).latency_s
    assert _close(two, 2 * one - lat, 1e-9)
    # on two channels they overlap
    par = simulate(
        _program({
            0: [Load(0, 0, SLICE, SLICE_BYTES), Free(0)],
            1: [Load(0, 1, SliceRef("moe0", 1, 0), SLICE_BYTES), Free(0)],
        })
    ).report.latency_s  # fmt: skip
    assert _close(par, one, 1e-9)


def test_back_to_back_loads_pipeline_their_latency() -> None:
    # a channel latency (5 us) larger than a load's transfer (1.92 us): the second load's
    # request goes out while the first one's is still in flight, so the pair takes
    # lat + 2 bytes / bw, not 2 (lat + bytes / bw)
    slow = replace(T2, channels=tuple(replace(c, latency_s=5e-6) for c in T2.channels))
    ch = slow.channel(0)
    b = SLICE_BYTES / (ch.gbps * 1e9)
    p = _program({
        0: [Load(0, 0, SLICE, SLICE_BYTES), Load(1, 0, SliceRef("moe0", 1, 0), SLICE_BYTES),
            Free(0), Free(1)],
    })  # fmt: skip
    tl = run_timing(p, slow)
    assert _close(tl.makespan, ch.latency_s + 2 * b, 1e-9)
    assert tl.makespan < 2 * dram_time(slow, 0, SLICE_BYTES) - 0.9 * ch.latency_s
    busy = dict(zip(tl.resource_names, tl.busy, strict=True))
    assert _close(busy["ch0 (die 0)"], 2 * b, 1e-9)
    # one load alone still takes the idle time
    one = run_timing(_program({0: [Load(0, 0, SLICE, SLICE_BYTES), Free(0)]}), slow)
    assert _close(one.makespan, dram_time(slow, 0, SLICE_BYTES), 1e-9)


def test_back_to_back_transfers_pipeline_their_latency() -> None:
    # two x blocks die 0 -> die 1 over one link with a 5 us latency: lat + 2 bytes / bw
    slow = replace(T2, links=tuple(replace(lk, latency_s=5e-6) for lk in T2.links))
    lk = slow.link(0, 1)
    n = TOKENS // 2 * HIDDEN * 2
    blocks = [Block("moe0", "x", TokenSet.span(a, a + TOKENS // 2)) for a in (0, TOKENS // 2)]
    p = _program({
        0: [Send(1, n, block=x) for x in blocks],
        1: [Recv(0, n, block=x) for x in blocks],
    })  # fmt: skip
    verify_program(p)
    tl = run_timing(p, slow)
    assert _close(tl.makespan, lk.latency_s + 2 * n / (lk.gbps * 1e9), 1e-9)
    assert tl.makespan < 2 * link_time(slow, 0, 1, n) - 0.9 * lk.latency_s
    one = run_timing(
        _program({0: [Send(1, n, block=blocks[0])], 1: [Recv(0, n, block=blocks[0])]}), slow
    )
    assert _close(one.makespan, link_time(slow, 0, 1, n), 1e-9)


def _two_slices(slots: int) -> Program:
    ts = TokenSet.span(0, TOKENS)
    body: list[Instr] = []
    for e in range(2):
        s = e % slots
        body += [Load(s, 0, SliceRef("moe0", e, 0), SLICE_BYTES), Gemm(s, ts), Act(s, ts),
                 Accum(s, ts), Free(s)]  # fmt: skip
    return _program({0: body}, slots=slots)


def test_backpressure_one_slot_serializes_loads_behind_compute() -> None:
    tl = run_timing(_two_slices(1), T2)
    loads, accums = _ops(tl, Load), _ops(tl, Accum)
    # the second load waits for the first slice's compute (free) to finish
    assert tl.start[loads[1]] == pytest.approx(tl.end[accums[0]])
    assert tl.peak_slot_bytes == [SLICE_BYTES, 0, 0, 0]
    # + activations: the 16 home tokens' x (fp16) and y (fp32), and h of the slice in flight
    # (16 tokens x 128 columns x gate and up, fp32)
    acts = TOKENS * HIDDEN * (2 + 4) + TOKENS * FFN * 2 * 4
    assert tl.peak_sram == [SLICE_BYTES + acts, 0, 0, 0]
    tl2 = run_timing(_two_slices(2), T2)
    # with two slots the second load follows the first on the channel, during compute
    assert tl2.start[loads[1]] == pytest.approx(tl2.end[loads[0]])
    assert tl2.makespan < tl.makespan
    assert tl2.peak_slot_bytes == [2 * SLICE_BYTES, 0, 0, 0]
    assert tl2.peak_sram == [2 * SLICE_BYTES + acts, 0, 0, 0]


def test_wait_blocks_issue_until_signals() -> None:
    flops = 10**9
    p = _program({
        0: [Dense("isl", flops, 0), Signal("b")],
        1: [Wait("b", 1), Dense("isl", flops, 0)],
    })  # fmt: skip
    r = simulate(p)
    assert _close(r.report.latency_s, 2 * compute_time(T2, 0, flops))


def _ep_program(layers: int = 2, tokens: int = 32, experts: int = 8) -> Program:
    decls = [MoEDecl(f"moe{i}", experts, 2, 64, 128, tokens, f"x{i}", f"y{i}")
             for i in range(layers)]  # fmt: skip
    streams = []
    for d in range(4):
        ins: list[Instr] = []
        for i in range(layers):
            ins += [Dense(f"isl{i}", 10**6, 10**4), Signal(f"b{i}"), Wait(f"b{i}", 4),
                    MoE(f"moe{i}"), Signal(f"m{i}"), Wait(f"m{i}", 4)]  # fmt: skip
        streams.append(DieStream(d, ins))
    return Program(
        "ep", TargetRef("fsedp-2x2", IDEAL), layers=decls,
        slots=[SlotPool(d, 2, 3 * 64 * 64 * 2) for d in range(4)],
        islands=[IslandDecl(f"isl{i}", 4 * 10**6, 4 * 10**4) for i in range(layers)],
        streams=streams,
        runtime=[RuntimePolicy(f"moe{i}", "ep", {"placement": [e % 4 for e in range(experts)]})
                 for i in range(layers)],
    )  # fmt: skip


def test_expanded_static_program_gives_the_same_report() -> None:
    p = _ep_program()
    trace = synth_zipf(2, 8, 2, 32, seed=3)
    a = simulate(p, routings=trace, record_trace=True)
    text = print_program(a.expanded)
    static = parse_program(text, "expanded.msp")
    assert static.is_static
    verify_program(static)
    b = simulate(static, record_trace=True)
    assert a.report.to_json() == b.report.to_json()
    assert a.chrome_trace == b.chrome_trace
    # a layout was added (the program declares none): two slices of 64 columns per expert
    assert static.layout("moe0") == SliceLayout.even("moe0", 128, 2)


def test_runs_are_deterministic() -> None:
    p = _ep_program()
    trace = synth_zipf(2, 8, 2, 32, seed=1)
    a = simulate(p, routings=trace, record_trace=True)
    b = simulate(_ep_program(), routings=synth_zipf(2, 8, 2, 32, seed=1), record_trace=True)
    assert a.report.to_json() == b.report.to_json()
    assert a.chrome_trace == b.chrome_trace
    assert print_program(a.expanded) == print_program(b.expanded)


def test_ep_moves_every_routed_pair_once() -> None:
    p = _ep_program(layers=1, tokens=64, experts=8)
    trace = synth_zipf(1, 8, 2, 64, seed=5)
    r = simulate(p, routings=trace)
    lr = trace.layers[0]
    load = lr.expert_load()
    gemm_tokens = [0] * 8
    for st in r.expanded.streams:
        holds: dict[int, int] = {}
        for i in st.instrs:
            if isinstance(i, Load) and isinstance(i.content, SliceRef):
                assert i.content.expert is not None
                holds[i.slot] = i.content.expert
                assert st.die == i.content.expert % 4  # runs on its placement die
            elif isinstance(i, Gemm):
                gemm_tokens[holds[i.slot]] += len(i.tokens)
    # two slices per expert, each computing every routed token once
    assert gemm_tokens == [2 * int(n) for n in load]
    assert r.report.latency_s > 0


@pytest.mark.slow
def test_qwen3_all_layers_run(tmp_path: object) -> None:
    """Issue 4's benchmark workload runs whole: Qwen3-30B-A3B, 256 tokens, 48 layers, EP on
    fsedp-2x2, synthetic trace (its speed is printed by ``scripts/bench_interp.py``)."""
    from pathlib import Path

    from moec.compiler.cli.main import main
    from moec.ir.stream import load_program

    path = Path(str(tmp_path)) / "q.msp"
    assert main(["compile", "qwen3-30b-a3b", "-o", str(path), "--tokens", "256"]) == 0
    p = load_program(str(path))
    trace = synth_zipf(48, 128, 8, 256, zipf=1.0, seed=0)
    r = simulate(p, routings=trace)
    moe = [layer for layer in r.report.layers if layer.name.startswith("moe")]
    assert len(moe) == 48 and all(layer.latency_s > 0 for layer in moe)


def test_first_layers_cuts_a_program() -> None:
    from moec.backends.interp.simulate import first_layers

    p = first_layers(_ep_program(layers=2), 1)
    verify_program(p)
    assert [m.name for m in p.layers] == ["moe0"] and len(p.runtime) == 1
    r = simulate(p, routings=synth_zipf(1, 8, 2, 32, seed=0))
    assert [s.name for s in r.report.layers] == ["moe0"]


def test_deadlock_is_a_one_line_schedule_error() -> None:
    from moec.ir.errors import ScheduleError

    p = _program({0: [Wait("never", 1), Dense("isl", 10, 0)], 1: [Dense("isl", 10, 0)]})
    with pytest.raises(
        ScheduleError, match=r"deadlock: die 0 never completes 'wait never count 1'"
    ):
        simulate(p, verify=False)
