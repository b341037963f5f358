"""A hybrid within a layer: ``hydra{split=N}`` cuts the N hottest experts over all dies (TP-style)
and places the rest whole (EP-style); the policy records it as ``param split`` /
``split_channels`` and the EP expander runs it."""

from __future__ import annotations

from pathlib import Path

import pytest
from strategy_cases import coverage, expected_coverage, hand_target, moe_module, routing

from moec.backends.interp import simulate
from moec.backends.interp.expand import expand_program
from moec.backends.interp.simulate import check_routings
from moec.check import check_model
from moec.compiler.lower import lower
from moec.compiler.lower.options import StrategyError
from moec.ir.errors import ProgramError
from moec.ir.stream import Gemm, Load, TargetRef, parse_program, print_program, verify_program
from moec.ir.target import load_target

# 4 experts, top-1, 8 tokens on 2 dies: expert 2 takes 5 tokens (hot), 0, 1 and 3 one each.
IDS = [[2], [2], [0], [2], [1], [2], [3], [2]]
HOME = [0, 0, 0, 0, 1, 1, 1, 1]


def _lower(tmp_path: Path, split: int, slow: bool = False) -> tuple[object, object]:
    target = hand_target(tmp_path)
    if slow:  # 1 MAC per die: 2e9 FLOP/s, a token of an expert takes 600 ns, its load 1200
        Path(target).write_text(Path(target).read_text().replace("macs = 500", "macs = 1"))
    trace = routing(IDS, HOME, experts=4)
    module = moe_module(experts=4, top_k=1, tokens=8)
    p = lower(module, TargetRef(target), "hydra", {"split": str(split), "slices": "2"}, trace)
    return p, trace


def test_split_takes_the_hottest_experts_and_cuts_them_over_every_die(tmp_path: Path) -> None:
    p, trace = _lower(tmp_path, 1)
    (policy,) = p.runtime  # type: ignore[attr-defined]
    assert policy.params["split"] == [2]
    assert len(policy.params["split_channels"]) == 2  # one per micro-slice
    target = load_target(hand_target(tmp_path), {})
    expanded = expand_program(p, target, check_routings(p, target, trace))  # type: ignore[arg-type]
    hot = {(st.die, i.content.slice) for st in expanded.streams for i in st.instrs
           if isinstance(i, Load) and i.content.expert == 2}  # fmt: skip
    assert hot == {(0, 0), (1, 1)}  # slice j on die j * D // S: both dies work on expert 2
    # every die computes its slice for all five of expert 2's tokens, homed on both dies
    for st in expanded.streams:
        gemms = [i for i in st.instrs if isinstance(i, Gemm)]
        assert any(len(list(g.tokens)) == 5 for g in gemms)
    assert coverage(expanded) == expected_coverage(trace, 2)  # type: ignore[arg-type]
    verify_program(expanded, target=target)


def test_split_spreads_the_hot_experts_compute(tmp_path: Path) -> None:
    whole, trace = _lower(tmp_path, 0, slow=True)
    split, _ = _lower(tmp_path, 1, slow=True)
    a = simulate(whole, routings=trace).report.layers[0].latency_s  # type: ignore[arg-type]
    b = simulate(split, routings=trace).report.layers[0].latency_s  # type: ignore[arg-type]
    assert b < 0.85 * a  # 4.38 -> 3.51 us: whole, expert 2's five tokens make its die the straggler


def test_split_option_and_param_errors(tmp_path: Path) -> None:
    with pytest.raises(StrategyError, match="option split: expected an integer in 0..4"):
        _lower(tmp_path, 5)
    p, _ = _lower(tmp_path, 1)
    text = print_program(p).replace("param split = [2]", "param split = [2, 7]")  # type: ignore[arg-type]
    bad = parse_program(text, "h.msp")
    with pytest.raises(ProgramError, match=r"h\.msp:\d+:\d+: .*param split"):
        verify_program(bad)


@pytest.mark.parametrize("model", ["tiny_deepseek", "tiny_moe"])
def test_split_numerics_match_onnx_runtime(model: str) -> None:
    path = str(Path(__file__).resolve().parent.parent / "models" / "tiny_moe.onnx")
    report = check_model(model if model != "tiny_moe" else path, strategy="hydra{split=2}")
    assert report.passed, report
