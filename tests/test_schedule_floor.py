"""The any-schedule floor (``moec.ir.cost.floor``) against hand arithmetic, and below every
measured schedule.

fsedp-2x2 (calibrated): one 32x64 WS array per die at 800 MHz, 16 issue cycles, 64 vector
lanes, 100 ns DMA setup; four DDR4 channels of 25.6 GB/s at 85% in 64 B bursts, 100 ns latency.
"""

from __future__ import annotations

import numpy as np
import pytest

from moec.ir.cost import moe_layer_bound, schedule_floor
from moec.ir.target import load_target

CLOCK = 800e6
SETUP = 100e-9
DDR = 25.6e9 * 0.85


def test_floor_by_hand_on_the_calibrated_2x2() -> None:
    t = load_target("fsedp-2x2", {})
    ids = np.array([[0, 1], [0, 2], [-1, 2]])  # expert 0: 2 tokens, 1: 1, 2: 2; one pair dropped
    f = schedule_floor(t, hidden=2048, ffn=768, ids=ids)
    weight_bytes = 3 * (3 * 2048 * 768 * 2)
    assert f.weight_bytes == weight_bytes
    # three loads at least, each a setup on some channel; four channels share the bytes
    assert f.dram_s == pytest.approx((weight_bytes + 3 * DDR * SETUP) / (4 * DDR), rel=1e-12)
    assert f.latency_s == 100e-9
    assert f.first_load_s == pytest.approx(100e-9 + SETUP + 64 / DDR, rel=1e-12)

    # one whole-expert micro-slice per expert, n tokens (module doc of moec.ir.cost.compute):
    # gate/up [n, 2048] x [2048, 1536]: 64 x 24 folds of 2*32 + 64 + n - 2 cycles;
    # act: ceil(n * 768 * (4 + 1) / 64); down [n, 768] x [768, 2048]: 24 x 32 folds of the same;
    # accum's vector part ceil(n * 2048 * 2 / 64); 3 instructions of 16 issue cycles
    def expert(n: int) -> int:
        fold = 2 * 32 + 64 + n - 2
        act = -(-n * 768 * 5 // 64)
        return 1536 * fold + act + 768 * fold + -(-n * 2048 * 2 // 64) + 3 * 16

    assert expert(2) == 295208 and expert(1) == 292780
    assert f.compute_s == pytest.approx((2 * expert(2) + expert(1)) / 4 / CLOCK, rel=1e-12)
    assert f.bound_s == max(f.dram_s + f.latency_s, f.compute_s + f.first_load_s)


def test_shared_experts_add_one_load_and_every_token() -> None:
    t = load_target("fsedp-2x2", {})
    ids = np.array([[0], [0], [1], [1]])
    plain = schedule_floor(t, hidden=256, ffn=128, ids=ids)
    shared = schedule_floor(t, hidden=256, ffn=128, ids=ids, shared_ffn=128)
    assert shared.weight_bytes == plain.weight_bytes * 3 / 2
    # the shared experts' 4 tokens cost like a third expert of 4 tokens
    both = schedule_floor(t, hidden=256, ffn=128, ids=np.array([[0, 2], [0, 2], [1, 2], [1, 2]]))
    assert shared.dram_s == pytest.approx(both.dram_s, rel=1e-12)
    assert shared.compute_s > plain.compute_s


def test_on_the_ideal_machine_the_dram_term_is_the_analytic_bound() -> None:
    t = load_target("fsedp-4x4", {"ideal": "true"})
    ids = np.array([np.random.default_rng(i).permutation(64)[:6] for i in range(64)])
    f = schedule_floor(t, hidden=2048, ffn=1408, ids=ids)
    b = moe_layer_bound(t, hidden=2048, ffn=1408, ids=ids)
    assert f.dram_s == pytest.approx(b.dram_s, rel=1e-12)
    assert f.compute_s >= b.compute_s  # the activation's FLOPs on top of the three GEMMs


def test_no_measured_schedule_beats_the_floor() -> None:
    """Every fixed strategy and a few variants, measured by the interpreter, on a DRAM-bound
    paper point and a model with shared experts: none is below the floor."""
    from moec.auto import any_schedule_floor, default_routing, search
    from moec.compiler.bench.spec import load_bench_model, truncate
    from moec.ir.stream import TargetRef

    specs = ["ep", "hydra", "eplb", "tp", "fsedp", "fsedp-paired", "tp{slots=8}"]
    for model, target, tokens in (
        ("qwen3-30b-a3b", "fsedp-2x2", 64),
        ("tiny_deepseek", "fsedp-3x3", 32),
    ):
        module = truncate(load_bench_model(model).module, 1)
        ref = TargetRef(target, ())
        routing = default_routing(module, ref, tokens=tokens)
        found = search(module, ref, routing, specs=specs, tokens=tokens, objective="energy")
        floor = any_schedule_floor(found.program, load_target(target, {}), routing)
        measured = [t.measured_s for t in found.trials if t.measured_s is not None]
        assert len(measured) >= 5
        assert floor > 0 and all(floor <= m for m in measured), (model, floor, measured)
