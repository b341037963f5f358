"""Online choice (issue 18 item 3): routing statistics, the decision list, the ISA round trip,
the verifier, the runtime expansion (a choosing program picks by routing and times exactly as
the chosen alternative alone), numerics against ONNX Runtime, and ``--alternatives``."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moec.backends.interp import simulate
from moec.backends.interp.online import with_alternatives
from moec.backends.ort.check import compare, run_ort
from moec.check import check_model, model_inputs
from moec.compile import compile_model, load_model, write_compiled
from moec.compiler.lower import lower
from moec.ir.errors import ProgramError, ScheduleError
from moec.ir.routing import LayerRouting, RoutingTrace
from moec.ir.stream import TargetRef, load_program, parse_program, print_program, verify_program
from moec.ir.stream.online import OPS, STATS, choose, routing_stats
from moec.ir.stream.program import Choice, Condition
from moec.online import Sample, fit_rule, merge

#: four experts, two dies' worth of slots: EP (alternative 0) or TP (alternative 1) by skew
EXAMPLE = """moec 1
program "online-example"

target "fsedp-2x2" { sram_mib_per_die = 4 }

moe L0 { experts = 4, top_k = 1, hidden = 64, ffn = 128, shared_ffn = 0, gated = true, dtype = "fp16", tokens = 16, input = "h0", output = "h1" }
layout L0 cols 0..63,64..127

slots die 0 count 2 bytes 24576
slots die 1 count 2 bytes 24576
slots die 2 count 2 bytes 24576
slots die 3 count 2 bytes 24576

die 0 {
  moe L0
}

die 1 {
  moe L0
}

die 2 {
  moe L0
}

die 3 {
  moe L0
}

