"""Serving runs: N iterations in one simulation, deferred pairs executed once within the slack."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from moec.backends.interp import program_target, simulate
from moec.backends.interp.numerics import load_weights, seeded_inputs
from moec.backends.interp.serving import iteration_name, simulate_iterations
from moec.compiler.cli.main import main
from moec.ir.errors import TraceError
from moec.ir.routing_seq import synth_sequence
from moec.ir.stream import Program, load_program
from moec.models.catalog import catalog

SLACK = 0.3


def _compile(tmp: Path, strategy: str, name: str = "tiny_moe") -> Program:
    out = tmp / f"{name}.msp"
    assert main(["compile", name, "-o", str(out), "--strategy", strategy]) == 0
    return load_program(str(out))


def _ort(name: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    model = catalog()[name].build(0)
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in sess.run(None, inputs)]


def _check_pairs_once(p: Program, result) -> None:  # type: ignore[no-untyped-def]
    """Every slice of every routed (token, expert) pair of every iteration accumulated once
    (wherever it ran: deferred pairs run as extra tokens of the next iteration), and nothing
    else accumulated."""
    counts = result.pairs
    want = 0
    for it, rs in enumerate(result.routings):
        for m, lr in zip(p.layers, rs, strict=True):
            slices = result.program.layout(iteration_name(m.name, it)).count
            for t in range(lr.tokens):
                for e in lr.ids[t].tolist():
                    if e < 0:
                        continue
                    for j in range(slices):
                        assert counts[(iteration_name(m.name, it), t, e, j)] == 1, (
                            it,
                            m.name,
                            t,
                            e,
                            j,
                        )
                        want += 1
    assert sum(counts.values()) == want


def test_multi_iteration_numerics_match_ort_and_every_pair_runs_once(tmp_path: Path) -> None:
    p = _compile(tmp_path, f"fsedp{{order=paired,slack={SLACK}}}")
    n = 4
    weights = load_weights(p, None)
    inputs = [seeded_inputs(weights, p.layers[0].tokens, seed=10 + i) for i in range(n)]
    r = simulate_iterations(p, iterations=n, inputs=inputs)
    assert r.outputs is not None and len(r.outputs) == n
    for x, out in zip(inputs, r.outputs, strict=True):
        for got, want in zip(out.values(), _ort("tiny_moe", x), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    _check_pairs_once(p, r)
    m = r.metrics
    assert m.deferred_pairs > 0, "the test needs token buffering to defer something"
    assert m.deferred_pairs_final == 0
    assert m.max_delay_iterations == 1  # deferred to the next iteration, never further


def test_deferred_pairs_stay_within_slack_and_wait_one_iteration(tmp_path: Path) -> None:
    p = _compile(tmp_path, f"fsedp{{order=paired,slack={SLACK}}}")
    n = 6
    seq = synth_sequence([(m.experts, m.top_k) for m in p.layers], p.layers[0].tokens, n,
                         drift=0.3, seed=2)  # fmt: skip
    r = simulate_iterations(p, iterations=n, routings=seq)
    _check_pairs_once(p, r)
    budget = math.floor(SLACK * p.layers[0].tokens + 1e-9)
    m = r.metrics
    assert m.deferred_pairs > 0 and m.deferred_pairs_final == 0
    assert sum(m.deferred_by_layer.values()) == m.deferred_pairs
    # per layer and iteration, no more pairs wait than the slack allows, as the single run says
    for i in range(n):
        single = simulate(p, routings=seq[i]).report.extra.get("deferred_pairs", 0)
        mine = sum(v for k, v in m.deferred_by_layer.items() if k.endswith(f"#{i}"))
        assert mine == single
    assert all(v <= budget for v in m.deferred_by_layer.values())
    assert m.max_delay_iterations == 1
    # a deferred pair finishes within the next iteration: its token is ready by then
    lat = r.metrics.token_latency_s
    ends = np.array(r.metrics.iteration_end_s)
    starts = np.array(r.metrics.iteration_start_s)
    for i in range(n):
        horizon = ends[min(i + 1, n - 1)] - starts[i]
        assert lat[i].max() <= horizon + 1e-15


def test_one_iteration_matches_the_single_run_without_buffering(tmp_path: Path) -> None:
    p = _compile(tmp_path, "fsedp{order=paired}")
    seq = synth_sequence([(m.experts, m.top_k) for m in p.layers], p.layers[0].tokens, 1, seed=0)
    single = simulate(p, routings=seq[0])
    serving = simulate_iterations(p, iterations=1, routings=seq)
    assert serving.metrics.makespan_s == pytest.approx(single.report.latency_s, rel=1e-12)
    assert serving.report.dram_bytes == single.report.dram_bytes


def test_iterations_overlap_and_throughput(tmp_path: Path) -> None:
    p = _compile(tmp_path, "ep")
    seq = synth_sequence([(m.experts, m.top_k) for m in p.layers], p.layers[0].tokens, 8, seed=1)
    r = simulate_iterations(p, iterations=8, routings=seq)
    singles = sum(simulate(p, routings=seq[i]).report.latency_s for i in range(8))
    m = r.metrics
    # one simulation with no reset is never slower than the iterations run apart
    assert m.makespan_s <= singles * (1 + 1e-9)
    assert m.tokens_per_s == pytest.approx(8 * p.layers[0].tokens / m.makespan_s)
    assert np.all(m.iteration_latency_s > 0)
    assert m.deferred_pairs == 0 and m.max_delay_iterations == 0


def test_too_short_routing_is_an_error(tmp_path: Path) -> None:
    p = _compile(tmp_path, "ep")
    seq = synth_sequence([(m.experts, m.top_k) for m in p.layers], p.layers[0].tokens, 2, seed=1)
    with pytest.raises(TraceError, match="the routing has 2 iterations, the run asks for 3"):
        simulate_iterations(p, iterations=3, routings=seq)


def _covering_sequence(p: Program, n: int):  # type: ignore[no-untyped-def]
    """Iteration 0 routes every expert of every layer; later iterations drift."""
    from moec.ir.routing_seq import RoutingSequence

    seq = synth_sequence([(m.experts, m.top_k) for m in p.layers], p.layers[0].tokens, n,
                         drift=0.5, seed=5)  # fmt: skip
    first = seq[0]
    for lr, m in zip(first.layers, p.layers, strict=True):
        t = np.arange(lr.tokens)
        lr.ids[:] = (t[:, None] + np.arange(m.top_k)[None, :]) % m.experts
    return RoutingSequence([first, *seq.iterations[1:]])


@pytest.mark.parametrize("strategy", ["ep", "tp"])
@pytest.mark.parametrize("policy", ["lru", "popularity"])
def test_residency_with_room_for_every_expert_loads_nothing_after_iteration_0(
    tmp_path: Path, strategy: str, policy: str
) -> None:
    from moec.backends.interp.residency import residency_rewrite

    p = _compile(tmp_path, strategy)
    n = 4
    seq = _covering_sequence(p, n)
    plain = simulate_iterations(p, iterations=n, routings=seq)
    rw = residency_rewrite(p, program_target(p), policy, capacity=1 << 30)
    kept = simulate_iterations(p, iterations=n, routings=seq, rewrite=rw)
    assert rw.miss_bytes[0] > 0 and rw.miss_bytes[1:] == [0] * (n - 1)
    assert rw.hits > 0
    saved = sum(plain.timeline.dram_bytes) - sum(kept.timeline.dram_bytes)
    assert saved == rw.saved_bytes > 0
    assert kept.metrics.makespan_s <= plain.metrics.makespan_s
    _check_pairs_once(p, kept)


def test_residency_hits_compute_at_the_experts_precision(tmp_path: Path) -> None:
    """A hit moves no bytes, so its precision comes from the plan, not the layer's dtype:
    keeping slices resident changes DRAM traffic, never any die's compute time."""
    import dataclasses

    from moec.backends.interp.residency import residency_rewrite

    p = _compile(tmp_path, "ep")
    table = tuple("int4" if e % 2 else "int8" for e in range(p.layers[0].experts))
    p = dataclasses.replace(p, runtime=[dataclasses.replace(r, precision=table) for r in p.runtime])
    seq = _covering_sequence(p, 3)
    plain = simulate_iterations(p, iterations=3, routings=seq)
    rw = residency_rewrite(p, program_target(p), "lru", capacity=1 << 30)
    kept = simulate_iterations(p, iterations=3, routings=seq, rewrite=rw)
    assert rw.hits > 0 and sum(kept.timeline.dram_bytes) < sum(plain.timeline.dram_bytes)
    names = plain.timeline.resource_names
    for name, a, b in zip(names, plain.timeline.busy, kept.timeline.busy, strict=True):
        if name.endswith(" compute"):
            assert b == pytest.approx(a, rel=1e-12), name


