"""Exporting a per-expert precision plan: ONNX Runtime runs exactly the IR's approximation."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from ort_capture import max_rel_error, session

from moec.compiler.calibration import run_module, seeded_inputs
from moec.compiler.frontend.export_qmoe import export_onnx
from moec.compiler.frontend.lift import load_module
from moec.compiler.passes import parse_pipeline
from moec.compiler.passes.assign_precision import apply_plan
from moec.ir.errors import ModelError
from moec.models.catalog import catalog

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "tiny_moe.onnx"
MIXED = ["fp16", "int8", "int4", "int8", "fp16", "int4", "int4", "int8"]


def _module(path: Path, plan: list[str] | None = None, block: int | None = None):
    module, _ = load_module(path)
    for op in module.moe_ops():
        apply_plan(op.layer, plan or MIXED, block)
    return module


def _ort_vs_ir(module, fmt: str) -> tuple[float, Counter]:
    model = export_onnx(module, fmt)
    onnx.checker.check_model(model)
    feeds = seeded_inputs(module, 5, 16)
    want, _ = run_module(module, feeds)  # numpy evaluation of the quantized IR
    got = session(model).run(None, feeds)
    ops = Counter(
        n.op_type for n in model.graph.node if n.op_type in ("MoE", "QMoE", "DequantizeLinear")
    )
    return max(max_rel_error(g, w) for g, w in zip(got, want.values(), strict=True)), ops


@pytest.mark.parametrize("fmt", ["qmoe", "qdq"])
@pytest.mark.parametrize("block", [None, 16])
def test_mixed_precision_export_matches_the_ir(fmt, block):
    err, ops = _ort_vs_ir(_module(TINY, block=block), fmt)
    assert err <= 1e-5
    if fmt == "qmoe":
        assert ops == Counter({"QMoE": 4, "MoE": 2})  # int8 and int4 groups + fp16, two layers
    else:
        assert ops == Counter({"MoE": 2, "DequantizeLinear": 8})


def test_unnormalized_router_uses_qdq(tmp_path):
    path = tmp_path / "shared.onnx"
    onnx.save(catalog()["tiny_moe_shared"].build(0), path)
    module = _module(path)
    err, ops = _ort_vs_ir(module, "auto")
    assert err <= 1e-5 and ops["QMoE"] == 0
    with pytest.raises(ModelError, match="moe0: QMoE export needs normalize_routing_weights=1"):
        export_onnx(module, "qmoe")


def test_weights_off_the_grid_are_an_error():
    module = _module(TINY)
    layer = module.moe_ops()[0].layer
    layer.annotations.precision = ["int8"] * layer.num_experts  # fp16 experts are not int8
    with pytest.raises(
        ModelError, match=r"moe0: fc1 \(gate/up\) weights of experts .* not on an int8 grid"
    ):
        export_onnx(module)


def test_pipeline_then_export_cli(tmp_path):
    out = tmp_path / "q.onnx"
    pipeline = "annotate-importance,assign-precision{tiers=0.6/0.9}"
    run = subprocess.run(
        [sys.executable, "-m", "moec.compiler.cli.main", "export", str(TINY), "--passes", pipeline,
         "-o", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    module, _ = load_module(TINY)
    module = parse_pipeline(pipeline).run(module)
    feeds = seeded_inputs(module, 0, 8)
    want, _ = run_module(module, feeds)
    got = session(onnx.load(out)).run(None, feeds)[0]
    assert max_rel_error(got, next(iter(want.values()))) <= 1e-5
    # fp16 experts are float MoE nodes, the rest QMoE
    kinds = {n.op_type for n in onnx.load(out).graph.node}
    assert {"MoE", "QMoE"} <= kinds
    assert np.isfinite(got).all()
