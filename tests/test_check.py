"""``moec check`` end to end, its ONNX Runtime side (inputs, comparison), and ``moec trace dump``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from moec.backends.ort.check import compare, dims_of, load_inputs, make_inputs, run_ort, vocab_sizes
from moec.check import check_model, dump_trace
from moec.compiler.cli.main import main
from moec.compiler.frontend import load_module
from moec.ir.errors import CheckFailed
from moec.ir.moe import route
from moec.ir.routing import load_trace
from moec.ir.stream import load_program

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
HF = ROOT / "tests" / "fixtures" / "hf"
#: every model the frontend recognizes: moec's own files and every Hugging Face fixture present
CHECKED = [
    MODELS / "tiny_moe.onnx",
    MODELS / "tiny_moe_decomposed.onnx",
    MODELS / "tiny_moe_lm.onnx",
]
CHECKED += sorted(HF.glob("*.onnx"))


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.stem)
def test_check_passes_end_to_end(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", str(path), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["passed"] is True
    model = onnx.load(str(path), load_external_data=False)
    assert [o["name"] for o in doc["outputs"]] == [o.name for o in model.graph.output]
    assert doc["max_rel_err"] <= 1e-4 and doc["max_abs_err"] >= 0
    assert set(doc["outputs"][0]) == {"name", "max_abs_err", "max_rel_err", "shape"}


@pytest.mark.parametrize(
    "model, args",
    [
        ("tiny_moe_shared", ["--set", "sram_bytes_per_die=8000", "--seed", "3"]),  # many slices
        ("tiny_deepseek", ["--strategy", "ep{placement=blocks}"]),
        ("tiny_qmoe4", ["--target", "fsedp-3x3"]),
        (str(MODELS / "tiny_moe_lm.onnx"), ["--dims", "batch=1", "seq=5"]),
    ],
)
def test_check_variants(model: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", model, *args]) == 0, capsys.readouterr()
    assert "passed: max_rel_err" in capsys.readouterr().out


def test_check_fails_below_float_noise(capsys: pytest.CaptureFixture[str]) -> None:
    # The interpreter sums in another order than ONNX Runtime: not bit-exact, so a tolerance of
    # 1e-12 must fail, and the exit code says so.
    assert main(["check", "tiny_moe", "--tol", "1e-12"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_check_shape_only_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "qwen3-30b-a3b"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "moec: error: qwen3-30b-a3b: model has no weights (shape-only): nothing to check numerically"
    )


def test_check_with_inputs_file(tmp_path: Path) -> None:
    ids = np.array([[1, 5, 7, 200, 3, 3]], dtype=np.int64)
    np.savez(tmp_path / "in.npz", input_ids=ids)
    report = check_model(str(MODELS / "tiny_moe_lm.onnx"), inputs=str(tmp_path / "in.npz"))
    assert report.passed and report.outputs[0].shape == (1, 6, 256)


# --- inputs and comparison ------------------------------------------------------------------------
def test_token_ids_index_the_embedding() -> None:
    lm = onnx.load(str(MODELS / "tiny_moe_lm.onnx"))
    assert vocab_sizes(lm) == {"input_ids": 256}
    feeds = make_inputs(lm, {"batch": 2, "seq": 8}, seed=0)
    ids = feeds["input_ids"]
    assert ids.shape == (2, 8) and ids.dtype == np.int64
    assert ids.min() >= 0 and ids.max() < 256 and len(np.unique(ids)) > 8  # not all small
    again = make_inputs(lm, {"batch": 2, "seq": 8}, seed=0)
    np.testing.assert_array_equal(again["input_ids"], ids)
    assert not np.array_equal(make_inputs(lm, {"batch": 2, "seq": 8}, seed=1)["input_ids"], ids)
    hf = onnx.load(str(HF / "mixtral.onnx"))
    assert vocab_sizes(hf) == {"input_ids": 64}
    assert dims_of(lm, feeds) == {"batch": 2, "seq": 8}


def test_floats_are_normal_and_other_ints_small() -> None:
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["n"], ["m"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3]),
            helper.make_tensor_value_info("n", TensorProto.INT64, [5]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3]),
            helper.make_tensor_value_info("m", TensorProto.INT64, [5]),
        ],
    )
    model = helper.make_model(g)
    feeds = make_inputs(model, {"B": 400}, seed=0)
    assert feeds["x"].dtype == np.float32 and feeds["x"].shape == (400, 3)
    assert abs(float(feeds["x"].mean())) < 0.1 and 0.9 < float(feeds["x"].std()) < 1.1
    assert feeds["n"].min() >= 0 and feeds["n"].max() < 4
    with pytest.raises(Exception, match="dimension B has no size"):
        make_inputs(model, {}, seed=0)


def test_compare_reports_errors_relative_to_scale() -> None:
    want = {"a": np.array([[2.0, -4.0]], np.float32), "b": np.zeros(3, np.float32)}
    got = {"a": np.array([[2.0, -4.002]], np.float32), "b": np.array([0, 1e-6, 0], np.float32)}
    r = compare(got, want, tol=1e-3)
    a, b = r.outputs
    assert a.name == "a" and a.shape == (1, 2)
    assert a.max_abs_err == pytest.approx(0.002, rel=1e-3)
    assert a.max_rel_err == pytest.approx(0.002 / 4.0, rel=1e-3)
    assert b.max_rel_err == pytest.approx(1e-6)  # all-zero reference: the absolute error
    assert r.passed
    assert not compare(got, want, tol=1e-4).passed
    with pytest.raises(CheckFailed, match=r"output a: non-finite value nan .* index \[0\]"):
        compare({"a": np.array([np.nan, 1.0])}, {"a": np.array([1.0, 1.0])})
    shape = compare({"a": np.ones(2)}, {"a": np.ones(3)})
    assert not shape.passed


def test_load_inputs_errors(tmp_path: Path) -> None:
    lm = onnx.load(str(MODELS / "tiny_moe_lm.onnx"))
    np.savez(tmp_path / "wrong.npz", input_ids=np.zeros((2, 3), np.int32))
    with pytest.raises(Exception, match="has dtype int32, the model wants int64"):
        load_inputs(tmp_path / "wrong.npz", lm)
    np.savez(tmp_path / "missing.npz", other=np.zeros(2))
    with pytest.raises(Exception, match="no array for model input 'input_ids'"):
        load_inputs(tmp_path / "missing.npz", lm)


# --- trace dump ---------------------------------------------------------------------------------
def test_trace_dump_records_the_router(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = MODELS / "tiny_moe_lm.onnx"
    out = tmp_path / "t.json"
    code = main(["trace", "dump", str(path), "--seed", "2", "--dies", "2", "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    trace = load_trace(out)
    assert trace.num_dies == 2 and trace.tokens == 16 and len(trace.layers) == 2
    assert trace.provenance["source"] == "dump" and trace.provenance["seed"] == 2
    # the same routing, computed independently from ONNX Runtime's layer inputs
    module, lifted = load_module(path)
    feeds = make_inputs(lifted.model, {"batch": 2, "seq": 8}, seed=2)
    xs = run_ort(lifted.model, feeds, [lf.input for lf in lifted.lifted])
    for op, lr in zip(module.moe_ops(), trace.layers, strict=True):
        layer = op.layer
        ids, gates = route(layer, xs[op.inputs[0].name].reshape(-1, layer.hidden))
        np.testing.assert_array_equal(lr.ids, ids)
        np.testing.assert_allclose(lr.gates, gates, rtol=1e-6)
        np.testing.assert_array_equal(lr.home_die, [0] * 8 + [1] * 8)
    # deterministic, and a compile accepts it
    again = tmp_path / "again.json"
    assert main(["trace", "dump", str(path), "--seed", "2", "--dies", "2", "-o", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()
    prog = tmp_path / "p.msp"
    ring2 = ["--set", "topology=ring", "--set", "num_dies=2"]
    assert main(["compile", str(path), "--routing", str(out), *ring2, "-o", str(prog)]) == 0
    assert {m.tokens for m in load_program(str(prog)).layers} == {16}


def test_trace_dump_dims_and_target() -> None:
    trace = dump_trace("tiny_moe", seed=0, dims=["T=5"], target="fsedp-3x3")
    assert trace.num_dies == 9 and trace.tokens == 5
    assert [lr.name for lr in trace.layers] == ["moe0", "moe1"]
