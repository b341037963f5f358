"""The calibrated hardware model's formulas against hand arithmetic, and ``ideal`` against the
first-wave formulas bit for bit.

Every expected value is written out from the documented formula (``moec.ir.cost`` module docs,
``docs/targets.md``) with the preset's parameters: fsedp-2x2 dies are one 32x64 WS array at
800 MHz, 16 issue cycles, 100 ns DMA setup, 64 vector lanes; links 288 GB/s with UCIe 68 B flits
(64 B payload + 4 B); DDR4 channels 25.6 GB/s, 64 B bursts at 85% efficiency, 100 ns latency.
"""

from __future__ import annotations

import pytest

from moec.ir.cost import (
    accum_time,
    act_time,
    compute_time,
    dram_occupancy,
    dram_time,
    gemm_cycles,
    gemm_time,
    host_time,
    link_occupancy,
    link_time,
    load_time,
    route_data_time,
    slice_compute_time,
    transfer_time,
)
from moec.ir.errors import TargetError
from moec.ir.hardware import MacArray
from moec.ir.target import load_target

CLOCK = 800e6
ISSUE = 16 / CLOCK
SETUP = 100e-9
DDR = 25.6e9 * 0.85
D2D = 288e9


@pytest.fixture
def t():  # type: ignore[no-untyped-def]
    return load_target("fsedp-2x2", {"ideal": False})


def test_one_token_gemm_costs_a_weight_tile_per_fold(t) -> None:  # type: ignore[no-untyped-def]
    # Qwen3-30B-A3B micro-slice, gate/up: [T, 2048] x [2048, 128] (slice width 64, gated)
    # folds = ceil(2048/32) x ceil(128/64) = 128; each 2*32 + 64 + T - 2 cycles
    assert gemm_cycles(1, 2048, 128, MacArray(32, 64)) == 128 * 127 == 16256
    assert gemm_cycles(256, 2048, 128, MacArray(32, 64)) == 128 * 382 == 48896
    assert gemm_time(t, 0, 1, 2048, 128) == ISSUE + 16256 / CLOCK
    assert gemm_time(t, 0, 256, 2048, 128) == ISSUE + 48896 / CLOCK
    # at peak the 1-token GEMM would take 2*1*2048*128 / (2*2048*800e6) = 128 cycles: ~127x less
    assert compute_time(t, 0, 2.0 * 2048 * 128) == 128 / CLOCK
    # 256 tokens reach 256 * 128 / 48896 = 67% of peak
    assert 2.0 * 256 * 2048 * 128 / (2 * 2048 * CLOCK) / (48896 / CLOCK) == pytest.approx(
        0.67, abs=0.01
    )


def test_dataflows_fold_different_dimensions() -> None:
    a = MacArray(8, 16)
    m, k, n = 7, 33, 65
    # ws: ceil(33/8)=5 x ceil(65/16)=5 folds of 2*8+16+7-2=37
    assert gemm_cycles(m, k, n, a) == 25 * 37
    # os: ceil(7/8)=1 x 5 folds of 33+8+16-2=55
    assert gemm_cycles(m, k, n, MacArray(8, 16, 1, "os")) == 5 * 55
    # is: ceil(33/8)=5 x ceil(7/16)=1 folds of 2*8+16+65-2=95
    assert gemm_cycles(m, k, n, MacArray(8, 16, 1, "is")) == 5 * 95
    # four arrays run folds in parallel: ceil(25/4) = 7 fold times
    assert gemm_cycles(m, k, n, MacArray(8, 16, 4)) == 7 * 37
    assert gemm_cycles(0, k, n, a) == 0


def test_int8_packs_two_macs_per_pe_along_columns(t) -> None:  # type: ignore[no-untyped-def]
    # int8: the 32x64 array acts as 32x128: ceil(2048/32) x ceil(128/128) = 64 folds of 2*32+128+1-2
    assert gemm_time(t, 0, 1, 2048, 128, "int8") == ISSUE + 64 * 191 / CLOCK
    # fp32: two passes of the fp16 array
    assert gemm_time(t, 0, 1, 2048, 128, "fp32") == ISSUE + 2 * 16256 / CLOCK


def test_act_and_accum_on_the_vector_unit(t) -> None:  # type: ignore[no-untyped-def]
    # silu(gate) * up over 16 tokens x 64 columns: 5 ops per element on 64 lanes
    assert act_time(t, 0, 16, 64) == ISSUE + (16 * 64 * 5 / 64) / CLOCK
    # down projection [16, 64] x [64, 2048]: 2 x 32 folds of 64+64+16-2 = 142, then the gate
    # scaling and add over 16 x 2048 outputs: 2 ops on 64 lanes
    gemm = 2 * 32 * 142
    assert accum_time(t, 0, 16, 64, 2048) == ISSUE + gemm / CLOCK + (16 * 2048 * 2 / 64) / CLOCK


