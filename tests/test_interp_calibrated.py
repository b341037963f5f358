"""The calibrated hardware model through the interpreter, on tiny hand-written programs.

Each expected time is derived by hand from the formulas documented in ``ir/cost/compute.py`` and
``ir/cost/transfer.py`` (not by calling them), on a hand target whose every term is a round
number: 2 dies in a row at 1 GHz (1 cycle = 1 ns), one 4 x 8 weight-stationary MAC array per die,
8 vector lanes, 10 issue cycles per compute instruction, 100 ns of DMA setup per transfer;
links of 1 GB/s (1 byte/ns) carrying 68-byte flits of 64 bytes of payload, at least 64 bytes
per transfer; one DRAM channel per die of 1 GB/s at 50% efficiency in 64-byte bursts (128 ns a
burst); no latencies.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from moec.backends.interp.timing import Timeline, run_timing
from moec.ir.stream import (
    Accum,
    Act,
    Block,
    DieStream,
    Free,
    Gemm,
    Instr,
    Load,
    MoEDecl,
    Program,
    Recv,
    Send,
    SliceLayout,
    SliceRef,
    SlotPool,
    TargetRef,
    TokenSet,
)
from moec.ir.target import Target, load_target

HAND = """\
name = "hand-calibrated"
topology = "mesh"
dies_x = 2
dies_y = 1

[die]
array = { rows = 4, cols = 8, count = 1, dataflow = "ws" }
vector_lanes = 8
issue_cycles = 10
dma_setup_ns = 100
clock_mhz = 1000
sram_mib = 1

[d2d]
gbps = 1
latency_ns = 0
flit_payload_bytes = 64
flit_overhead_bytes = 4
min_bytes = 64