def test_residency_without_room_changes_nothing(tmp_path: Path) -> None:
    from moec.backends.interp.residency import residency_rewrite

    p = _compile(tmp_path, "ep")
    seq = _covering_sequence(p, 3)
    plain = simulate_iterations(p, iterations=3, routings=seq)
    rw = residency_rewrite(p, program_target(p), "lru", capacity=0)
    kept = simulate_iterations(p, iterations=3, routings=seq, rewrite=rw)
    assert rw.hits == 0 and kept.timeline.dram_bytes == plain.timeline.dram_bytes
    assert kept.metrics.makespan_s == plain.metrics.makespan_s


def test_popularity_keeps_the_hot_slice_lru_does_not(tmp_path: Path) -> None:
    from moec.backends.interp.residency import POLICIES, residency_rewrite
    from moec.ir.stream.program import Load, SliceRef

    p = _compile(tmp_path, "ep")
    hits = {}
    for policy in POLICIES:
        r = residency_rewrite(p, program_target(p), policy, capacity=100)  # one slice fits
        for it, e in enumerate([0, 0, 0, 1, 0, 2, 0, 3, 0]):  # expert 0 hot, 1..3 pass once
            r(it, 0, [Load(0, 0, SliceRef("moe0", e, 0), 100)])
        hits[policy] = r.hits
    assert hits == {"lru": 2, "popularity": 5}