def test_transfer_below_the_minimum_size_pays_one_flit(t) -> None:  # type: ignore[no-untyped-def]
    assert link_occupancy(t, 0, 1, 10) == SETUP + 68 / D2D
    assert link_occupancy(t, 0, 1, 64) == SETUP + 68 / D2D
    assert link_occupancy(t, 0, 1, 65) == SETUP + 136 / D2D
    assert link_time(t, 0, 1, 10) == 20e-9 + SETUP + 68 / D2D


def test_a_route_streams_framed_data_at_its_slowest_link(t) -> None:  # type: ignore[no-untyped-def]
    # 0 -> 1 -> 3: two 288 GB/s links, 1000 bytes = 16 flits of 68 bytes; no latency, no setup
    assert route_data_time(t, 0, 3, 1000) == 16 * 68 / D2D
    assert route_data_time(t, 2, 2, 1000) == 0.0


def test_45_small_loads_cost_more_than_9_large_ones_of_the_same_bytes(t) -> None:  # type: ignore[no-untyped-def]
    small, large = 4096, 5 * 4096  # both whole bursts
    many = 45 * dram_occupancy(t, 0, small)
    few = 9 * dram_occupancy(t, 0, large)
    assert many == pytest.approx(45 * (SETUP + small / DDR), rel=1e-15)
    assert few == pytest.approx(9 * (SETUP + large / DDR), rel=1e-15)
    # the same bytes; 36 more descriptors
    assert many - few == pytest.approx(36 * SETUP, rel=1e-9)


def test_dram_streams_whole_bursts_at_sustained_efficiency(t) -> None:  # type: ignore[no-untyped-def]
    # 100 bytes are two 64 B bursts
    assert dram_time(t, 0, 100) == 100e-9 + SETUP + 128 / DDR
    assert dram_occupancy(t, 0, 128) == SETUP + 128 / DDR
    hbm = load_target("npu8-hbm", {"ideal": False})
    # HBM2e: 32 B bursts at 90% of 2 TB/s, 500 ns DMA setup, 500 ns latency
    assert dram_time(hbm, 0, 33) == 500e-9 + 500e-9 + 64 / (2000e9 * 0.9)


def test_remote_load_pays_one_setup_and_streams_at_the_slowest_resource(t) -> None:  # type: ignore[no-untyped-def]
    nbytes = 1 << 20
    # channel 0 (die 0) -> die 3: route 0 -> 1 -> 3, two hops of 20 ns
    data = max(nbytes / DDR, nbytes / 64 * 68 / D2D)
    assert load_time(t, 0, 3, nbytes) == 100e-9 + 40e-9 + SETUP + data
    assert transfer_time(t, 0, 3, nbytes) == 40e-9 + SETUP + nbytes / 64 * 68 / D2D


def test_ideal_is_the_first_wave_model_bit_for_bit() -> None:
    t = load_target("fsedp-2x2", {"ideal": True})
    ch, lk, GB = t.channel(0), t.link(0, 1), 1e9
    for nbytes in (1, 100, 4096, 123457, 1 << 24):
        assert dram_time(t, 0, nbytes) == ch.latency_s + float(nbytes) / (ch.gbps * GB)
        assert link_time(t, 0, 1, nbytes) == lk.latency_s + float(nbytes) / (lk.gbps * GB)
        lat = ch.latency_s + 2 * lk.latency_s
        assert load_time(t, 0, 3, nbytes) == lat + float(nbytes) / (min(ch.gbps, lk.gbps) * GB)
        assert transfer_time(t, 0, 3, nbytes) == 2 * lk.latency_s + float(nbytes) / (lk.gbps * GB)
        assert route_data_time(t, 0, 3, nbytes) == float(nbytes) / (lk.gbps * GB)
    # the FSE-DP scheduler's first-wave slice estimate: gemm + act + accum FLOPs in one sum
    n, d, w = 5, 64, 48
    flops = 2.0 * n * d * w * 2 + 2.0 * n * w + 2.0 * n * w * d
    assert slice_compute_time(t, 0, n, d, w, True) == compute_time(t, 0, flops)
    for m, k, n in ((1, 2048, 128), (256, 64, 2048), (7, 33, 65)):
        assert gemm_time(t, 0, m, k, n) == 2.0 * m * k * n / (2.0 * 2048 * 800e6 * 1.0)
        assert act_time(t, 0, m, n) == compute_time(t, 0, 2.0 * m * n)
        assert accum_time(t, 0, m, n, k) == compute_time(t, 0, 2.0 * m * n * k)
    h = load_target("npu8-hbm", {"ideal": True})
    assert host_time(h, 1000) == h.host.latency_s + 1000.0 / (h.host.gbps * GB)  # type: ignore[union-attr]


