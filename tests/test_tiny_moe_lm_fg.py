"""The committed fine-grained MoE language model (DeepSeek-style routing) and its trainer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from moec.backends.ort.perplexity import VOCAB
from moec.compiler.cli.main import main
from moec.compiler.frontend import load_module

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "tiny_moe_lm_fg.onnx"
HELDOUT = ROOT / "models" / "tiny_moe_lm.heldout.txt"


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def test_committed_file_is_small() -> None:
    assert MODEL.stat().st_size < 6_000_000


def test_frontend_lifts_deepseek_style_routing() -> None:
    """Sigmoid scores, a correction bias, group-limited top-k, routed scaling, shared experts:
    found by dataflow in the decomposed standard-op form."""
    module, lifted = load_module(MODEL)
    layers = [op.attrs["layer"] for op in module.moe_ops()]
    assert len(layers) == len(lifted.lifted) == 2
    config = json.loads({p.key: p.value for p in lifted.model.metadata_props}["moec.config"])
    for layer in layers:
        assert layer.num_experts == config["experts"] >= 32
        assert layer.top_k == config["top_k"] and 4 <= layer.top_k <= 8
        assert layer.scoring == "sigmoid" and layer.normalize_topk
        assert layer.has("score_bias") and np.abs(layer.array("score_bias")).max() > 0
        assert (layer.n_group, layer.topk_group, layer.group_score) == (
            config["groups"],
            config["topk_groups"],
            "top2_sum",
        )
        assert layer.n_group > layer.topk_group > 1
        assert layer.routed_scaling == pytest.approx(config["routed_scaling"]) != 1.0
        assert layer.num_shared == config["shared_experts"] >= 1
        assert layer.shared_ffn == config["shared_experts"] * layer.ffn
        assert layer.gated and layer.activation == "silu"


def test_inspect_shows_the_routing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(MODEL), "--json"]) == 0
    layers = json.loads(capsys.readouterr().out)["moe_layers"]
    assert [
        (ly["scoring"], ly["score_bias"], ly["groups"], ly["topk_groups"]) for ly in layers
    ] == [("sigmoid", True, 8, 4)] * 2
    assert all(ly["routed_scaling"] == 2.5 and ly["shared_experts"] == 2 for ly in layers)
    assert main(["inspect", str(MODEL)]) == 0
    assert "bias, groups 8/4, x2.5" in capsys.readouterr().out


def test_model_runs_and_is_causal() -> None:
    ids = np.frombuffer(HELDOUT.read_bytes()[:96], dtype=np.uint8).astype(np.int64).reshape(2, 48)
    logits = _session(MODEL).run(["logits"], {"input_ids": ids})[0]
    assert logits.shape == (2, 48, VOCAB) and np.isfinite(logits).all()
    prefix = _session(MODEL).run(["logits"], {"input_ids": ids[:, :20]})[0]
    np.testing.assert_allclose(prefix, logits[:, :20], atol=1e-4)


def _eval(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, float]:
    args = ["eval", str(MODEL), "--text", str(HELDOUT), "--json", *extra]
    assert main(args) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_eval_beats_unigram(capsys: pytest.CaptureFixture[str]) -> None:
    out = _eval(capsys, "--max-bytes", "4096")
    assert out["tokens"] == 4095
    assert 1.0 < out["perplexity"] < 0.8 * out["unigram_perplexity"]


def test_check_exact_passes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(MODEL), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["max_rel_err"] <= 1e-4


def test_interpreter_perplexity_matches_onnxruntime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prog = tmp_path / "fg.msp"
    assert main(["compile", str(MODEL), "--dims", "batch=4", "seq=128", "-o", str(prog)]) == 0
    capsys.readouterr()
    ref = _eval(capsys, "--max-bytes", "512")
    interp = _eval(capsys, "--max-bytes", "512", "--program", str(prog))
    assert (ref["engine"], interp["engine"]) == ("onnxruntime", "interpreter")
    assert interp["tokens"] == ref["tokens"] == 511
    assert interp["perplexity"] == pytest.approx(ref["perplexity"], rel=1e-5)


@pytest.mark.slow  # two short training runs in subprocesses: 20-40 s on a shared 2-core machine
def test_training_script_is_reproducible(tmp_path: Path) -> None:
    """A few steps of a small variant export the same bytes twice, the script's own ONNX Runtime
    check passes, and the frontend lifts the result as DeepSeek-style routing."""
    pytest.importorskip("torch")
    script = ROOT / "scripts" / "train_tiny_moe_lm_fg.py"
    small = [
        "--steps", "3", "--batch", "4", "--hidden", "32", "--ffn", "8", "--experts", "32",
        "--top-k", "4", "--groups", "4", "--topk-groups", "2", "--shared-experts", "1",
        "--context", "32", "--train-bytes", "100000", "--heldout-bytes", "20000",
        "--log-every", "100",
    ]  # fmt: skip
    outs = []
    for run in ("a", "b"):
        out = tmp_path / f"{run}.onnx"
        done = subprocess.run(
            [sys.executable, str(script), *small, "--out", str(out)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    module, _ = load_module(tmp_path / "a.onnx")
    layers = [op.attrs["layer"] for op in module.moe_ops()]
    assert [
        (ly.num_experts, ly.top_k, ly.n_group, ly.topk_group, ly.num_shared) for ly in layers
    ] == [(32, 4, 4, 2, 1)] * 2
    assert np.abs(layers[0].array("score_bias")).max() > 0  # three balancing updates happened
