"""CAEE pruning: only the straggler device, never a token's top-1, gate mass conserved."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moec.backends.interp import simulate
from moec.backends.interp.rules import compensate
from moec.backends.interp.rules.caee import ExpertCosts, device_times, expert_costs, prune_mask
from moec.compile import compile_model, write_compiled
from moec.compiler.passes import parse_pipeline
from moec.compiler.passes.caee_prune import resident_set
from moec.compiler.passes.pipeline import PassError
from moec.ir.routing_synth import synth_zipf
from moec.ir.stream import MoEDecl, RuntimePolicy, SkipRule, load_program
from moec.ir.target import load_target
from moec.models.moe_blocks import MoESpec, decomposed_moe
from moec.models.tiny import language_model


def _hand_case(load: list[float]) -> tuple[ExpertCosts, np.ndarray, np.ndarray, np.ndarray]:
    costs = ExpertCosts(
        np.array([0, 0, 1, 1]), np.array(load, float), np.full(4, 0.1), np.zeros((2, 2))
    )
    ids = np.array([[0, 2], [2, 1], [0, 3], [2, 3]])
    gates = np.array([[0.6, 0.4], [0.7, 0.3], [0.8, 0.2], [0.9, 0.1]])
    return costs, ids, gates, np.zeros(4, np.int64)


def test_hand_case_drops_the_whole_cold_expert_on_the_straggler():
    costs, ids, gates, home = _hand_case([1, 1, 1, 2])
    # device 0: load 2 (e0, e1); device 1: load 3 (e2, e3) -> the straggler
    assert device_times(costs, ids, home, 2).tolist() == pytest.approx([2.0, 3.0])
    drop = prune_mask(costs, ids, gates, home, 2, 0.8)
    # e3 runs only as a second choice (0.2 + 0.1): dropping both saves its load, 3 -> 1 <= 2
    assert np.argwhere(drop).tolist() == [[2, 1], [3, 1]]
    # at 0.9 the device may lose only 10% of its 2.3 gate mass: 0.3 is too much, and a single
    # pair saves nothing while the load dominates
    assert not prune_mask(costs, ids, gates, home, 2, 0.9).any()
    new_ids, new_gates = compensate(ids, gates, drop)
    assert new_ids.tolist() == [[0, 2], [2, 1], [0, -1], [2, -1]]
    assert new_gates.sum(axis=1) == pytest.approx(gates.sum(axis=1))


def test_threshold_one_prunes_nothing():
    costs, ids, gates, home = _hand_case([1, 1, 1, 2])
    assert not prune_mask(costs, ids, gates, home, 2, 1.0).any()


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    threshold=st.sampled_from([0.5, 0.6, 0.7, 0.8, 0.9]),
    D=st.integers(2, 4),
    k=st.integers(1, 3),
)
def test_properties(seed, threshold, D, k):
    rng = np.random.default_rng(seed)
    E, T = 8, 24
    costs = ExpertCosts(
        rng.integers(0, D, E), rng.random(E), rng.random(E) * 0.05, rng.random((D, D)) * 0.01
    )
    ids = np.argsort(rng.random((T, E)), axis=1)[:, :k]
    gates = np.sort(rng.random((T, k)), axis=1)[:, ::-1]
    gates = gates / gates.sum(axis=1, keepdims=True)
    home = rng.integers(0, D, T)
    before = device_times(costs, ids, home, D)
    straggler = int(np.argmax(before))
    drop = prune_mask(costs, ids, gates, home, D, threshold)
    assert not drop[:, 0].any()  # never a token's top-1
    on = costs.device[ids] == straggler
    assert not (drop & ~on).any()  # only on the straggler device
    assert gates[drop].sum() <= (1 - threshold) * gates[on].sum() + 1e-9
    new_ids, new_gates = compensate(ids, gates, drop)
    assert new_gates.sum(axis=1) == pytest.approx(gates.sum(axis=1), abs=1e-6)  # mass conserved
    assert ((new_ids >= 0) | drop).all()
    # compensation only reaches experts that still run for the token (no new load)
    assert ((new_gates > gates + 1e-7) <= (new_ids >= 0)).all()
    if drop.any():
        after = device_times(costs, new_ids, home, D)
        assert after[straggler] < before[straggler]
        assert np.allclose(np.delete(after, straggler), np.delete(before, straggler))


def test_offloaded_experts_cost_a_host_transfer():
    t = load_target("npu8-hbm")
    decl = MoEDecl("moe0", 16, 2, 1024, 512, 64, "x", "y", dtype="fp16")
    policy = RuntimePolicy("moe0", "ep", {"placement": [e % 8 for e in range(16)]})
    resident = expert_costs(policy, decl, t)
    policy.annotations["resident"] = [1] * 8 + [0] * 8
    offloaded = expert_costs(policy, decl, t)
    assert np.allclose(offloaded.load_s[:8], resident.load_s[:8])
    assert (offloaded.load_s[8:] > 10 * resident.load_s[8:]).all()  # PCIe vs HBM
    assert resident_set([0.1, 0.4, 0.3, 0.2], 0.5) == [0, 1, 1, 0]


def test_pass_options():
    with pytest.raises(
        PassError, match=r"--passes:1: pass caee-prune: threshold must be in \[0, 1\]"
    ):
        parse_pipeline("caee-prune{threshold=1.5}")
    with pytest.raises(PassError, match="resident < 1 keeps the hottest experts resident"):
        from moec.compiler.frontend.lift import lift_model

        model = language_model(
            "m", MoESpec(8, 2, 32, 64), decomposed_moe, moe_layers=1, dense_layers=0
        )
        parse_pipeline("caee-prune{resident=0.5}").run(lift_model(model)[0])


def test_interpreter_prunes_on_npu8(tmp_path):
    spec = MoESpec(32, 4, 512, 256)
    model = language_model(
        "m", spec, decomposed_moe, moe_layers=1, dense_layers=0, shape_only=True, vocab=64
    )
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    trace = synth_zipf(1, 32, 4, 128, zipf=1.2, seed=0, num_dies=8, layer_names=["moe0"])
    lat = {}
    routings = {}
    for passes in ("", "caee-prune{threshold=0.6}"):
        out = tmp_path / f"p{len(passes)}.msp"
        c = compile_model(
            str(path), str(out), target="npu8-hbm", strategy="ep", passes=passes, routing=trace
        )
        write_compiled(c, str(out))
        prog = load_program(str(out))
        if passes:
            assert prog.policy("moe0").skip == SkipRule("caee", 0.6)
        res = simulate(prog, routings=trace)
        lat[passes] = res.report.latency_s
        routings[passes] = res.routings[0]
    pruned = routings["caee-prune{threshold=0.6}"]
    assert (pruned.ids < 0).any() and (trace.layers[0].ids >= 0).all()  # the trace is not modified
    assert not (pruned.ids[:, 0] < 0).any()
    assert lat["caee-prune{threshold=0.6}"] < lat[""]
