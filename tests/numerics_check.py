"""Compile a tiny model with a strategy, run the interpreter's numerics, compare with ORT."""

from __future__ import annotations

import os
from pathlib import Path

from moec.backends.interp import simulate
from moec.backends.ort.check import compare, run_ort
from moec.check import model_inputs
from moec.compile import compile_model, write_compiled
from moec.ir.routing import RoutingTrace
from moec.ir.stream import load_program


def check_strategy(
    model: str, strategy: str, target: str, folder: Path, routing: RoutingTrace | None = None
) -> float:
    """Largest relative error of the interpreter against ONNX Runtime (exact mode)."""
    path = os.path.join(folder, f"{strategy}-{target}.msp")
    compiled = compile_model(model, path, strategy=strategy, target=target, routing=routing)
    write_compiled(compiled, path)
    feeds, _ = model_inputs(compiled.module, compiled.lifted)
    want = run_ort(compiled.lifted.model, feeds)
    got = simulate(load_program(path), inputs=feeds).outputs
    assert got is not None
    report = compare(got, want, 1e-4)
    assert report.passed, report
    return float(report.max_rel_err)
