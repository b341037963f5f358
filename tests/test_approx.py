"""``moec.approx`` (the accuracy tables of docs/results.md) and ``moec check --approx --tol``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moec.approx import approx_check, program_perplexity
from moec.backends.ort.perplexity import load_lm, perplexity
from moec.compiler.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "models" / "tiny_moe.onnx")
LM = str(ROOT / "models" / "tiny_moe_lm.onnx")
HELDOUT = ROOT / "models" / "tiny_moe_lm.heldout.txt"
PRECISION = "annotate-importance,assign-precision{tiers=0.6/0.9}"


def heldout(n: int) -> np.ndarray:
    return np.frombuffer(HELDOUT.read_bytes()[:n], dtype=np.uint8).astype(np.int64)


def test_precision_plan_matches_ort_on_the_exported_approximation() -> None:
    report = approx_check(TINY, PRECISION)
    assert report.exported is not None and report.export_note == ""
    assert max(o.max_rel_err for o in report.exported) < 1e-4  # interp == ORT(approximation)
    assert 1e-3 < report.max_rel_err < 0.5  # a real, bounded accuracy cost
    assert sum(report.precision.values()) == 2 * 8  # every expert of both layers has a tier
    assert len(report.precision) > 1 and report.dropped_pairs == 0 and report.total_pairs > 0
    doc = report.to_json()
    assert doc["max_rel_err"] == report.max_rel_err and doc["precision"] == report.precision


def test_exact_pipeline_and_skip_rules() -> None:
    exact = approx_check(TINY, "")
    assert exact.max_rel_err < 1e-4 and exact.passed(1e-4) and exact.dropped_pairs == 0
    skip = approx_check(TINY, "skip-second")
    assert 0 < skip.dropped_pairs < skip.total_pairs
    assert "not in the exported ONNX model" in skip.export_note
    assert skip.max_rel_err > 1e-2 and not skip.passed(1e-2) and skip.passed(1.0)


def test_check_approx_honours_tol(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", TINY, "--approx", "skip-second", "--tol", "1e-6"]) == 1
    assert "FAILED: max_rel_err" in capsys.readouterr().out
    assert main(["check", TINY, "--approx", "skip-second", "--tol", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] is True and doc["tol"] == 1.0 and doc["dropped_pairs"] > 0
    assert main(["check", TINY, "--approx", "skip-second", "--json"]) == 1  # default tol 1e-4
    assert json.loads(capsys.readouterr().out)["passed"] is False


def test_program_perplexity_exact_matches_ort() -> None:
    ids = heldout(200)  # windows of 64: 3 full, one short one (7 bytes), a partial batch
    ppl, dropped, total = program_perplexity(LM, "", ids, 64, batch=2)
    want = perplexity(load_lm(LM).logits, ids, 64, batch=2).perplexity
    assert dropped == 0 and total == 199 * 2 * 2  # every byte fed once: 2 layers, top-2
    assert ppl == pytest.approx(want, rel=1e-5)


def test_program_perplexity_padding_does_not_reach_the_rules() -> None:
    """A partial batch runs as its own shape: the rule sees only the real tokens, so 3 windows
    scored with batch=4 (one partial batch) equal the same 3 windows with batch=3."""
    ids = heldout(3 * 32 + 1)
    rule = "caee-prune{threshold=0.8}"
    partial = program_perplexity(LM, rule, ids, 32, batch=4)
    full = program_perplexity(LM, rule, ids, 32, batch=3)
    assert partial == full
    assert partial[1] > 0  # the rule did drop pairs: it is active on this batch
