"""Interpreter numerics: MoE layers computed from the program's instructions match ONNX Runtime on
the original model, and the expanded static program computes the same outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from moec.backends.interp import simulate
from moec.backends.interp.numerics import load_weights, seeded_inputs
from moec.compiler.cli.main import main
from moec.ir.stream import load_program, parse_program, print_program
from moec.models.catalog import catalog


def _compile(name: str, tmp: Path, *extra: str) -> Path:
    out = tmp / f"{name}.msp"
    assert main(["compile", name, "-o", str(out), *extra]) == 0
    return out


def _ort(name: str, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    model = catalog()[name].build(0)
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in sess.run(None, inputs)]


@pytest.mark.parametrize("name", ["tiny_moe", "tiny_moe_shared", "tiny_deepseek"])
def test_outputs_match_onnxruntime(name: str, tmp_path: Path) -> None:
    path = _compile(name, tmp_path)
    p = load_program(str(path))
    inputs = seeded_inputs(load_weights(p, None), p.layers[0].tokens, seed=3)
    r = simulate(p, inputs=inputs)
    assert r.outputs is not None
    for got, want in zip(r.outputs.values(), _ort(name, inputs), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    # every layer's routing came from its router and was expanded
    assert [lr.name for lr in r.routings] == [m.name for m in p.layers]
    assert r.expanded.is_static


def test_expanded_program_gives_same_outputs_and_timing(tmp_path: Path) -> None:
    path = _compile("tiny_moe_shared", tmp_path)
    p = load_program(str(path))
    inputs = seeded_inputs(load_weights(p, None), p.layers[0].tokens, seed=7)
    a = simulate(p, inputs=inputs)
    static_path = tmp_path / "expanded.msp"
    static_path.write_text(print_program(a.expanded))
    static = load_program(str(static_path))
    b = simulate(static, inputs=inputs)
    assert a.outputs is not None and b.outputs is not None
    for k in a.outputs:
        assert np.array_equal(a.outputs[k], b.outputs[k])
    assert a.report.to_json() == b.report.to_json()


def test_wrong_expansion_is_caught(tmp_path: Path) -> None:
    """An expansion that drops the y return leaves partial sums on an expert die: an error."""
    from moec.ir.errors import ScheduleError
    from moec.ir.stream import Recv, Send

    path = _compile("tiny_moe", tmp_path)
    p = load_program(str(path))
    inputs = seeded_inputs(load_weights(p, None), p.layers[0].tokens, seed=0)
    good = simulate(p, inputs=inputs).expanded
    text = print_program(good)
    bad = parse_program(text, str(path))
    for st in bad.streams:
        st.instrs = [
            i for i in st.instrs
            if not (isinstance(i, Send | Recv) and i.block is not None and i.block.which == "y")
        ]  # fmt: skip
    with pytest.raises(ScheduleError, match="partial output of token"):
        simulate(bad, inputs=inputs, base_dir=str(tmp_path))
