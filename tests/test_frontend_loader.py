"""Loading ONNX files: one-line located errors (exit 2 from the CLI), external and shape-only data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from frontend_models import single_layer

from moec.compiler.cli.main import main
from moec.compiler.frontend.lift import load_module
from moec.compiler.frontend.loader import load_onnx
from moec.ir.errors import ModelError
from moec.models import tiny
from moec.models.moe_blocks import MoESpec, decomposed_moe, fused_moe
from moec.models.presets import PRESETS


def _cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "nope.onnx"
    assert _cli_error(capsys, "inspect", str(path)) == f"moec: error: {path}: no such file"


def test_truncated_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tiny.tiny_moe(0).SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    line = _cli_error(capsys, "inspect", str(path))
    assert line.startswith(f"moec: error: {path}: truncated or corrupt (protobuf:")


def test_non_onnx_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "text.onnx"
    path.write_text("this is not a model\n" * 10)
    line = _cli_error(capsys, "inspect", str(path))
    assert line.startswith(f"moec: error: {path}: not an ONNX model")


def test_missing_initializer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny.tiny_moe_decomposed(0)
    victim = next(n for n in model.graph.node if n.input[1:2] == ["layer1.moe.w_up"])
    kept = [t for t in model.graph.initializer if t.name != victim.input[1]]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    path = tmp_path / "missing.onnx"
    onnx.save(model, path)
    line = _cli_error(capsys, "inspect", str(path))
    assert (
        f"{path}: node {victim.name}: input 'layer1.moe.w_up' of MatMul node is not defined" in line
    )
    assert "missing initializer" in line


def test_unsupported_moe_variant(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tiny.tiny_moe(0)
    node = next(n for n in model.graph.node if n.op_type == "MoE")
    node.attribute.append(onnx.helper.make_attribute("swiglu_limit_after_activation", 1))
    path = tmp_path / "sparse.onnx"
    onnx.save(model, path)
    line = _cli_error(capsys, "inspect", str(path))
    assert line == (
        f"moec: error: {path}: node layer1.moe: MoE node is not a supported MoE layer: "
        "swiglu_limit_after_activation=1 is not supported (expected 0)"
    )


def test_router_not_a_matmul(tmp_path: Path) -> None:
    model = single_layer(fused_moe, MoESpec(4, 2, 8, 8))
    node = next(n for n in model.graph.node if n.op_type == "MoE")
    model.graph.input.append(
        onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, [12, 4])
    )
    node.input[1] = "logits"
    with pytest.raises(ModelError, match="router_probs come from a graph input, expected MatMul"):
        from moec.compiler.frontend.lift import lift_model

        lift_model(model, where="m")


def test_external_data_loads(tmp_path: Path) -> None:
    model = tiny.tiny_moe_decomposed(0)
    path = tmp_path / "ext.onnx"
    onnx.save(model, path, save_as_external_data=True, location="ext.data", size_threshold=1024)
    assert (tmp_path / "ext.data").exists() and path.stat().st_size < 100_000
    module, res = load_module(path)
    assert all(lf.layer.weights_present for lf in res.lifted)
    assert len(module.moe_ops()) == 2
    (tmp_path / "ext.data").unlink()
    with pytest.raises(ModelError, match="external data file 'ext.data' not found"):
        load_onnx(path)
    # Without weights nothing is read, so inspection still works.
    _, res = load_module(path, load_weights=False)
    assert not any(lf.layer.weights_present for lf in res.lifted)


def test_shape_only_preset_declares_weights(tmp_path: Path) -> None:
    path = tmp_path / "q.onnx"
    onnx.save(PRESETS["qwen3-30b-a3b"].build(), path)
    assert path.stat().st_size < 1_000_000
    module, res = load_module(path)  # load_weights=True: the shape-only mark makes this fine
    assert len(res.lifted) == 48
    layer = res.lifted[0].layer
    assert not layer.weights_present and layer.weights["w_up"].type.shape == (128, 2048, 768)
    assert all(not w.present for w in module.weights.values() if w.type.numel > 1000)


def test_decomposed_single_layer_round_trips_through_file(tmp_path: Path) -> None:
    model = single_layer(decomposed_moe, MoESpec(4, 2, 8, 8))
    path = tmp_path / "one.onnx"
    onnx.save(model, path)
    module, res = load_module(path)
    assert [op.kind for op in module.ops] == ["moe"]
    np.testing.assert_array_equal(res.lifted[0].layer.array("router_w").shape, (4, 8))
