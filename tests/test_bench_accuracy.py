"""``moec bench``: accuracy fields of rows with weights, and a bound that excludes deferred work."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moec.bench import known_strategies, run_bench
from moec.compiler.bench.report import ACCURACY_COLUMNS, markdown_table
from moec.compiler.bench.spec import (
    BenchError,
    accuracy_dims,
    iteration_bound,
    load_bench_model,
    mixed_layer_bound,
)
from moec.compiler.cli.main import main
from moec.ir.cost import layer_bound
from moec.ir.routing_synth import synth_zipf
from moec.ir.target import load_target

PRECISION = "annotate-importance,assign-precision{tiers=0.6/0.9}"
ACCURACY_KEYS = {"max_rel_err", "mean_rel_err", "cosine", "top1_agreement"}


@pytest.fixture(scope="module")
def tiny_rows() -> list[dict]:
    return run_bench(
        "tiny_moe", "fsedp-2x2", [16, 64], ["ep", "fsedp-buf"], passes=["", PRECISION],
        accuracy=None,
    )  # fmt: skip


def test_exact_rows_match_ort(tiny_rows: list[dict]) -> None:
    exact = [r for r in tiny_rows if r["passes"] == ""]
    assert len(exact) == 4
    for r in exact:
        acc = r["accuracy"]
        assert set(acc) == ACCURACY_KEYS
        assert acc["max_rel_err"] < 1e-4
        assert acc["top1_agreement"] == 1.0
        assert acc["cosine"] > 1 - 1e-9


def test_precision_rows_cost_accuracy(tiny_rows: list[dict]) -> None:
    for r in tiny_rows:
        if r["passes"] != PRECISION:
            continue
        exact = next(
            x for x in tiny_rows
            if x["passes"] == "" and (x["tokens"], x["strategy"]) == (r["tokens"], r["strategy"])
        )  # fmt: skip
        acc, ref = r["accuracy"], exact["accuracy"]
        # int8/int4 experts: a real, nonzero error, well above float rounding
        assert acc["max_rel_err"] > 1e-3 and acc["max_rel_err"] > 100 * ref["max_rel_err"]
        assert acc["mean_rel_err"] > ref["mean_rel_err"]
        assert acc["cosine"] < ref["cosine"]
        assert 0.5 < acc["top1_agreement"] <= 1.0


def test_accuracy_is_measured_per_token_count(tiny_rows: list[dict]) -> None:
    # different seeded inputs (16 vs 64 tokens) give different errors for the same row kind
    by = {(r["tokens"], r["strategy"], r["passes"]): r["accuracy"] for r in tiny_rows}
    assert by[(16, "ep", PRECISION)] != by[(64, "ep", PRECISION)]


def test_shape_only_rows_have_no_accuracy() -> None:
    rows = run_bench("yuan2-m32", "fsedp-2x2", [16], ["ep"], accuracy=None)
    assert "accuracy" not in rows[0]
    with pytest.raises(BenchError, match="every model of the run is shape-only"):
        run_bench("yuan2-m32", "fsedp-2x2", [16], ["ep"], accuracy=True)
    # a mixed run measures the model that has weights only
    mixed = run_bench(["yuan2-m32", "tiny_moe"], "fsedp-2x2", [16], ["ep"], accuracy=True)
    assert ["accuracy" in r for r in mixed] == [False, True]


def test_default_api_run_has_no_accuracy() -> None:
    assert "accuracy" not in run_bench("tiny_moe", "fsedp-2x2", [16], ["ep"])[0]


def test_language_model_rows() -> None:
    rows = run_bench(
        "models/tiny_moe_lm.onnx", "fsedp-2x2", [16], ["ep", "fsedp"], accuracy=True
    )  # fmt: skip
    for r in rows:
        assert r["accuracy"]["max_rel_err"] < 1e-4
        assert r["accuracy"]["top1_agreement"] == 1.0  # next-token agreement of the logits


def test_accuracy_dims() -> None:
    lm = load_bench_model("models/tiny_moe_lm.onnx").module
    assert accuracy_dims(lm, 64, "lm") == {"batch": 8, "seq": 8}
    with pytest.raises(BenchError, match="12 tokens is not a multiple of seq=8 = 8"):
        accuracy_dims(lm, 12, "lm")
    assert accuracy_dims(load_bench_model("tiny_moe").module, 12, "t") == {"T": 12}


def test_cli_accuracy_columns_and_switch(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["bench", "--model", "tiny_moe", "--tokens", "16", "--strategies", "ep"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert all(col in out for col in ACCURACY_COLUMNS) and "1.0000" in out
    assert main([*argv, "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert set(row["accuracy"]) == ACCURACY_KEYS
    assert main([*argv, "--json", "--no-accuracy"]) == 0
    assert "accuracy" not in json.loads(capsys.readouterr().out)["rows"][0]
    assert main([*argv, "--no-accuracy"]) == 0
    assert "max err" not in capsys.readouterr().out


def test_markdown_accuracy_columns(tiny_rows: list[dict]) -> None:
    md = markdown_table(tiny_rows).splitlines()
    assert md[0].endswith("| max err | mean err | cosine | top-1 |")
    assert all(line.count("|") == md[0].count("|") for line in md)


# --- the bound -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grid() -> list[dict]:
    """The ideal machine: the deferred-pairs test below needs its first-wave arithmetic."""
    return run_bench(
        ["qwen3-30b-a3b", "tiny_moe"], "fsedp-2x2", [16, 64], known_strategies(),
        passes=["", PRECISION, "caee-prune{threshold=0.8}"], overrides={"ideal": "true"},
    )  # fmt: skip


@pytest.fixture(scope="module")
def calibrated_grid() -> list[dict]:
    return run_bench(["qwen3-30b-a3b", "tiny_moe"], "fsedp-2x2", [16], known_strategies())


@pytest.mark.parametrize("which", ["grid", "calibrated_grid"])
def test_latency_respects_the_bound_for_every_strategy(
    which: str, request: pytest.FixtureRequest
) -> None:
    """The bound is the ideal machine's, a lower bound of the calibrated one too."""
    grid = request.getfixturevalue(which)
    assert {r["strategy"] for r in grid} >= {"fsedp-buf", "fsedp", "ep", "tp", "hydra", "eplb"}
    for r in grid:
        assert r["latency_s"] >= r["bound_s"] * (1 - 1e-9), r
        assert r["latency_over_bound"] >= 1 - 1e-6, r
        # the DRAM term is bytes every schedule must load this iteration
        bw = load_target("fsedp-2x2").total_dram_gbps() * 1e9
        assert r["dram_bytes"] >= r["bound_dram_s"] * bw * (1 - 1e-9), r


