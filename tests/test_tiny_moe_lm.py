"""The committed tiny MoE language model, ``moec eval`` and the perplexity scorer."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from moec.backends.ort.perplexity import (
    VOCAB,
    load_lm,
    perplexity,
    unigram_perplexity,
    windows,
)
from moec.compiler.cli.main import main
from moec.ir.moe import MoELayer, evaluate, present

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "tiny_moe_lm.onnx"
HELDOUT = ROOT / "models" / "tiny_moe_lm.heldout.txt"


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def test_committed_files_are_small() -> None:
    assert MODEL.stat().st_size < 10_000_000
    assert 10_000 < HELDOUT.stat().st_size < 200_000


def test_model_runs_in_onnx_runtime() -> None:
    ids = np.frombuffer(HELDOUT.read_bytes()[:96], dtype=np.uint8).astype(np.int64).reshape(2, 48)
    logits = _session(MODEL).run(["logits"], {"input_ids": ids})[0]
    assert logits.shape == (2, 48, VOCAB)
    assert np.isfinite(logits).all()
    # causal: the logits of a prefix do not depend on what follows it
    prefix = _session(MODEL).run(["logits"], {"input_ids": ids[:, :20]})[0]
    np.testing.assert_allclose(prefix, logits[:, :20], atol=1e-4)


def test_moe_layers_have_the_form_the_frontend_lifts() -> None:
    model = onnx.load(str(MODEL))
    producers = {out: n for n in model.graph.node for out in n.output}
    inits = {t.name for t in model.graph.initializer}
    moes = [n for n in model.graph.node if n.domain == "com.microsoft" and n.op_type == "MoE"]
    assert len(moes) == 2
    for node in moes:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["k"] == 2 and attrs["normalize_routing_weights"] == 1
        assert attrs["activation_type"] == b"swiglu" and attrs["swiglu_fusion"] == 1
        assert (attrs["activation_alpha"], attrs["activation_beta"]) == (1.0, 0.0)
        router = producers[node.input[1]]
        assert router.op_type == "MatMul" and router.input[0] == node.input[0]
        assert router.input[1] in inits
    meta = {p.key: p.value for p in model.metadata_props}
    assert len(json.loads(meta["moec.unigram_counts"])) == VOCAB
    assert int(meta["moec.context"]) >= 64


def test_moe_node_matches_the_canonical_layer() -> None:
    """ORT's MoE kernel on the committed weights equals moec.ir.moe.evaluate (silu(gate) * up)."""
    model = onnx.load(str(MODEL))
    node = next(n for n in model.graph.node if n.op_type == "MoE")
    router = next(n for n in model.graph.node if n.output[0] == node.input[1])
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    w_router, fc1, fc2 = w[router.input[1]], w[node.input[2]], w[node.input[4]]
    E, two_f, d = fc1.shape
    layer = MoELayer(
        name="layer0", num_experts=E, top_k=2, hidden=d, ffn=two_f // 2,
        weights={
            "router_w": present("router_w", w_router.T.copy()),
            "w_gate": present("w_gate", fc1[:, 0::2, :].transpose(0, 2, 1).copy()),
            "w_up": present("w_up", fc1[:, 1::2, :].transpose(0, 2, 1).copy()),
            "w_down": present("w_down", fc2.transpose(0, 2, 1).copy()),
        },
        activation="swiglu", swiglu_alpha=1.0, swiglu_beta=0.0,
    )  # fmt: skip
    layer.verify()
    sub = helper.make_graph(
        [helper.make_node("MatMul", ["x", "wr"], ["r"]), node],
        "one_moe",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["T", d])],
        [helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(w_router, "wr"),
            numpy_helper.from_array(fc1, node.input[2]),
            numpy_helper.from_array(fc2, node.input[4]),
        ],
    )
    sub.node[1].input[0], sub.node[1].input[1] = "x", "r"
    m = helper.make_model(sub, opset_imports=list(model.opset_import))
    m.ir_version = 10
    x = np.random.default_rng(0).standard_normal((40, d)).astype(np.float32)
    got = _session(m).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, evaluate(layer, x), atol=1e-4, rtol=1e-4)


def _eval_json(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, float]:
    code = main(
        ["eval", str(MODEL), "--text", str(HELDOUT), "--max-bytes", "4096", "--json", *extra]
    )
    assert code == 0
    return json.loads(capsys.readouterr().out)


def test_eval_beats_unigram(capsys: pytest.CaptureFixture[str]) -> None:
    out = _eval_json(capsys)
    assert {"perplexity", "unigram_perplexity", "tokens"} <= out.keys()
    assert out["tokens"] == 4095
    assert 10.0 < out["unigram_perplexity"] < 64.0
    assert 1.0 < out["perplexity"] < 0.5 * out["unigram_perplexity"]


