"""Chunked token dispatch for TP (``tp{window=K[,chunk=N]}``, backends/interp/expand/tp_chunked.py):
each expert's tokens are gathered on the dies just before its slices and reduced right after,
at most K chunks in flight per die, so a die holds fewer activations than plain TP's whole
batch; the policy records ``param window`` / ``param chunk``."""

from __future__ import annotations

from pathlib import Path

import pytest
from numerics_check import check_strategy
from strategy_cases import coverage, expected_coverage, moe_module

from moec.backends.interp import simulate
from moec.backends.interp.expand import expand_program
from moec.backends.interp.simulate import check_routings
from moec.compiler.cli.main import main
from moec.compiler.lower import lower
from moec.compiler.lower.options import StrategyError
from moec.ir.errors import ProgramError
from moec.ir.routing_synth import synth_zipf
from moec.ir.stream import (
    Load,
    Recv,
    Signal,
    TargetRef,
    Wait,
    parse_program,
    print_program,
    verify_program,
)
from moec.ir.target import load_target

TINY = str(Path(__file__).resolve().parents[1] / "models" / "tiny_moe.onnx")
# one shape-only layer, 16 experts top-2, 512 tokens over the 4 dies of fsedp-2x2 (uniform
# routing: at most 75 tokens per expert), 4 slices
EXPERTS, TOP_K, TOKENS, SLICES = 16, 2, 512, 4
TRACE = synth_zipf(1, EXPERTS, TOP_K, TOKENS, 0.0, 0, 4, layer_names=["moe0"])


def _run(options: dict[str, str]):  # type: ignore[no-untyped-def]
    module = moe_module(EXPERTS, TOP_K, TOKENS, hidden=64, ffn=128)
    p = lower(module, TargetRef("fsedp-2x2"), "tp", {"slices": str(SLICES), **options}, TRACE)
    return p, simulate(p, routings=TRACE)


def test_window_lowers_the_activation_peak_and_computes_every_pair_once() -> None:
    plain, r0 = _run({})
    chunked, r1 = _run({"window": "1"})
    (policy,) = chunked.runtime
    assert policy.params["window"] == 1
    assert "window" not in plain.runtime[0].params
    acts0, acts1 = max(r0.timeline.peak_sram_activations), max(r1.timeline.peak_sram_activations)
    # plain TP holds every token's x and partial y on every die; window=1 only one expert's
    assert acts1 < 0.6 * acts0  # 186368 -> 85120 bytes
    assert r1.expanded is not None
    assert coverage(r1.expanded) == expected_coverage(TRACE, SLICES)
    # same weights read; each token crosses the links once per expert it is routed to
    assert sum(r1.timeline.dram_bytes) == sum(r0.timeline.dram_bytes)
    assert sum(r1.timeline.link_bytes.values()) > sum(r0.timeline.link_bytes.values())


def test_window_bounds_the_chunks_in_flight() -> None:
    """On each die, chunk c's x receptions follow a wait for the die's own chunk c-K."""
    target = load_target("fsedp-2x2")
    for window in (1, 2):
        p, _ = _run({"window": str(window)})
        expanded = expand_program(p, target, check_routings(p, target, TRACE))
        for st in expanded.streams:
            event = f"moe0.chunk.d{st.die}"
            signals, gate, checked = 0, 0, 0
            for i in st.instrs:
                if isinstance(i, Signal) and i.event == event:
                    signals += 1
                elif isinstance(i, Wait) and i.event == event:
                    gate = i.count
                elif isinstance(i, Recv) and i.block is not None and i.block.which == "x":
                    assert gate == max(0, signals - window + 1)
                    checked += 1
            assert signals > window and checked > 0
        verify_program(expanded, target=target)
        again = parse_program(print_program(expanded), "e.msp")
        assert print_program(again) == print_program(expanded)


def test_expanded_chunked_program_runs_the_same() -> None:
    p, r = _run({"window": "2"})
    assert r.expanded is not None
    again = simulate(parse_program(print_program(r.expanded), "e.msp"))
    assert again.timeline.makespan == r.timeline.makespan
    assert again.timeline.peak_sram == r.timeline.peak_sram


