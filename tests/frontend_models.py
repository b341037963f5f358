"""Test helper: one-layer ONNX models around a single MoE block (x [T, d] in, y out)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto
from ort_capture import capture, max_rel_error

from moec.compiler.frontend.lift import lift_model
from moec.ir.moe import MoESpec, evaluate
from moec.models.builder import OnnxBuilder

T = 12


def single_layer(
    block: Callable[[OnnxBuilder, str, MoESpec, str], str], spec: MoESpec, seed: int = 0
) -> onnx.ModelProto:
    b = OnnxBuilder("single", seed=seed)
    x = b.input("x", TensorProto.FLOAT, [T, spec.hidden])
    y = block(b, x, spec, "moe")
    b.output(y, TensorProto.FLOAT, [T, spec.hidden])
    return b.model()


def layer_errors(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[float]:
    """Per lifted layer: max relative error of ``evaluate`` against ORT on the original model."""
    _, result = lift_model(model, where="test")
    names = [n for lf in result.lifted for n in (lf.input, lf.output)]
    got = capture(model, feeds, names)
    return [
        max_rel_error(evaluate(lf.layer, got[lf.input]), got[lf.output]) for lf in result.lifted
    ]


def x_feed(d: int, seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((T, d)).astype(np.float32)}
