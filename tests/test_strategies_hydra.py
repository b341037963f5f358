"""Hydra: popularity-aware placement, hand-computed latency against EP, coverage, numerics."""

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

from moec.compiler.lower import StrategyError
from moec.ir.routing import save_trace
from moec.ir.routing_synth import synth_zipf

# Experts 0 and 2 are hot (2 tokens each); round-robin EP puts both on die 0.
IDS = [[0], [2], [0], [2]]
HOME = [0, 0, 1, 1]


def test_hydra_latency_by_hand(tmp_path: Path) -> None:
    target = hand_target(tmp_path)
    module, trace = moe_module(4, 1, 4), routing(IDS, HOME, 4)
    # Hydra (LPT, at most 2 experts per die): e0 -> die 0, e2 -> die 1, e1 -> die 0, e3 -> die 1.
    # Each die loads one 1200-byte expert (1200 ns), one token comes in (20 ns, hidden),
    # compute of 2 tokens: gemm 1600 + act 80 + accum 800 FLOPs = 2.48 ns, one token's
    # output goes back: 20 ns.
    p, r = run(module, target, "hydra", trace)
    assert p.runtime[0].params["placement"] == [0, 0, 1, 1]
    assert p.runtime[0].params["load"] == [2, 0, 2, 0]
    assert layer_latency(r) == pytest.approx((1200 + 2.48 + 20) * NS, rel=1e-9)
    # EP: die 0 loads both hot experts back to back on its one channel (2400 ns), computes the
    # second at 2400 ns (2.48 ns) and returns 2 tokens' outputs to die 1 (40 bytes, 40 ns).
    _, r_ep = run(module, target, "ep", trace)
    assert layer_latency(r_ep) == pytest.approx((2400 + 2.48 + 40) * NS, rel=1e-9)


def test_hydra_without_routing_is_an_even_spread(tmp_path: Path) -> None:
    from moec.compiler.lower import lower
    from moec.ir.stream import TargetRef

    p = lower(moe_module(4, 1, 4), TargetRef(hand_target(tmp_path)), "hydra", {}, None)
    assert p.runtime[0].params["load_source"] == "uniform"
    assert p.runtime[0].params["placement"] == [0, 1, 0, 1]


def test_hydra_calibration_file_and_cap(tmp_path: Path) -> None:
    target = hand_target(tmp_path)
    module = moe_module(4, 1, 4)
    calib = synth_zipf(1, 4, 1, 100, zipf=2.0, seed=1, num_dies=2, layer_names=["moe0"])
    path = tmp_path / "calib.json"
    save_trace(calib, path)
    p, _ = run(module, target, "hydra", routing(IDS, HOME, 4), {"calibration": str(path)})
    assert p.runtime[0].params["load_source"] == "calibration"
    assert p.runtime[0].params["load"] == calib.layers[0].expert_load().tolist()
    one_hot = routing([[0]] * 4, HOME, 4)  # loads [4, 0, 0, 0]
    p, _ = run(module, target, "hydra", one_hot, {"cap": "none"})
    assert p.runtime[0].params["placement"] == [0, 1, 1, 1]  # the hot expert alone on die 0
    p, _ = run(module, target, "hydra", one_hot)
    assert p.runtime[0].params["placement"] == [0, 1, 1, 0]  # at most 2 experts per die
    with pytest.raises(StrategyError, match="option cap: expected even, none or an integer"):
        run(module, target, "hydra", routing(IDS, HOME, 4), {"cap": "lots"})
    with pytest.raises(StrategyError, match="routing trace not found"):
        run(module, target, "hydra", routing(IDS, HOME, 4), {"calibration": "nope.json"})


def test_hydra_accumulates_every_pair_once() -> None:
    module = moe_module(32, 2, 256, hidden=64, ffn=128)
    trace = synth_zipf(1, 32, 2, 256, zipf=1.0, seed=5, num_dies=9, layer_names=["moe0"])
    p, r = run(module, "fsedp-3x3", "hydra", trace)
    assert coverage(r.expanded) == expected_coverage(trace, p.layouts[0].count)


def test_hydra_numerics_match_onnxruntime(tmp_path: Path) -> None:
    from numerics_check import check_strategy

    trace = synth_zipf(2, 8, 2, 8, zipf=1.5, seed=2, num_dies=9)
    assert check_strategy("models/tiny_moe.onnx", "hydra", "fsedp-3x3", tmp_path, trace) < 1e-4


@pytest.mark.parametrize("target", ["fsedp-2x2", "fsedp-3x3"])
def test_moec_check_passes(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    from moec.compiler.cli.main import main

    assert main(["check", "models/tiny_moe.onnx", "--strategy", "hydra", "--target", target]) == 0
    assert "passed" in capsys.readouterr().out
