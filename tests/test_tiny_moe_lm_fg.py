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
    layers = [op.layer for op in module.moe_ops()]
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
    layers = [op.layer for op in module.moe_ops()]
    assert [
        (ly.num_experts, ly.top_k, ly.n_group, ly.topk_group, ly.num_shared) for ly in layers
    ] == [(32, 4, 4, 2, 1)] * 2
    assert np.abs(layers[0].array("score_bias")).max() > 0  # three balancing updates happened


def test_caee_on_the_fine_grained_lm_stays_under_one_percent() -> None:
    """docs/results.md's reading on real text: CAEE drops some (token, expert) pairs of the
    fine-grained LM, never a token's first choice, and costs well under 1% perplexity."""
    from moec.approx import program_perplexity

    # 1025 bytes: 8 whole windows, one full batch (no padded rows for the rule to see)
    ids = np.frombuffer(HELDOUT.read_bytes()[:1025], dtype=np.uint8).astype(np.int64)
    exact, dropped0, total = program_perplexity(str(MODEL), "", ids, 128, batch=8)
    caee, dropped, total2 = program_perplexity(
        str(MODEL), "caee-prune{threshold=0.8}", ids, 128, batch=8
    )
    assert dropped0 == 0 and total == total2 > 0
    assert 0 < dropped < total // 8  # a few pairs on the straggler, never the bulk
    assert exact < caee < 1.01 * exact


def test_rule_drops_script() -> None:
    """scripts/lm_rule_drops.py: no rule drops a first choice; moved weight is a share of all."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "lm_rule_drops", ROOT / "scripts" / "lm_rule_drops.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ids = np.frombuffer(HELDOUT.read_bytes()[:256], dtype=np.uint8).astype(np.int64)
    rows = {r[0]: r[1:] for r in module.rule_drops(str(MODEL), ids, 2, "npu8-hbm")}
    assert set(rows) == set(module.RULES)
    for dropped, pairs, moved, by_rank in rows.values():
        assert pairs == 256 * 2 * 8 and len(by_rank) == 8
        assert by_rank[0] == 0 and sum(by_rank) == dropped <= pairs
        assert 0.0 <= moved < 1.0 and (moved > 0) == (dropped > 0)
    assert rows["skip-second"][0] > rows["caee-prune{threshold=0.8}"][0] > 0


@pytest.mark.slow  # every pipeline on every model with real weights: about a minute
def test_caee_results_accuracy_tables(capsys: pytest.CaptureFixture[str]) -> None:
    """scripts/caee_results.py accuracy runs on both LMs; the interpreter's exact perplexity is
    ONNX Runtime's on each."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "caee_results", ROOT / "scripts" / "caee_results.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.accuracy_table(512, [8], "npu8-hbm")
    out = capsys.readouterr().out
    assert out.count("| tiny_moe_lm_fg |") == len(module.PIPELINES) + len(module.COMBINATIONS)
    ort_row = next(ln for ln in out.splitlines() if ln.startswith("| ONNX Runtime, original"))
    exact_row = next(ln for ln in out.splitlines() if ln.startswith("| interpreter, exact"))
    ort_ppl = [float(c) for c in ort_row.split("|")[2::3][:2]]
    exact_ppl = [float(c) for c in exact_row.split("|")[2::3][:2]]
    assert exact_ppl == pytest.approx(ort_ppl, rel=1e-4)
