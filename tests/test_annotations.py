"""Typed contracts between passes and lowering: layer annotations and bench rows."""

from __future__ import annotations

import json

from moec.compiler.bench.row import Accuracy, BenchRow, Serving, Utilization
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


def _row(**kw: object) -> BenchRow:
    return BenchRow(
        model="m", target="t", tokens=16, strategy="ep", passes="", layers=1, latency_s=1e-3,
        bound_s=5e-4, bound_dram_s=5e-4, bound_compute_s=1e-4, peak_sram_bytes_max=10,
        dram_bytes=20, link_bytes=30, utilization=Utilization(0.5, 0.25, 0.125), **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_bench_row_json_keeps_the_schema() -> None:
    row = _row(bound_deferred_pairs=3, accuracy=Accuracy(0.1, 0.01, 0.99, None))
    doc = row.to_json()
    assert list(doc)[:16] == [
        "model", "target", "tokens", "strategy", "passes", "layers", "latency_s", "bound_s",
        "bound_dram_s", "bound_compute_s", "latency_over_bound", "speedup_vs_ep",
        "peak_sram_bytes_max", "dram_bytes", "link_bytes", "utilization",
    ]  # fmt: skip
    assert doc["bound_excludes_deferred"] is True and doc["bound_deferred_pairs"] == 3
    assert "overrides" not in doc and "extra" not in doc
    assert doc["accuracy"]["top1_agreement"] is None
    assert doc["latency_over_bound"] == 2.0
    assert json.loads(json.dumps(doc)) == doc


def test_serving_row_reports_means_and_keeps_the_first_iteration() -> None:
    metrics = dict.fromkeys(Serving.METRICS, 1)
    serving = Serving(latency_s=3e-3, bound_s=1e-3, iterations=4, **metrics)  # type: ignore[arg-type]
    doc = _row(serving=serving).to_json()
    assert (doc["latency_s"], doc["bound_s"], doc["latency_over_bound"]) == (3e-3, 1e-3, 3.0)
    assert (doc["first_iteration_latency_s"], doc["first_iteration_bound_s"]) == (1e-3, 5e-4)
    keys = list(doc)
    assert keys[keys.index("first_iteration_bound_s") + 1 :] == ["iterations", *Serving.METRICS]
    assert "bound_excludes_residency" not in doc and "arrivals" not in doc
    res = Serving(
        latency_s=3e-3, bound_s=0.0, iterations=4, residency={"residency": "lru"}, arrivals=[],
        **metrics,  # type: ignore[arg-type]
    )  # fmt: skip
    doc = _row(serving=res).to_json()
    assert doc["latency_over_bound"] is None and doc["residency"] == "lru"
    assert doc["bound_excludes_residency"] is True and doc["arrivals"] == []
