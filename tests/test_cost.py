"""The analytic cost model against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from moec.ir.cost import (
    bytes_per_element,
    compute_time,
    dram_time,
    host_time,
    layer_bound,
    link_time,
    load_time,
    lower_bound,
    moe_layer_bound,
    transfer_time,
)
from moec.ir.errors import TargetError
from moec.ir.moe import MoELayer, declared
from moec.ir.target import Target, load_target, preset


def _ideal(name: str) -> Target:
    """The preset on the ideal machine: these tests derive the first-wave formulas by hand (the
    calibrated terms are covered in ``test_hw_cost.py``)."""
    return load_target(name, {"ideal": "true"})


def test_bytes_per_element() -> None:
    assert [bytes_per_element(p) for p in ("fp16", "bf16", "int8", "int4", "fp32")] == [
        2, 2, 1, 0.5, 4,
    ]  # fmt: skip
    with pytest.raises(TargetError, match="unknown precision 'fp8'"):
        bytes_per_element("fp8")


def test_layer_bound_from_moe_layer() -> None:
    t = preset("fsedp-2x2")
    E, d, F, Fs = 4, 8, 6, 10
    layer = MoELayer(
        "moe0", E, 2, d, F,
        {
            "router_w": declared("r", "f32", (E, d)),
            "w_gate": declared("g", "f32", (E, d, F)),
            "w_up": declared("u", "f32", (E, d, F)),
            "w_down": declared("dn", "f32", (E, F, d)),
            "sh_gate": declared("sg", "f32", (d, Fs)),
            "sh_up": declared("su", "f32", (d, Fs)),
            "sh_down": declared("sd", "f32", (Fs, d)),
        },
        num_shared=1, shared_ffn=Fs,
    )  # fmt: skip
    ids = np.array([[0, 1], [0, 2]])
    b = layer_bound(t, layer, ids, precision="int8")
    assert b == moe_layer_bound(t, hidden=d, ffn=F, ids=ids, shared_ffn=Fs, precision="int8")
    assert b.weight_bytes == 3 * (3 * d * F) + 3 * d * Fs


def test_compute_time() -> None:
    t = preset("fsedp-2x2")
    # 2048 MAC x 800 MHz x 2 = 3.2768e12 FLOP/s at fp16; int8 doubles it.
    assert compute_time(t, 0, 3.2768e12) == pytest.approx(1.0)
    assert compute_time(t, 3, 3.2768e9, "int8") == pytest.approx(0.5e-3)
    assert compute_time(t, 0, 3.2768e12, "fp32") == pytest.approx(2.0)
    with pytest.raises(TargetError, match="no throughput for precision 'fp8'"):
        compute_time(t, 0, 1.0, "fp8")


def test_dram_time() -> None:
    t = _ideal("fsedp-2x2")
    # 25.6 MB on a 25.6 GB/s channel: 1 ms, plus 100 ns latency.
    assert dram_time(t, 0, 25.6e6) == pytest.approx(1e-3 + 100e-9)
    assert dram_time(t, t.channels[2], 0) == pytest.approx(100e-9)
    with pytest.raises(TargetError, match="no DRAM channel 4"):
        dram_time(t, 4, 1)


def test_link_and_transfer_times() -> None:
    t = _ideal("fsedp-2x2")
    # 288 kB at 288 GB/s = 1 us, plus 20 ns.
    assert link_time(t, 0, 1, 288e3) == pytest.approx(1e-6 + 20e-9)
    with pytest.raises(TargetError, match="no link from die 0 to die 3"):
        link_time(t, 0, 3, 1)
    # Two hops, cut-through: both latencies once, the body once at the slowest bandwidth.
    assert transfer_time(t, 0, 3, 288e3) == pytest.approx(1e-6 + 2 * 20e-9)
    assert transfer_time(t, 2, 2, 1e9) == 0.0
    big = _ideal("fsedp-4x4")
    assert transfer_time(big, 0, 15, 576e3) == pytest.approx(2e-6 + 6 * 20e-9)


def test_load_time() -> None:
    t = _ideal("fsedp-2x2")
    # local: the DRAM time; 25.6 kB at 25.6 GB/s = 1 us, plus 100 ns.
    assert load_time(t, 0, 0, 25.6e3) == pytest.approx(dram_time(t, 0, 25.6e3))
    # two hops (0 -> 1 -> 3), cut-through: latencies add, the body streams at the DRAM rate.
    assert load_time(t, 0, 3, 25.6e3) == pytest.approx(1e-6 + 100e-9 + 2 * 20e-9)
    assert load_time(t, t.channels[3], 0, 25.6e3) == load_time(t, 3, 0, 25.6e3)
    # links slower than the channel (npu8-hbm: 2000 GB/s HBM, 128 GB/s links) set the rate.
    hbm = _ideal("npu8-hbm")
    assert load_time(hbm, 0, 3, 128e3) == pytest.approx(1e-6 + 500e-9 + 1e-6)


def test_host_time() -> None:
    t = _ideal("npu8-hbm")
    assert host_time(t, 64e9) == pytest.approx(1.0 + 2e-6)
    with pytest.raises(TargetError, match="has no host tier"):
        host_time(_ideal("fsedp-2x2"), 1)


def test_lower_bound_terms() -> None:
    t = preset("fsedp-2x2")  # 102.4 GB/s DRAM, 4 x 3.2768 TFLOP/s
    b = lower_bound(t, weight_bytes=102.4e6, flops=4 * 3.2768e9)
    assert b.dram_s == pytest.approx(1e-3) and b.compute_s == pytest.approx(1e-3)
    assert b.bound_s == pytest.approx(1e-3)


def test_moe_layer_bound_by_hand() -> None:
    t = load_target("fsedp-2x2", {"ddr_gbps_total": 100})
    ids = np.array([[0, 1], [1, 2], [1, 0], [3, 0]])  # experts 0..3 active, 8 pairs
    b = moe_layer_bound(t, hidden=1000, ffn=500, ids=ids, gated=True)
    per_expert = 3 * 1000 * 500  # params
    assert b.weight_bytes == 4 * per_expert * 2
    assert b.flops == 8 * 2 * per_expert
    assert b.dram_s == pytest.approx(4 * per_expert * 2 / 100e9)
    assert b.compute_s == pytest.approx(8 * 2 * per_expert / (4 * 3.2768e12))
    assert b.bound_s == b.dram_s  # low batch: DRAM-bound
    # -1 marks no expert (a skipped pair); shared experts add weights once and FLOPs per token.
    ids2 = np.array([[0, -1], [0, -1]])
    b2 = moe_layer_bound(
        t, hidden=10, ffn=20, ids=ids2, gated=False, shared_ffn=4, precision="int8"
    )
    # shared experts are gated exactly when the routed ones are: two projections here
    assert b2.weight_bytes == 2 * 10 * 20 + 2 * 10 * 4
    assert b2.flops == 2 * (2 * 2 * 10 * 20 + 2 * 2 * 10 * 4)
