"""``moec check`` (compile, interpret, compare with ONNX Runtime) of the Hugging Face fixtures
of the families recognized in session 6: every layer lifted, whole-model numerics within 1e-4
under each main strategy, and the shared experts inside the op."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from moec.check import check_model
from moec.compiler.frontend import load_module

FIXTURES = Path(__file__).parent / "fixtures" / "hf"
# fixture -> shared experts per MoE layer
FAMILIES = {"minimax_m3": 1, "hy_v4": 1, "longcat_flash": 0}


@pytest.mark.parametrize("strategy", ["ep", "tp", "fsedp"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_moec_check_matches_onnxruntime(name: str, strategy: str) -> None:
    report = check_model(str(FIXTURES / f"{name}.onnx"), strategy=strategy)
    assert report.passed and report.max_rel_err <= 1e-4, report.max_rel_err


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_shared_experts_are_inside_the_op(name: str) -> None:
    module, _ = load_module(FIXTURES / f"{name}.onnx")
    layers = [op.layer for op in module.moe_ops()]
    assert layers
    for layer in layers:
        assert layer.num_shared == FAMILIES[name], layer.name
        assert layer.annotations.dense_shared is None


def test_shared_swiglu_with_other_parameters_stays_dense_and_is_said() -> None:
    """The op holds one SwiGLU parameter set: a shared MLP with another alpha is left outside,
    marked for ``moec inspect``, and the numerics stay right."""
    from moec.compiler.frontend.lift import lift_model
    from moec.compiler.frontend.loader import load_onnx

    model = load_onnx(FIXTURES / "minimax_m3.onnx")
    nodes = list(model.graph.node)
    gemm_out = {n.output[0] for n in nodes if n.op_type == "Gemm"}
    split_out = {
        o for n in nodes if n.op_type == "Split" and n.input[0] in gemm_out for o in n.output
    }
    clip_out = {n.output[0] for n in nodes if n.op_type == "Clip" and n.input[0] in split_out}
    alpha = next(n for n in nodes if n.op_type == "Mul" and n.input[0] in clip_out)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.float32(1.5), "other_alpha"))
    alpha.input[1] = "other_alpha"
    _, result = lift_model(model)
    layer = result.lifted[0].layer
    assert not layer.has_shared and layer.annotations.dense_shared


def test_identity_experts_are_shown_and_refused_by_export(tmp_path: Path) -> None:
    """LongCat-Flash's zero experts: ``moec inspect --json`` counts them beside the routed
    experts; ``moec export`` (com.microsoft.MoE has no weightless expert) refuses the layer,
    located, exit 2, no file left."""
    model = FIXTURES / "longcat_flash.onnx"
    run = subprocess.run(
        [sys.executable, "-m", "moec", "inspect", str(model), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (row,) = json.loads(run.stdout)["moe_layers"]
    assert (row["experts"], row["identity_experts"]) == (8, 4)
    out = tmp_path / "x.onnx"
    run = subprocess.run(
        [sys.executable, "-m", "moec", "export", str(model), "-o", str(out)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 2 and not out.exists()
    assert "identity experts" in run.stderr and "Traceback" not in run.stderr


def test_identity_reference_adds_gate_times_token() -> None:
    """The reference: an identity pick has id -1 and gate 0 in ``route`` and adds its gate
    times the token (``identity_weight``)."""
    from moec.ir.moe import identity_weight, route

    module, _ = load_module(FIXTURES / "longcat_flash.onnx")
    (op,) = module.moe_ops()
    layer = op.layer
    x = np.random.default_rng(0).normal(size=(64, layer.hidden)).astype(np.float32)
    ids, gates = route(layer, x)
    w = identity_weight(layer, x)
    picked = ids == -1
    assert picked.any() and (~picked).any()
    assert np.all(gates[picked] == 0)
    assert np.all((w[:, 0] > 0) == picked.any(axis=1))