[dram]
kind = "ddr4"
placement = "all"
gbps_per_channel = 1
latency_ns = 0
burst_bytes = 64
efficiency = 0.5
"""

NS = 1e-9
HIDDEN = WIDTH = 8  # one slice of 8 FFN columns: 3 x 8 x 8 fp16 = 384 bytes
SLICE = SliceRef("moe0", 0, 0)
SLICE_BYTES = 3 * HIDDEN * WIDTH * 2


@pytest.fixture(scope="module")
def hand(tmp_path_factory: pytest.TempPathFactory) -> Target:
    path = tmp_path_factory.mktemp("hand") / "hand.toml"
    path.write_text(HAND)
    t = load_target(str(path))
    assert not t.ideal
    return t


def _program(streams: dict[int, list[Instr]], tokens: int = 256, slot_bytes: int = 4096) -> Program:
    layer = MoEDecl("moe0", 2, 1, HIDDEN, WIDTH, tokens, "x", "y")
    return Program(
        "micro", TargetRef("hand.toml"), layers=[layer],
        layouts=[SliceLayout.even("moe0", WIDTH, 1)],
        slots=[SlotPool(d, 1, slot_bytes) for d in range(2)],
        streams=[DieStream(d, streams.get(d, [])) for d in range(2)],
    )  # fmt: skip


def _span(tl: Timeline, kind: type) -> float:
    (k,) = [k for k, i in enumerate(tl.instr) if isinstance(i, kind)]
    return (tl.end[k] - tl.start[k]) / NS


@pytest.mark.parametrize(
    "tokens,gemm_ns,act_ns,accum_ns",
    [
        # gemm [T, 8] x [8, 16] (gate and up): ceil(8/4) x ceil(16/8) = 4 folds of 2R + C + T - 2
        # = 14 + T cycles, + 10 issue. act (silu, gated): T x 8 elements x 5 ops / 8 lanes, + 10.
        # accum: [T, 8] x [8, 8] = 2 folds of 14 + T, + 10 issue, + T x 8 x 2 ops / 8 lanes.
        (1, 4 * 15 + 10, 5 + 10, 2 * 15 + 10 + 2),
        (256, 4 * 270 + 10, 5 * 256 + 10, 2 * 270 + 10 + 2 * 256),
    ],
)
def test_one_token_and_256_tokens_on_the_same_slice(
    hand: Target, tokens: int, gemm_ns: int, act_ns: int, accum_ns: int
) -> None:
    ts = TokenSet.span(0, tokens)
    body: list[Instr] = [Load(0, 0, SLICE, SLICE_BYTES), Gemm(0, ts), Act(0, ts), Accum(0, ts)]
    tl = run_timing(_program({0: [*body, Free(0)]}), hand)
    assert _span(tl, Gemm) == pytest.approx(gemm_ns, rel=1e-12)
    assert _span(tl, Act) == pytest.approx(act_ns, rel=1e-12)
    assert _span(tl, Accum) == pytest.approx(accum_ns, rel=1e-12)
    # the load: 100 ns setup + 384 bytes = 6 bursts x 128 ns; then the three in order
    assert _span(tl, Load) == pytest.approx(100 + 6 * 128, rel=1e-12)
    assert tl.makespan / NS == pytest.approx(100 + 6 * 128 + gemm_ns + act_ns + accum_ns)


def test_256_tokens_cost_far_less_than_256_single_tokens(hand: Target) -> None:
    # the weight-tile loads and the skew are paid per fold, once for the batch: 1090 ns against
    # 256 x 70 ns for the gemm
    one, many = (
        _span(run_timing(_program({0: [Load(0, 0, SLICE, SLICE_BYTES),
                                       Gemm(0, TokenSet.span(0, n)), Free(0)]}), hand), Gemm)
        for n in (1, 256)
    )  # fmt: skip
    assert (one, many) == (pytest.approx(70), pytest.approx(1090))


@pytest.mark.parametrize(
    "nbytes,ns",
    [
        (10, 100 + 68),  # below the 64-byte minimum: one whole flit (64 + 4 bytes on the wire)
        (64, 100 + 68),
        (65, 100 + 2 * 68),  # one byte over: a second flit
        (640, 100 + 10 * 68),
    ],
)
def test_a_transfer_below_the_minimum_size_pays_a_whole_flit(
    hand: Target, nbytes: int, ns: int
) -> None:
    x = Block("moe0", "x", TokenSet.span(0, 1))
    tl = run_timing(_program({0: [Send(1, nbytes, block=x)], 1: [Recv(0, nbytes, block=x)]}), hand)
    assert tl.makespan / NS == pytest.approx(ns, rel=1e-12)
    busy = dict(zip(tl.resource_names, tl.busy, strict=True))
    assert busy["link 0->1"] / NS == pytest.approx(ns, rel=1e-12)


def _loads(count: int, nbytes: int) -> Program:
    body: list[Instr] = []
    for _ in range(count):
        body += [Load(0, 0, SLICE, nbytes), Free(0)]
    return _program({0: body})


def test_45_small_loads_cost_more_than_9_large_ones_of_the_same_bytes(hand: Target) -> None:
    # 28800 bytes either way. Small: 640 bytes = 10 bursts = 1280 ns + 100 ns setup, 45 times;
    # large: 3200 bytes = 50 bursts = 6400 ns + 100 ns, 9 times. The channel is never idle.
    small = run_timing(_loads(45, 640), hand)
    large = run_timing(_loads(9, 3200), hand)
    assert small.makespan / NS == pytest.approx(45 * (100 + 1280), rel=1e-12)
    assert large.makespan / NS == pytest.approx(9 * (100 + 6400), rel=1e-12)
    assert small.dram_bytes == large.dram_bytes == [28800, 0]
    # a size that is not a whole number of bursts reads the last burst whole: 641 bytes = 11
    odd = run_timing(_loads(1, 641), hand)
    assert odd.makespan / NS == pytest.approx(100 + 11 * 128, rel=1e-12)


def test_the_ideal_machine_charges_none_of_it(hand: Target) -> None:
    ideal = hand.with_overrides({"ideal": True})
    small = run_timing(_loads(45, 640), ideal)
    large = run_timing(_loads(9, 3200), ideal)
    assert small.makespan == pytest.approx(large.makespan, rel=1e-12)
    assert small.makespan / NS == pytest.approx(28800, rel=1e-12)  # bytes at 1 GB/s


def test_tail_reservation_ending_an_ulp_before_the_clock_does_not_stop_the_run() -> None:
    """A link hop reserved as a tail (``back == dur``) ends at ``(t - back) + dur``, which
    floating point may put one ulp before ``t``; its successors are scheduled at the clock, not
    before it (this point raised 'event ... scheduled before the clock')."""
    from moec.bench import run_bench

    (row,) = run_bench("phi3.5-moe", "fsedp-2x2", [16], ["fsedp-naive"], allow_overflow=True)
    assert row["latency_s"] >= row["bound_s"] > 0


@pytest.mark.parametrize(
    "tokens,gemm_ns,accum_ns",
    [
        # double-buffered weights: the first fold as single (14 + T), each later one max(R=4, T);
        # gemm 4 folds, accum 2 (then its vector part T x 8 x 2 / 8), each + 10 issue
        (1, 15 + 3 * 4 + 10, 15 + 4 + 10 + 2),
        (256, 270 + 3 * 256 + 10, 270 + 256 + 10 + 2 * 256),
    ],
)
def test_double_buffered_weights_through_the_interpreter(
    tmp_path: Path, tokens: int, gemm_ns: int, accum_ns: int
) -> None:
    path = tmp_path / "hand.toml"
    path.write_text(HAND)
    single = load_target(str(path))
    double = load_target(str(path), {"weight_buffering": "double"})
    ts = TokenSet.span(0, tokens)
    body: list[Instr] = [Load(0, 0, SLICE, SLICE_BYTES), Gemm(0, ts), Act(0, ts), Accum(0, ts)]
    prog = _program({0: [*body, Free(0)]})
    tl = run_timing(prog, double)
    assert _span(tl, Gemm) == pytest.approx(gemm_ns, rel=1e-12)
    assert _span(tl, Accum) == pytest.approx(accum_ns, rel=1e-12)
    assert tl.makespan < run_timing(prog, single).makespan  # the same program, faster