def test_chunk_cuts_an_expert_and_streams_it_again() -> None:
    _, r1 = _run({"window": "1"})
    _, r2 = _run({"window": "1", "chunk": "64"})
    assert r2.expanded is not None
    assert coverage(r2.expanded) == expected_coverage(TRACE, SLICES)
    loads = sum(isinstance(i, Load) for st in r2.expanded.streams for i in st.instrs)
    hot = max(int(n) for n in TRACE.layers[0].expert_load())
    assert hot > 64  # the hottest expert is cut, so its slices stream more than once
    assert sum(r2.timeline.dram_bytes) > sum(r1.timeline.dram_bytes)
    assert loads > SLICES * sum(1 for n in TRACE.layers[0].expert_load() if n)
    acts1, acts2 = (max(r.timeline.peak_sram_activations) for r in (r1, r2))
    assert acts2 < acts1


@pytest.mark.parametrize(
    ("model", "strategy", "target"),
    [
        (TINY, "tp{window=1}", "fsedp-2x2"),
        (TINY, "tp{window=2,chunk=2}", "fsedp-3x3"),
        ("tiny_deepseek", "tp{window=2,chunk=3}", "fsedp-3x3"),
        ("tiny_moe_shared", "tp{window=1}", "fsedp-2x2"),
        (TINY, "ep{window=1}", "fsedp-2x2"),
        ("tiny_deepseek", "hydra{window=2,chunk=2}", "fsedp-3x3"),
        ("tiny_moe_shared", "ep{window=2,shared=replicated}", "fsedp-3x3"),
    ],
)
def test_chunked_numerics_match_onnx_runtime(
    model: str, strategy: str, target: str, tmp_path: Path
) -> None:
    assert check_strategy(model, strategy, target, tmp_path) < 1e-4


def test_window_options_are_checked() -> None:
    module = moe_module(EXPERTS, TOP_K, TOKENS, hidden=64, ffn=128)
    with pytest.raises(StrategyError, match=r"option window: expected an integer >= 1, found '0'"):
        lower(module, TargetRef("fsedp-2x2"), "tp", {"window": "0"}, TRACE)
    with pytest.raises(StrategyError, match=r"option chunk=8: needs window"):
        lower(module, TargetRef("fsedp-2x2"), "tp", {"chunk": "8"}, TRACE)
    with pytest.raises(StrategyError, match=r"unknown option 'window'"):
        lower(module, TargetRef("fsedp-2x2"), "eplb", {"window": "1"}, TRACE)
    with pytest.raises(StrategyError, match=r"window .*does not combine with split experts"):
        lower(module, TargetRef("fsedp-2x2"), "hydra", {"window": "1", "split": "2"}, TRACE)


def test_window_params_are_verified() -> None:
    p, _ = _run({"window": "2", "chunk": "64"})
    text = print_program(p)
    assert "param window = 2" in text and "param chunk = 64" in text
    assert print_program(parse_program(text, "c.msp")) == text
    for old, new in (("param window = 2", "param window = 0"), ("param window = 2\n", "")):
        bad = parse_program(text.replace(old, new), "c.msp")
        with pytest.raises(ProgramError, match=r"c\.msp:\d+:\d+: .*param (window|chunk)"):
            verify_program(bad)


def test_bad_window_on_the_command_line_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "t.msp"
    rc = main(["compile", TINY, "-o", str(out), "--strategy", "tp{window=two}"])
    assert rc == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "option window: expected an integer >= 1, found 'two'" in err


def test_ep_window_lowers_the_activation_peak() -> None:
    module = moe_module(EXPERTS, TOP_K, TOKENS, hidden=64, ffn=128)
    runs = []
    for options in ({}, {"window": "1"}):
        p = lower(module, TargetRef("fsedp-2x2"), "ep", {"slices": str(SLICES), **options}, TRACE)
        runs.append(simulate(p, routings=TRACE))
    plain, chunked = (max(r.timeline.peak_sram_activations) for r in runs)
    assert chunked < plain
    assert runs[1].expanded is not None
    assert coverage(runs[1].expanded) == expected_coverage(TRACE, SLICES)
