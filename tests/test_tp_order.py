"""TP's slice order (``tp{order=balanced}``, backends/interp/expand/tp_order.py): each die's hot
slices spread among its cold ones against its compute backlog; the same work, another order."""

from __future__ import annotations

from pathlib import Path

import pytest
from numerics_check import check_strategy
from strategy_cases import coverage, expected_coverage, moe_module

from moec.backends.interp import simulate
from moec.backends.interp.expand.tp_order import balanced
from moec.compiler.cli.main import main
from moec.compiler.lower import lower
from moec.compiler.lower.options import StrategyError
from moec.ir.errors import ProgramError
from moec.ir.routing_synth import synth_zipf
from moec.ir.stream import Gemm, Load, TargetRef, parse_program, print_program, verify_program

TINY = str(Path(__file__).resolve().parents[1] / "models" / "tiny_moe.onnx")
EXPERTS, TOP_K, TOKENS, SLICES = 16, 2, 512, 8
# Zipf 1.6: a few hot experts whose slices' compute outlasts their loads
TRACE = synth_zipf(1, EXPERTS, TOP_K, TOKENS, 1.6, 1, 4, layer_names=["moe0"])


def _run(options: dict[str, str]):  # type: ignore[no-untyped-def]
    module = moe_module(EXPERTS, TOP_K, TOKENS, hidden=256, ffn=512)
    p = lower(module, TargetRef("fsedp-2x2"), "tp", {"slices": str(SLICES), **options}, TRACE)
    return p, simulate(p, routings=TRACE)


def test_balanced_spreads_hot_items_among_cold_ones() -> None:
    hot, cold = (3.0, 1.0), (0.5, 1.0)
    order = balanced([hot, hot, cold, cold, cold, cold, cold, cold])
    assert sorted(order) == list(range(8))
    assert order[0] == 0  # the hottest first, while nothing is queued
    # after a hot item (2 s of backlog) cold items follow until the backlog is gone
    assert order.index(1) - order.index(0) > 2
    assert balanced([]) == []
    assert balanced([cold, cold]) == [0, 1]  # nothing behind: ties keep the natural order


def _tokens_per_load(expanded) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """Per die, the token count of each slice in stream order."""
    out = []
    for st in expanded.streams:
        sizes = [len(i.tokens) for i in st.instrs if isinstance(i, Gemm)]
        out.append(sizes)
    return out


def test_balanced_is_the_same_work_in_another_order() -> None:
    plain, r0 = _run({})
    bal, r1 = _run({"order": "balanced"})
    assert "order" not in plain.runtime[0].params
    assert bal.runtime[0].params["order"] == "balanced"
    assert r0.expanded is not None and r1.expanded is not None
    assert coverage(r1.expanded) == coverage(r0.expanded) == expected_coverage(TRACE, SLICES)
    assert sum(r1.timeline.dram_bytes) == sum(r0.timeline.dram_bytes)
    loads = [sum(isinstance(i, Load) for i in st.instrs) for st in r1.expanded.streams]
    assert loads == [sum(isinstance(i, Load) for i in st.instrs) for st in r0.expanded.streams]
    natural, spread = _tokens_per_load(r0.expanded), _tokens_per_load(r1.expanded)
    assert natural != spread and [sorted(x) for x in natural] == [sorted(x) for x in spread]
    # the hottest expert's slices no longer come back to back on die 0
    top = max(spread[0])
    at = [i for i, n in enumerate(spread[0]) if n == top]
    assert min(b - a for a, b in zip(at, at[1:], strict=False)) > 1


def test_balanced_keeps_the_channels_busy_on_a_skewed_batch() -> None:
    """Yuan2.0-M32, 256 tokens, Zipf 1.6 seed 1, fsedp-2x2: experts 26 and 28 take 186 and 108
    of the 512 pairs; in ascending id their slices stall the channels (the die's slots full)."""
    from moec.bench import run_bench

    rows = run_bench(
        "yuan2-m32", "fsedp-2x2", [256], ["tp{slices=32}", "tp{order=balanced,slices=32}"],
        routing="synth:zipf=1.6,seed=1",
    )  # fmt: skip
    natural, spread = (float(r["latency_s"]) for r in rows)
    assert spread < 0.97 * natural  # 18.95 -> 18.01 ms, at the DRAM bound (17.97 ms)


@pytest.mark.parametrize(
    ("model", "strategy", "target"),
    [
        (TINY, "tp{order=balanced}", "fsedp-2x2"),
        ("tiny_deepseek", "tp{order=balanced}", "fsedp-3x3"),
        ("tiny_deepseek", "tp{chunk=3,order=balanced,window=2}", "fsedp-3x3"),
    ],
)
def test_balanced_numerics_match_onnx_runtime(
    model: str, strategy: str, target: str, tmp_path: Path
) -> None:
    assert check_strategy(model, strategy, target, tmp_path) < 1e-4


def test_order_is_checked_and_verified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = moe_module(EXPERTS, TOP_K, TOKENS, hidden=64, ffn=128)
    with pytest.raises(StrategyError, match=r"option order: expected one of natural, balanced"):
        lower(module, TargetRef("fsedp-2x2"), "tp", {"order": "paired"}, TRACE)
    p, _ = _run({"order": "balanced"})
    text = print_program(p)
    assert 'param order = "balanced"' in text
    assert print_program(parse_program(text, "o.msp")) == text
    bad = parse_program(text.replace('order = "balanced"', 'order = "hot"'), "o.msp")
    with pytest.raises(ProgramError, match=r"o\.msp:\d+:\d+: .*param order"):
        verify_program(bad)
    out = tmp_path / "t.msp"
    assert main(["compile", TINY, "-o", str(out), "--strategy", "tp{order=sideways}"]) == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "option order: expected one of" in err
