"""A preset's graph IR built directly equals its lifted ONNX graph, field by field (issue 19)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from moec.compiler.frontend import lift_model
from moec.ir.graph import Module, Op, Value
from moec.models.preset_graph import preset_module
from moec.models.presets import PRESETS


def _fields(x: Any) -> Any:
    """``x`` as nested tuples of every field's value; a value or op inside an op or a value is
    its name (the module's own lists walk them in full)."""
    if isinstance(x, Value):
        return ("value", x.name)
    if isinstance(x, Op):
        return ("op", x.name)
    if isinstance(x, np.ndarray):
        return ("array", str(x.dtype), x.shape, x.tobytes())
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return (
            type(x).__name__,
            *((f.name, _fields(getattr(x, f.name))) for f in dataclasses.fields(x)),
        )
    if isinstance(x, dict):
        return ("dict", *((k, _fields(v)) for k, v in x.items()))
    if isinstance(x, list | tuple):
        return (type(x).__name__, *(_fields(v) for v in x))
    assert isinstance(x, int | float | str | bool | None), type(x)
    return (type(x).__name__, x)


def _value(v: Value | None) -> Any:
    if v is None:
        return None
    producer = None if v.producer is None else v.producer.name
    return (v.name, _fields(v.type), producer, [u.name for u in v.uses], _fields(v.weight))


def _op(op: Op) -> Any:
    return (
        op.kind, op.name, op.domain, [_value(v) for v in op.inputs],
        [_value(v) for v in op.outputs], _fields(op.attrs),
    )  # fmt: skip


def _module(m: Module) -> Any:
    return (
        m.name, [_value(v) for v in m.inputs], [_value(v) for v in m.outputs],
        [_op(op) for op in m.ops], _fields(m.weights), m.opset, m.metadata,
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_direct_build_equals_the_lifted_preset(name: str) -> None:
    preset = PRESETS[name]
    direct = preset_module(preset)
    assert direct is not None
    lifted, _ = lift_model(preset.build(0), where=name)
    a, b = _module(direct), _module(lifted)
    for x, y in zip(a, b, strict=True):  # the first part that differs, if one does
        assert x == y
    assert direct.print() == lifted.print()


def test_an_unsupported_preset_feature_is_lifted_instead() -> None:
    preset = PRESETS["qwen3-30b-a3b"]
    spec = dataclasses.replace(preset.spec, router_bias=True)
    assert preset_module(dataclasses.replace(preset, spec=spec)) is None


def test_bench_of_a_preset_does_not_import_onnx() -> None:
    code = (
        "import sys\n"
        "from moec.compiler.cli.main import main\n"
        "main(['bench', '--model', 'qwen3-30b-a3b', '--tokens', '16', '--strategies', 'ep',"
        " '--json'])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'ml_dtypes',"
        " 'onnxruntime')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]"