runtime L0 {
  strategy online
  when skew >= 2.5 use 1
  otherwise use 0
  alternative 0 {
    strategy ep
    param placement = [0, 1, 2, 3]
  }
  alternative 1 {
    strategy tp
    param owner = [0, 2]
  }
}
"""


def _routing(ids: list[list[int]], experts: int = 4) -> LayerRouting:
    a = np.array(ids, dtype=np.int64)
    t = a.shape[0]
    return LayerRouting(
        "L0", experts, a.shape[1], a, np.ones(a.shape, np.float32), np.arange(t) % 4
    )


def test_routing_stats_by_hand() -> None:
    ids = np.array([[0, 1], [0, 2], [0, 1], [3, 0]])
    s = routing_stats(ids, experts=4, num_dies=2)
    # loads 4, 2, 1, 1 of 8 pairs: mean 2; dies (e mod 2) hold 5 and 3 of a mean 4
    assert (s.tokens, s.active, s.max_load, s.skew, s.imbalance) == (4, 4, 4, 2.0, 1.25)
    dropped = routing_stats(np.array([[0, -1], [1, -1]]), experts=4, num_dies=2)
    assert (dropped.active, dropped.max_load, dropped.skew) == (2, 1, 2.0)


def test_the_first_line_that_holds_chooses() -> None:
    rule = [
        Choice((Condition("skew", ">=", 2.5),), 1),
        Choice((Condition("active", "<", 3.0), Condition("tokens", ">", 2.0)), 2),
        Choice((), 0),
    ]
    stats = lambda ids: routing_stats(np.array(ids), experts=4, num_dies=2)  # noqa: E731
    assert choose(rule, stats([[0], [1], [2], [3]])) == 0  # skew 1, active 4
    assert choose(rule, stats([[0], [0], [1], [1]])) == 2  # skew 2: no; active 2, tokens 4
    assert choose(rule, stats([[0], [0], [0], [1]])) == 1  # skew 3 comes first
    assert choose(rule, stats([[0], [1], [2]])) == 0  # skew 4/3, active 3


_conditions = st.builds(
    Condition,
    st.sampled_from(STATS),
    st.sampled_from(OPS),
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: float(v)),
)


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.lists(_conditions, min_size=1, max_size=3), max_size=3),
    uses=st.lists(st.integers(0, 1), min_size=4, max_size=4),
)
def test_round_trip_of_any_decision_list(lines: list[list[Condition]], uses: list[int]) -> None:
    p = parse_program(EXAMPLE, "ex.msp")
    rule = [Choice(tuple(c), uses[i]) for i, c in enumerate(lines)] + [Choice((), uses[-1])]
    p.runtime[0].choices = rule
    text = print_program(p)
    again = parse_program(text, "ex.msp")
    verify_program(again)
    assert again.runtime[0].choices == rule
    assert again.runtime[0].alternatives == p.runtime[0].alternatives
    assert print_program(again) == text


def test_example_is_canonical() -> None:
    p = parse_program(EXAMPLE, "ex.msp")
    verify_program(p)
    assert print_program(p) == EXAMPLE
    assert [a.strategy for a in p.runtime[0].alternatives] == ["ep", "tp"]


@pytest.mark.parametrize(
    ("old", "new", "message", "line"),
    [
        ("  alternative 1 {\n    strategy tp\n    param owner = [0, 2]\n  }\n", "",
         "strategy online needs 2 to 4 alternatives, found 1", 30),
        ("when skew >= 2.5 use 1", "when skew >= 2.5 use 2",
         "'use 2' names no alternative, expected 0..1", 32),
        ("when skew", "when hotness", "unknown routing statistic 'hotness', expected one of", 32),
        ("  otherwise use 0\n", "", "the decision list must end with 'otherwise use N'", 32),
        ("  when skew >= 2.5 use 1\n  otherwise use 0\n",
         "  otherwise use 0\n  when skew >= 2.5 use 1\n  otherwise use 0\n",
         "'otherwise' must be the last line", 32),
        ("strategy online", "strategy ep", "need 'strategy online', found strategy ep", 34),
        ("  when skew", "  param slack = 0.1\n  when skew",
         "param slack belongs in an alternative", 32),
        ("param owner = [0, 2]", "param owner = [0, 9]", "param owner must be", 40),
        ("  alternative 1 {", "  alternative 2 {", "expected alternative 1 here", 38),
    ],
)  # fmt: skip
def test_bad_online_policies_are_located_errors(
    old: str, new: str, message: str, line: int
) -> None:
    assert old in EXAMPLE
    with pytest.raises(ProgramError) as e:
        verify_program(parse_program(EXAMPLE.replace(old, new, 1), "ex.msp"))
    assert message in e.value.message
    assert str(e.value).startswith(f"ex.msp:{line}:")


def test_a_choosing_program_picks_by_routing_and_times_as_the_alternative_alone() -> None:
    p = parse_program(EXAMPLE, "ex.msp")
    uniform = _routing([[e % 4] for e in range(16)])  # skew 1
    skewed = _routing([[0]] * 13 + [[1], [2], [3]])  # skew 3.25
    for routing, pick in ((uniform, 0), (skewed, 1)):
        res = simulate(p, routings=[routing])
        assert res.report.extra["online_choice"]["L0"]["alternative"] == pick
        assert res.report.to_dict()["online_choice"]["L0"]["strategy"] == ["ep", "tp"][pick]
        alone_text = EXAMPLE.split("runtime L0")[0] + (
            "runtime L0 {\n  strategy ep\n  param placement = [0, 1, 2, 3]\n}\n"
            if pick == 0
            else "runtime L0 {\n  strategy tp\n  param owner = [0, 2]\n}\n"
        )
        alone = simulate(parse_program(alone_text, "alone.msp"), routings=[routing])
        assert res.report.latency_s == alone.report.latency_s
        assert res.expanded is not None and alone.expanded is not None
        assert print_program(res.expanded) == print_program(alone.expanded)
    a = simulate(p, routings=[uniform]).report.latency_s
    b = simulate(p, routings=[skewed]).report.latency_s
    assert a != b


def test_fit_rule_finds_the_threshold_between_the_regimes() -> None:
    def sample(skew_ids: list[list[int]], lat: list[float]) -> Sample:
        return Sample("d", "L0", routing_stats(np.array(skew_ids), 4, 2), lat)

    samples = [
        sample([[0], [1], [2], [3]], [1.0, 2.0]),  # skew 1: alternative 0 wins
        sample([[0], [0], [1], [2]], [1.0, 1.5]),  # skew 2
        sample([[0], [0], [0], [1]], [3.0, 1.0]),  # skew 3: alternative 1 wins
        sample([[0], [0], [0], [0]], [4.0, 1.0]),  # skew 4
    ]
    rule = fit_rule(samples, [0, 1])
    assert rule[-1] == Choice((), 1)  # fastest in total: 5.5 against 9.0
    assert len(rule) == 2
    (cond,) = rule[0].conditions
    assert rule[0].use == 0
    picks = [choose(rule, s.stats) for s in samples]
    assert picks == [0, 0, 1, 1]
    assert fit_rule(samples, [0, 1]) == rule  # deterministic
    assert fit_rule(samples[2:], [0, 1]) == [Choice((), 1)]  # nothing to gain: one line


def _tiny(strategy: str) -> object:
    module, _, name = load_model("tiny_moe")
    return lower(module, TargetRef("fsedp-2x2"), *_split(strategy), None, name=name)


def _split(spec: str) -> tuple[str, dict[str, str]]:
    from moec.compiler.lower import parse_strategy

    return parse_strategy(spec)


def test_merge_refuses_alternatives_without_one_static_part() -> None:
    a, b = _tiny("ep"), _tiny("ep{slots=8}")
    with pytest.raises(ScheduleError, match="do not share a static part: their slot pools differ"):
        merge([a, b], [Choice((), 0)], ["ep", "ep{slots=8}"])  # type: ignore[list-item]
    ep, hydra = _tiny("ep{placement=blocks}"), _tiny("ep")
    both = merge([ep, hydra], [Choice((), 0)], ["blocks", "rr"])  # type: ignore[list-item]
    verify_program(both)
    assert any(t.name == "moe0.e1.alt1" for t in both.tensors)  # a second copy, other channel


def _compile(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "moec", "compile", "tiny_moe", "-o", str(tmp_path / "p.msp"),
           "--strategy", "auto", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def test_compile_alternatives_explains_and_is_deterministic(tmp_path: Path) -> None:
    r = _compile(tmp_path, "--alternatives", "2", "--explain")
    assert r.returncode == 0, r.stderr
    assert "online choice: " in r.stdout
    rule = next(ln for ln in r.stdout.splitlines() if ln.startswith("rule: "))
    assert rule.endswith(tuple(f"otherwise use {i}" for i in range(2)))
    text = (tmp_path / "p.msp").read_text()
    p = parse_program(text, "p.msp")
    assert {r.strategy for r in p.runtime} == {"online"}
    assert len(p.runtime[0].alternatives) == 2
    assert "strategy online" in r.stdout.splitlines()[-1]
    again = _compile(tmp_path, "--alternatives", "2", "--explain")
    assert again.stdout == r.stdout and (tmp_path / "p.msp").read_text() == text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--alternatives", "5"], "--alternatives: expected 2 to 4 alternatives, found 5"),
        (["--alternatives", "2", "--objective", "energy"], "--alternatives: it chooses among"),
        (
            ["--alternatives", "2", "--online-draws", "x.json"],
            "calibration draw 'x.json': expected",
        ),
    ],
)
def test_bad_alternatives_exit_2_and_write_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    r = _compile(tmp_path, *args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.msp").exists()


def test_check_a_choosing_program_against_onnx_runtime() -> None:
    report = check_model("tiny_moe", strategy="auto", alternatives=2)
    assert report.passed, report


def test_every_alternative_computes_the_model(tmp_path: Path) -> None:
    path = str(tmp_path / "p.msp")
    compiled = compile_model("tiny_moe", path, strategy="auto", alternatives=3)
    write_compiled(compiled, path)
    p = load_program(path)
    feeds, _ = model_inputs(compiled.module, compiled.lifted)
    want = run_ort(compiled.lifted.model, feeds)
    for i in range(len(p.runtime[0].alternatives)):
        forced = with_alternatives(p, {r.layer: i for r in p.runtime})
        res = simulate(dataclasses.replace(forced, filename=p.filename), inputs=feeds,
                       base_dir=str(tmp_path))  # fmt: skip
        assert res.outputs is not None
        assert compare(res.outputs, want, 1e-4).passed


def test_serving_runs_a_choosing_program() -> None:
    """Two iterations in one simulation: the skewed one runs TP, the uniform one EP."""
    from moec.backends.interp.serving import simulate_iterations
    from moec.ir.routing_seq import RoutingSequence

    p = parse_program(EXAMPLE, "ex.msp")
    uniform = _routing([[e % 4] for e in range(16)])
    skewed = _routing([[0]] * 13 + [[1], [2], [3]])
    seq = RoutingSequence([RoutingTrace("x", 4, [r]) for r in (uniform, skewed)])
    res = simulate_iterations(p, iterations=2, routings=seq)
    one = [simulate(p, routings=[r]).report.latency_s for r in (uniform, skewed)]
    assert res.report.latency_s >= max(one)


def test_shared_slices_option_sets_the_shared_layout() -> None:
    module, _, name = load_model("tiny_deepseek")
    p = lower(module, TargetRef("fsedp-2x2"), "ep", {"shared_slices": "12"}, None, name=name)
    assert [lay.count for lay in p.layouts if lay.shared] == [12] * len(p.layers)
    with pytest.raises(ScheduleError, match="shared_slices=1 makes shared-expert slices of moe0"):
        lower(module, TargetRef("fsedp-2x2"), "ep", {"shared_slices": "1"}, None, name=name)
    with pytest.raises(ScheduleError, match="option shared_slices=100000: the shared experts"):
        lower(module, TargetRef("fsedp-2x2"), "ep", {"shared_slices": "100000"}, None, name=name)