def test_deferred_pairs_ride_on_the_next_iteration_loads(tmp_path: Path) -> None:
    """A deferred pair joins the next iteration's trajectories, so buffering never loads more
    weights than streaming everything every iteration, and loads less when a deferred expert
    is needed again."""
    (tmp_path / "plain").mkdir()
    plain_p = _compile(tmp_path / "plain", "fsedp{order=paired}")
    buffered_p = _compile(tmp_path, f"fsedp{{order=paired,slack={SLACK}}}")
    n = 8
    shapes = [(m.experts, m.top_k) for m in plain_p.layers]
    seq = synth_sequence(shapes, plain_p.layers[0].tokens, n, zipf=1.2, seed=4)
    plain = simulate_iterations(plain_p, iterations=n, routings=seq)
    buffered = simulate_iterations(buffered_p, iterations=n, routings=seq)
    assert buffered.metrics.deferred_pairs > 0
    assert sum(buffered.timeline.dram_bytes) < sum(plain.timeline.dram_bytes)
    _check_pairs_once(buffered_p, buffered)


def test_moec_run_iterations_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    p = _compile(tmp_path, f"fsedp{{order=paired,slack={SLACK}}}")
    capsys.readouterr()
    path = str(tmp_path / "tiny_moe.msp")
    assert main(["run", path, "--iterations", "3", "--routing", "synth:drift=0.1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    s = doc["serving"]
    assert s["iterations"] == 3 and s["tokens"] == p.layers[0].tokens
    assert s["deferred_pairs_final"] == 0 and s["tokens_per_s"] > 0
    assert "layers" not in doc and doc["dram_bytes_total"] > 0
    # --set applies to serving runs too: the ideal machine serves faster than the calibrated one
    args = ["run", path, "--iterations", "3", "--routing", "synth:drift=0.1", "--json"]
    assert main([*args, "--set", "ideal=true"]) == 0
    ideal = json.loads(capsys.readouterr().out)["serving"]
    assert ideal["tokens_per_s"] > s["tokens_per_s"]
    # a one-iteration trace cannot drive three iterations: a one-line error, exit 2
    one = tmp_path / "one.json"
    assert main(["trace", "synth", "--experts", "8", "--top-k", "2", "--layers", "2",
                 "--tokens", "8", "-o", str(one)]) == 0  # fmt: skip
    assert main(["run", path, "--iterations", "3", "--routing", str(one)]) == 2
    assert "the routing has 1 iterations, --iterations asks for 3" in capsys.readouterr().err
