"""Typed contracts between passes and lowering: layer annotations and bench rows."""

from __future__ import annotations

import json

from moec.compiler.bench.row import Accuracy, BenchRow, Utilization
from moec.compiler.frontend.lift import lift_model
from moec.ir.annotations import LayerAnnotations
from moec.models import tiny


def test_layer_annotations_print_and_per_expert_lists() -> None:
    a = LayerAnnotations(source="x", skip_rule=("caee", 0.8), importance=[0.5, 0.5])
    assert a.items() == [("importance", [0.5, 0.5]), ("skip_rule", ("caee", 0.8)), ("source", "x")]
    assert a.per_expert("importance", 2) == [0.5, 0.5]
    assert a.per_expert("importance", 3) is None and a.per_expert("gate_mass", 2) is None


def test_lifted_layer_records_where_it_came_from() -> None:
    module, _ = lift_model(tiny.tiny_moe(0))
    layer = module.moe_ops()[0].layer
    assert layer.annotations.source == "com.microsoft.MoE" and layer.annotations.onnx_node
    assert f"source={layer.annotations.source}" in module.print()


def test_bench_row_json_keeps_the_schema() -> None:
    row = BenchRow(
        "m", "t", 16, "ep", "", 1, 1e-3, 5e-4, 5e-4, 1e-4, 2.0, 10, 20, 30,
        Utilization(0.5, 0.25, 0.125), bound_deferred_pairs=3, accuracy=Accuracy(0.1, 0.01, 0.99, None),
    )  # fmt: skip
    doc = row.to_json()
    assert list(doc)[:16] == [
        "model", "target", "tokens", "strategy", "passes", "layers", "latency_s", "bound_s",
        "bound_dram_s", "bound_compute_s", "latency_over_bound", "speedup_vs_ep",
        "peak_sram_bytes_max", "dram_bytes", "link_bytes", "utilization",
    ]  # fmt: skip
    assert doc["bound_excludes_deferred"] is True and doc["bound_deferred_pairs"] == 3
    assert "overrides" not in doc and "extra" not in doc
    assert doc["accuracy"]["top1_agreement"] is None
    assert json.loads(json.dumps(doc)) == doc