def test_host_transfers_are_framed_in_pcie_packets() -> None:
    h = load_target("npu8-hbm", {"ideal": False})
    # 1000 B: 4 TLPs of 256 B payload + 24 B overhead = 1120 B on a 64 GB/s link, 500 ns setup
    assert host_time(h, 1000) == 2e-6 + (500e-9 + 1120 / 64e9)


def test_double_buffered_weights_expose_one_tile_load() -> None:
    # ws, 32x64: the first fold as single (2R + C + M - 2), each later fold max(R, M)
    double = MacArray(32, 64, 1, "ws", "double")
    # 1 token, 128 folds: 127 + 127 x max(32, 1) = 127 + 4064 (single: 128 x 127 = 16256)
    assert gemm_cycles(1, 2048, 128, double) == 127 + 127 * 32 == 4191
    # 256 tokens: the rows, not the tile load, bound a fold: 382 + 127 x 256 (single 48896)
    assert gemm_cycles(256, 2048, 128, double) == 382 + 127 * 256 == 32894
    # M = R: both bounds equal
    assert gemm_cycles(32, 2048, 128, double) == (2 * 32 + 64 + 32 - 2) + 127 * 32
    # one fold: nothing to overlap, same as single
    assert (
        gemm_cycles(5, 32, 64, double)
        == gemm_cycles(5, 32, 64, MacArray(32, 64))
        == 2 * 32 + 64 + 3
    )
    # partial tiles are whole folds: ceil(33/8) x ceil(65/16) = 25 folds of 37 on 8x16
    assert gemm_cycles(7, 33, 65, MacArray(8, 16, 1, "ws", "double")) == 37 + 24 * 8
    # four arrays: ceil(25/4) = 7 folds per array
    assert gemm_cycles(7, 33, 65, MacArray(8, 16, 4, "ws", "double")) == 37 + 6 * 8
    # is: the stationary input tile, N weight columns streamed: 5 folds of 95, later max(8, 65)
    assert gemm_cycles(7, 33, 65, MacArray(8, 16, 1, "is", "double")) == 95 + 4 * 65
    # os: no stationary tile, unchanged
    assert gemm_cycles(7, 33, 65, MacArray(8, 16, 1, "os", "double")) == 5 * 55


def test_weight_buffering_is_a_target_option() -> None:
    t = load_target("fsedp-2x2", {"ideal": False, "weight_buffering": "double"})
    assert t.die(0).array.weight_buffering == "double"
    assert "double-buffered" in t.die(0).array.name
    assert load_target("fsedp-2x2").die(0).array.weight_buffering == "single"
    # int8 packs two MACs per PE: 32x128, 64 folds, first 191 cycles then max(32, 1) each
    assert gemm_time(t, 0, 1, 2048, 128, "int8") == ISSUE + (191 + 63 * 32) / CLOCK
    # fp32: two passes of the double-buffered fp16 array
    assert gemm_time(t, 0, 1, 2048, 128, "fp32") == ISSUE + 2 * 4191 / CLOCK
    # the ideal machine ignores the array
    ideal = load_target("fsedp-2x2", {"ideal": True, "weight_buffering": "double"})
    assert gemm_time(ideal, 0, 1, 2048, 128) == compute_time(ideal, 0, 2.0 * 2048 * 128)
    with pytest.raises(TargetError, match="override weight_buffering: expected one of"):
        load_target("fsedp-2x2", {"weight_buffering": "triple"})


def test_weight_buffering_in_toml(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "t.toml"
    f.write_text(
        'name = "t"\n[die]\narray = {rows = 32, cols = 64, weight_buffering = "double"}\n'
        "[dram]\ngbps_per_channel = 25.6\n"
    )
    assert load_target(str(f)).die(0).array.weight_buffering == "double"
    f.write_text(
        'name = "t"\n[die]\narray = {rows = 32, cols = 64, weight_buffering = "quad"}\n'
        "[dram]\ngbps_per_channel = 25.6\n"
    )
    with pytest.raises(TargetError, match="weight_buffering"):
        load_target(str(f))
