"""Slots free at the ``moe`` placeholders: the verifier's one-walk table of every layer
(:func:`free_slots_by_layer`) against the per-layer walk expansion uses (:func:`free_slots_at`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moec.compiler.bench.spec import load_bench_model, truncate
from moec.compiler.cli.main import main
from moec.compiler.lower import lower
from moec.ir.routing_synth import SynthSpec
from moec.ir.stream import TargetRef
from moec.ir.stream.layouts import free_slots_at, free_slots_by_layer
from moec.ir.stream.parser import parse_program


@pytest.mark.parametrize("strategy", ["ep", "fsedp-paired", "hydra"])
def test_the_one_walk_table_is_the_per_layer_walk(strategy: str) -> None:
    bm = load_bench_model("qwen3-30b-a3b")
    module = truncate(bm.module, 3)
    trace = SynthSpec(seed=2).make(bm.layer_shapes()[:3], 64, 4, model=bm.name)
    p = lower(module, TargetRef("fsedp-2x2"), strategy, {}, trace)
    table = free_slots_by_layer(p)
    assert sorted(table) == sorted(m.name for m in p.layers)
    for m in p.layers:
        assert table[m.name] == free_slots_at(p, m.name)
    # a layer that is placed nowhere has no free slots anywhere, in both
    assert free_slots_at(p, "no-such-layer") == {} and "no-such-layer" not in table


def test_slots_the_static_part_holds_are_not_free(tmp_path: Path) -> None:
    out = tmp_path / "ep.msp"
    assert main(["compile", "tiny_moe", "--strategy", "ep", "-o", str(out)]) == 0
    held = "".join(f"  load s{i} <- ch0 moe1.e{i} bytes 24576\n" for i in (0, 2))
    text = out.read_text().replace("  moe moe1\n", held + "  moe moe1\n  free s0\n  free s2\n", 1)
    p = parse_program(text)
    table = free_slots_by_layer(p)
    assert table["moe1"] == free_slots_at(p, "moe1") and table["moe0"] == free_slots_at(p, "moe0")
    assert table["moe1"][0] == [k for k in range(p.slots[0].count) if k not in (0, 2)]
    assert table["moe0"][0] == list(range(p.slots[0].count))
