"""Kolibri-1, Inkling and Inkling-2 exports end to end: ``moec check`` (compile, interpret,
compare with ONNX Runtime) under every strategy family, and the ONNX export's refusal.

Their routers choose on logits (``bias_on_logits``), score the shared experts jointly with the
routed ones (``shared_in_norm``), or soft-cap the expert activation (``gate_softcap``,
``up_softcap``); see ``tests/fixtures/hf/README.md``. Layer-level numerics and ablations are in
``tests/test_frontend_hf.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from moec.check import check_model

FIXTURES = Path(__file__).parent / "fixtures" / "hf"


@pytest.mark.parametrize("arch", ["kolibri1", "inkling", "inkling2"])
@pytest.mark.parametrize("strategy", ["ep", "tp", "fsedp"])
def test_moec_check_matches_onnxruntime(arch: str, strategy: str) -> None:
    report = check_model(str(FIXTURES / f"{arch}.onnx"), strategy=strategy)
    assert report.passed and report.max_rel_err <= 1e-4, report.max_rel_err


@pytest.mark.parametrize("arch", ["kolibri1", "inkling", "inkling2"])
def test_export_refuses_located_without_output(arch: str, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    run = subprocess.run(
        [sys.executable, "-m", "moec", "export", str(FIXTURES / f"{arch}.onnx"), "-o", str(out)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert "moe0: cannot export as com.microsoft.MoE" in run.stderr
    assert "Traceback" not in run.stderr and not out.exists()