def test_eval_strided_scores_the_same_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    full = _eval_json(capsys)
    strided = _eval_json(capsys, "--context", "64", "--stride", "32")
    assert strided["tokens"] == full["tokens"]
    assert strided["unigram_perplexity"] == full["unigram_perplexity"]
    assert 1.0 < strided["perplexity"] < strided["unigram_perplexity"]


def test_eval_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(MODEL), "--text", str(HELDOUT), "--max-bytes", "1000"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "unigram" in out


def test_eval_missing_text_is_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.txt"
    assert main(["eval", str(MODEL), "--text", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"moec: error: {missing}: text file not found"


def test_eval_bad_model_and_context(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    assert main(["eval", str(bad), "--text", str(HELDOUT)]) == 2
    assert capsys.readouterr().err.startswith(f"moec: error: {bad}: ")
    assert main(["eval", str(MODEL), "--text", str(HELDOUT), "--context", "100000"]) == 2
    assert "exceeds the model's context" in capsys.readouterr().err


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 300), context=st.integers(1, 40), data=st.data())
def test_windows_score_every_byte_once(n: int, context: int, data: st.DataObject) -> None:
    stride = data.draw(st.integers(1, context))
    scored: list[int] = []
    for w in windows(n, context, stride):
        assert 1 <= w.length <= context and w.start + w.length <= n - 1
        assert 0 <= w.first < w.length
        scored.extend(range(w.start + w.first + 1, w.start + w.length + 1))
        if w.start > 0:  # every byte after the first window sees context - stride bytes
            assert w.first >= min(context - stride, w.length - 1)
    assert scored == list(range(1, n))


def test_perplexity_of_fixed_distributions() -> None:
    ids = np.frombuffer(HELDOUT.read_bytes()[:777], dtype=np.uint8).astype(np.int64)
    uniform = perplexity(
        lambda x: np.zeros((*x.shape, VOCAB), np.float32), ids, context=50, stride=20
    )
    assert uniform.tokens == ids.size - 1
    assert math.isclose(uniform.perplexity, VOCAB, rel_tol=1e-9)
    counts = load_lm(MODEL).unigram_counts
    assert counts is not None
    logp = np.log((np.asarray(counts, np.float64) + 1) / (sum(counts) + VOCAB))
    as_model = perplexity(lambda x: np.broadcast_to(logp, (*x.shape, VOCAB)), ids, context=64)
    assert math.isclose(
        as_model.perplexity, unigram_perplexity(counts, ids).perplexity, rel_tol=1e-9
    )


def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # two short training runs in subprocesses: 10-30 s on a shared 2-core machine
def test_training_script_is_reproducible_with_shared_expert(tmp_path: Path) -> None:
    """A few steps of a tiny variant (with a shared expert) export the same bytes twice, and the
    script's own ONNX Runtime check (logits within 1e-4 of torch) passes."""
    pytest.importorskip("torch")
    script = ROOT / "scripts" / "train_tiny_moe_lm.py"
    small = [
        "--steps", "3", "--batch", "4", "--hidden", "32", "--ffn", "16", "--experts", "4",
        "--shared-ffn", "16", "--context", "32", "--train-bytes", "100000",
        "--heldout-bytes", "20000", "--log-every", "100",
    ]  # fmt: skip
    outs = []
    for run in ("a", "b"):
        out = tmp_path / f"{run}.onnx"
        # a subprocess: the script switches torch to deterministic algorithms process-wide
        done = subprocess.run(
            [sys.executable, str(script), *small, "--out", str(out)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    model = onnx.load_from_string(outs[0])
    kinds = [n.op_type for n in model.graph.node]
    assert kinds.count("MoE") == 2 and kinds.count("Sigmoid") == 2
    assert (tmp_path / "a.heldout.txt").stat().st_size <= 20000


@pytest.mark.parametrize(
    "model, experts, k", [("tiny_moe_lm.onnx", 8, 2), ("tiny_moe_lm_fg.onnx", 64, 8)]
)
def test_routing_stats_script(model: str, experts: int, k: int) -> None:
    """The script routes both LMs (softmax fused MoE, decomposed DeepSeek-style) on real text."""
    stats_mod = _load_script("lm_routing_stats")
    ids = np.frombuffer(HELDOUT.read_bytes()[:3000], dtype=np.uint8).astype(np.int64)
    layers = stats_mod.routing(str(ROOT / "models" / model), ids, 128)
    assert len(layers) == 2
    for layer, scores, top in layers:
        assert (layer.num_experts, layer.top_k) == (experts, k)
        assert scores.shape == (ids.size, experts) and top.shape == (ids.size, k)
        stats = stats_mod.layer_stats(scores, top, ids)
        assert stats["tokens"] == ids.size and sum(stats["load"]) == k * ids.size
        assert 0.0 < stats["load_entropy_bits"] <= stats["max_entropy_bits"] == np.log2(experts)
        assert stats["hot_mean_ratio"] >= 1.0
        assert f"top-{k}" in stats_mod.markdown({layer.name: stats})
