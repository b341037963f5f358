"""Per-layer choice of ``--strategy auto`` (``moec.per_layer``): each MoE layer its own
strategy in one program, confirmed by the interpreter, numerics unchanged."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from strategy_cases import hand_target

from moec.auto import explain, search
from moec.compile import compile_model, write_compiled
from moec.compiler.lower import lower
from moec.ir.graph import Builder, Module, TensorType
from moec.ir.moe import MoELayer, declared
from moec.ir.routing import LayerRouting, RoutingTrace
from moec.ir.stream import TargetRef, parse_program, print_program
from moec.ir.target import load_target
from moec.per_layer import LayerMergeError, merge_layers, rank_layers


def _two_layers(tokens: int = 8, experts: int = 2, hidden: int = 10, ffn: int = 20) -> Module:
    """Two shape-only MoE layers in a row (top-1), each with its own weights."""
    m = Module("two")
    b = Builder(m)
    x = b.input("x", TensorType("f16", (tokens, hidden)))
    for k in range(2):
        weights = {
            "router_w": declared(f"r{k}", "f16", (experts, hidden)),
            "w_gate": declared(f"g{k}", "f16", (experts, hidden, ffn)),
            "w_up": declared(f"u{k}", "f16", (experts, hidden, ffn)),
            "w_down": declared(f"d{k}", "f16", (experts, ffn, hidden)),
        }
        layer = MoELayer(f"moe{k}", experts, 1, hidden, ffn, weights)
        op = b.op("moe", [x], [f"y{k}"], {"layer": layer},
                  types=[TensorType("f16", (tokens, hidden))])  # fmt: skip
        x = op.outputs[0]
    m.outputs.append(x)
    return m


def _trace(first_hot: bool = False) -> RoutingTrace:
    """Layer moe0: each die's tokens go to 'its' expert (EP moves nothing and is balanced), or
    with ``first_hot`` like moe1; layer moe1: every token to expert 0 (EP puts all the compute
    on one die, TP splits it)."""
    home = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    gates = np.ones((8, 1), dtype=np.float32)
    hot = np.zeros((8, 1), dtype=np.int64)
    layers = [
        LayerRouting("moe0", 2, 1, hot if first_hot else home.reshape(8, 1), gates, home),
        LayerRouting("moe1", 2, 1, hot, gates, home),
    ]
    return RoutingTrace("two", 2, layers)


@pytest.fixture
def slow_target(tmp_path: Path) -> str:
    """The hand target with 1 MAC per die: compute dominates, so placement decides."""
    path = Path(hand_target(tmp_path))
    path.write_text(path.read_text().replace("macs = 500", "macs = 1"))
    return os.fspath(path)


def test_layers_that_prefer_different_strategies_get_them(slow_target: str) -> None:
    found = search(_two_layers(), TargetRef(slow_target), _trace(), specs=["ep", "tp"])
    assert [c.layer for c in found.layers] == ["moe0", "moe1"]
    assert [c.strategy for c in found.layers] == ["ep", "tp"]
    for c in found.layers:  # fastest first
        assert [s for _, s in c.ranked] == sorted(s for _, s in c.ranked)
    mixed = found.trials[-1]
    assert mixed.strategy == "per-layer[moe0=ep,moe1=tp]" and mixed.status == "measured"
    singles = [t for t in found.trials[:-1] if t.measured_s is not None]
    assert len(singles) == 2
    assert found.winner is mixed
    assert mixed.measured_s is not None
    assert mixed.measured_s < min(t.measured_s for t in singles if t.measured_s is not None)
    # the program says which strategy each layer runs
    program = found.program
    assert [r.strategy for r in program.runtime] == ["ep", "tp"]
    assert parse_program(print_program(program)) == program
    text = explain(found)
    assert "per MoE layer" in text
    assert any(ln.strip().startswith("moe1  tp ") for ln in text.splitlines())
    assert any(
        ln.startswith("winner per-layer[moe0=ep,moe1=tp]: latency ") for ln in text.splitlines()
    )


def test_one_layer_or_one_preference_is_one_strategy(slow_target: str) -> None:
    found = search(_two_layers(), TargetRef(slow_target), _trace(True), specs=["ep", "tp"])
    assert [c.strategy for c in found.layers] == ["tp", "tp"]
    assert found.winner.strategy == "tp"
    assert not any(t.strategy.startswith("per-layer") for t in found.trials)
    assert "every layer prefers the same candidate" in explain(found)


def test_merge_takes_each_layers_parts_and_refuses_other_static_parts(tmp_path: Path) -> None:
    target = hand_target(tmp_path)
    module, trace = _two_layers(), _trace()
    ep = lower(module, TargetRef(target), "ep", {}, trace)
    tp = lower(module, TargetRef(target), "tp", {"slots": "6"}, trace)
    merged = merge_layers([ep, tp], load_target(target, {}))
    assert [r.strategy for r in merged.runtime] == ["ep", "tp"]
    assert [t for t in merged.tensors if t.name.startswith("moe0.")] == [
        t for t in ep.tensors if t.name.startswith("moe0.")
    ]
    assert [t for t in merged.tensors if t.name.startswith("moe1.")] == [
        t for t in tp.tensors if t.name.startswith("moe1.")
    ]
    assert merged.layout("moe1") == tp.layout("moe1")
    assert {p.count for p in merged.slots} == {6}  # the larger pool holds both layers' slices
    other = lower(module, TargetRef(target), "tp", {}, None, tokens=16)
    with pytest.raises(LayerMergeError, match=r"two: moe1: per-layer choice: .*other MoE layers"):
        merge_layers([ep, other], load_target(target, {}))
    big = lower(module, TargetRef(target), "tp", {"slots": "1000"}, trace)
    with pytest.raises(LayerMergeError, match="does not fit SRAM"):
        merge_layers([ep, big], load_target(target, {}))


def test_rank_layers_breaks_ties_by_candidate_order() -> None:
    assert rank_layers([[2.0, 1.0], [1.0, 1.0], [1.0, 3.0]]) == [[1, 2, 0], [0, 1, 2]]


def test_merged_program_numerics_match_onnx_runtime(tmp_path: Path) -> None:
    """tiny_moe's two layers as EP and TP in one program compute what ONNX Runtime computes."""
    from moec.check import compare, interpret, reference_run

    ref = reference_run("tiny_moe")
    path = os.fspath(tmp_path / "mixed.msp")
    ep = compile_model("tiny_moe", path, strategy="ep", dims=ref.dims)
    tp = compile_model("tiny_moe", path, strategy="tp", dims=ref.dims)
    assert ep.program.target is not None
    merged = merge_layers([ep.program, tp.program], load_target(ep.program.target.spec, {}))
    assert [r.strategy for r in merged.runtime] == ["ep", "tp"]
    ep.program = merged
    ep.text = print_program(merged)
    write_compiled(ep, path)
    got, _, _ = interpret(merged, path, ref.feeds)
    assert compare(got, ref.want, 1e-4).passed


def test_compile_explain_prints_the_per_layer_choice(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "p.msp"
    r = subprocess.run(
        [sys.executable, "-m", "moec", "compile", "tiny_moe", "-o", str(out), "--tokens", "16",
         "--strategy", "auto", "--explain", "--search-budget", "4"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    at = lines.index("per MoE layer (its span in each measured candidate's run, fastest first):")
    assert [ln.split()[0] for ln in lines[at + 1 : at + 3]] == ["moe0", "moe1"]
    winner = lines[-1].split()[1].rstrip(":")
    policies = [ln.split()[-1] for ln in out.read_text().splitlines() if ln.startswith("runtime ")]
    assert len(policies) == 2
    if winner.startswith("per-layer["):  # each layer's policy is its own choice
        assert policies == [ln.split()[1] for ln in lines[at + 1 : at + 3]]
