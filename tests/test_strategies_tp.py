"""TP: hand-computed latency, slice ownership, pair coverage, numerics against ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import pytest
from strategy_cases import (
    NS,
    coverage,
    expected_coverage,
    hand_target,
    layer_latency,
    moe_module,
    routing,
    run,
)

from moec.compiler.lower.tp import owners, split_over_dies
from moec.ir.routing_synth import synth_zipf


def test_tp_latency_by_hand(tmp_path: Path) -> None:
    # Both tokens (one per die) go to expert 0, split in two 600-byte slices, one per die.
    # x all-gather: 20 B per die (20 ns), hidden under the 600 ns slice load; compute of 2 tokens:
    # gemm 2*2*10*10*2 = 800 FLOPs, act 2*2*10 = 40, accum 2*2*10*10 = 400 -> 1.24 ns at 1e12;
    # then the partial sum of the other die's token goes home: 20 B, 20 ns.
    p, r = run(moe_module(2, 1, 2), hand_target(tmp_path), "tp", routing([[0], [0]], [0, 1], 2))
    assert p.runtime[0].params["owner"] == [0, 1]
    assert [lay.count for lay in p.layouts] == [2]
    assert layer_latency(r) == pytest.approx((600 + 1.24 + 20) * NS, rel=1e-9)
    # each die streams only its own half of the expert from its own channel
    assert r.report.dram_bytes == [20 + 600, 20 + 600]


def test_split_over_dies() -> None:
    assert split_over_dies(1, 64, 4) == 1
    assert split_over_dies(5, 64, 4) == 2
    assert split_over_dies(5, 6, 4) == 1  # never narrower than a column: 8 slices of 6 columns
    # 9 dies, 4 channels: 36 slices spread 9 per channel, if there are columns enough
    assert split_over_dies(3, 768, 9, channels=4) == 4
    assert split_over_dies(3, 20, 9, channels=4) == 1
    assert owners(8, 4) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert owners(3, 4) == [0, 1, 2]


@pytest.mark.parametrize("target", ["fsedp-2x2", "fsedp-3x3"])
def test_tp_accumulates_every_pair_once(target: str) -> None:
    module = moe_module(16, 2, 64, hidden=64, ffn=256)
    dies = 4 if target == "fsedp-2x2" else 9
    trace = synth_zipf(1, 16, 2, 64, zipf=1.2, seed=3, num_dies=dies, layer_names=["moe0"])
    p, r = run(module, target, "tp", trace)
    assert coverage(r.expanded) == expected_coverage(trace, p.layouts[0].count)
    assert p.layouts[0].count % dies == 0 or p.layouts[0].count == 256


def test_tp_numerics_match_onnxruntime(tmp_path: Path) -> None:
    from numerics_check import check_strategy

    for target in ("fsedp-2x2", "fsedp-3x3"):
        assert check_strategy("tiny_moe_shared", "tp", target, tmp_path) < 1e-4


@pytest.mark.parametrize("target", ["fsedp-2x2", "fsedp-3x3"])
def test_moec_check_passes(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    from moec.compiler.cli.main import main

    assert main(["check", "models/tiny_moe.onnx", "--strategy", "tp", "--target", target]) == 0
    assert "passed" in capsys.readouterr().out