def test_bound_excludes_deferred_pairs(grid: list[dict]) -> None:
    def point(r: dict) -> tuple:
        return (r["model"], r["tokens"], r["passes"])

    buffered = [r for r in grid if r["strategy"] == "fsedp-buf"]
    assert buffered
    beaten = 0
    for r in buffered:
        assert r["bound_excludes_deferred"] is True
        assert r["bound_deferred_pairs"] == r["extra"]["deferred_pairs"] > 0
        # same trace, same work minus the deferred experts: a strictly smaller bound
        paired = next(x for x in grid if x["strategy"] == "fsedp-paired" and point(x) == point(r))
        assert "bound_excludes_deferred" not in paired
        if "caee" not in r["passes"]:  # pruning sees a different schedule per strategy
            assert r["bound_s"] < paired["bound_s"]
            beaten += r["latency_s"] < paired["bound_s"]
    # counting the deferred experts (fsedp-paired's bound on the same trace), fsedp-buf would
    # beat its own lower bound somewhere on this grid
    assert beaten > 0


def test_iteration_bound_deferred_and_plans() -> None:
    target = load_target("fsedp-2x2")
    layer = load_bench_model("qwen3-30b-a3b").layers[0]
    trace = synth_zipf(1, layer.num_experts, layer.top_k, 64, zipf=1.0, seed=0, num_dies=4)
    ids = trace.layers[0].ids
    full = iteration_bound(target, [layer], trace)
    cold = [int(e) for e in np.flatnonzero(np.bincount(ids.ravel(), minlength=128) == 1)[:3]]
    less = iteration_bound(target, [layer], trace, deferred=[cold])
    assert less.dram_s == pytest.approx(full.dram_s * (1 - 3 / np.unique(ids).size))
    assert less.compute_s == pytest.approx(full.compute_s * (1 - 3 / ids.size))
    # a uniform plan at the layer's precision is the plain bound; int4 experts load a quarter
    same = mixed_layer_bound(target, layer, ids, ["fp16"] * 128, "fp16")
    plain = layer_bound(target, layer, ids, "fp16")
    assert same.dram_s == pytest.approx(plain.dram_s)
    assert same.compute_s == pytest.approx(plain.compute_s)
    int4 = iteration_bound(target, [layer], trace, plans=[["int4"] * 128])
    assert int4.dram_s == pytest.approx(full.dram_s / 4)
    with pytest.raises(BenchError, match="precision plan of 3 experts for a layer of 128"):
        mixed_layer_bound(target, layer, ids, ["fp16"] * 3, "fp16")
