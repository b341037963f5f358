"""EPLB: replication and packing, token split, hand-computed latency, coverage, numerics."""

from __future__ import annotations

import random
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

from moec.backends.interp.expand.eplb import split_tokens
from moec.ir.errors import ProgramError
from moec.ir.routing_synth import synth_zipf
from moec.ir.target import Target, load_target


def test_eplb_latency_by_hand(tmp_path: Path) -> None:
    target = hand_target(tmp_path)
    # All 4 tokens (2 per die) go to expert 0: one extra replica puts a copy on each die and
    # every token is served where it lives: one 1200-byte load per die (1200 ns) and 2 tokens
    # of compute (2.48 ns), no transfer.
    module, trace = moe_module(2, 1, 4), routing([[0]] * 4, [0, 0, 1, 1], 2)
    p, r = run(module, target, "eplb", trace, {"extra": "1"})
    assert p.runtime[0].params["replicas"] == [[0, 1], [0]]
    assert layer_latency(r) == pytest.approx((1200 + 2.48) * NS, rel=1e-9)
    assert r.report.dram_bytes == [20 + 1200, 20 + 1200]  # router share + one copy each
    # EP: die 0 loads expert 0 once (1200 ns, the 2 remote tokens arrive meanwhile), computes
    # 4 tokens (4.96 ns) and sends 2 outputs back (40 bytes, 40 ns).
    _, r_ep = run(module, target, "ep", trace)
    assert layer_latency(r_ep) == pytest.approx((1200 + 4.96 + 40) * NS, rel=1e-9)
    # with no budget EPLB is EP
    p0, r0 = run(module, target, "eplb", trace, {"extra": "0"})
    assert p0.runtime[0].params["replicas"] == [[0], [1]]
    assert layer_latency(r0) == pytest.approx(layer_latency(r_ep), rel=1e-9)


def test_split_tokens_balances_and_prefers_local() -> None:
    t = load_target("fsedp-2x2")
    # 5 tokens, replicas on dies 1 and 2: quotas 3 and 2; tokens homed on 1 and 2 stay there.
    split = split_tokens([0, 1, 2, 3, 4], [1, 2, 0, 3, 1], [1, 2], t)
    assert split == {1: [0, 2, 4], 2: [1, 3]}
    # all tokens on die 0: the first listed replica gets the larger quota (2 of 3); dies 1 and 2
    # are both one hop from die 0, so the tie goes to the lower die while it has quota
    assert split_tokens([5, 6, 7], [0, 0, 0], [2, 1], t) == {2: [6, 7], 1: [5]}


def _split_reference(
    tokens: list[int], home: list[int], dies: list[int], t: Target
) -> dict[int, list[int]]:  # fmt: skip
    """The module docstring's rule, token by token: the nearest replica with quota left."""
    n, r = len(tokens), len(dies)
    quota = {d: n // r + (1 if i < n % r else 0) for i, d in enumerate(dies)}
    out: dict[int, list[int]] = {d: [] for d in dies}
    rest = []
    for tok, h in zip(tokens, home, strict=True):
        if quota.get(h, 0) > 0:
            out[h].append(tok)
            quota[h] -= 1
        else:
            rest.append((tok, h))
    for tok, h in rest:
        d = min((d for d in dies if quota[d] > 0), key=lambda d: (t.hops(h, d), d))
        out[d].append(tok)
        quota[d] -= 1
    return {d: sorted(ts) for d, ts in out.items()}


@pytest.mark.parametrize("target", ["fsedp-2x2", "fsedp-4x4", "npu8-hbm"])
def test_split_tokens_follows_the_rule_token_by_token(target: str) -> None:
    t = load_target(target)
    rng = random.Random(3)
    for _ in range(60):
        tokens = sorted(rng.sample(range(500), rng.randrange(0, 120)))
        home = [rng.randrange(t.num_dies) for _ in tokens]
        dies = rng.sample(range(t.num_dies), rng.randrange(1, min(t.num_dies, 5) + 1))
        assert split_tokens(tokens, home, dies, t) == _split_reference(tokens, home, dies, t)


def test_eplb_accumulates_every_pair_once() -> None:
    module = moe_module(16, 2, 128, hidden=64, ffn=256)
    trace = synth_zipf(1, 16, 2, 128, zipf=1.5, seed=7, num_dies=4, layer_names=["moe0"])
    p, r = run(module, "fsedp-2x2", "eplb", trace, {"extra": "6"})
    replicas = p.runtime[0].params["replicas"]
    assert sum(len(x) for x in replicas) == 16 + 6  # type: ignore[arg-type, misc]
    assert all(len(set(x)) == len(x) for x in replicas)  # type: ignore[arg-type, union-attr]
    assert coverage(r.expanded) == expected_coverage(trace, p.layouts[0].count)


def test_eplb_bad_replicas_param(tmp_path: Path) -> None:
    from moec.backends.interp import simulate

    target = hand_target(tmp_path)
    module, trace = moe_module(2, 1, 4), routing([[0]] * 4, [0, 0, 1, 1], 2)
    p, _ = run(module, target, "eplb", trace)
    p.runtime[0].params["replicas"] = [[0, 0], [1]]
    with pytest.raises(ProgramError, match="param replicas must be 2 lists of distinct dies"):
        simulate(p, routings=trace)


def test_eplb_numerics_match_onnxruntime(tmp_path: Path) -> None:
    from numerics_check import check_strategy

    trace = synth_zipf(2, 8, 2, 8, zipf=1.5, seed=2, num_dies=4)
    assert check_strategy("models/tiny_moe.onnx", "eplb", "fsedp-2x2", tmp_path, trace) < 1e-4
    assert check_strategy("tiny_deepseek", "eplb", "fsedp-3x3", tmp_path) < 1e-4


@pytest.mark.parametrize("target", ["fsedp-2x2", "fsedp-3x3"])
def test_moec_check_passes(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    from moec.compiler.cli.main import main

    assert main(["check", "models/tiny_moe.onnx", "--strategy", "eplb", "--target", target]) == 0
    assert "passed" in capsys.readouterr().out
