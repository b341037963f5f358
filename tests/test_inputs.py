"""One seeded-input rule (``ir/inputs.py``) behind ``moec check``, the interpreter and calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from moec.backends.interp.numerics import seeded_inputs as interp_inputs
from moec.backends.ort.check import make_inputs
from moec.compiler.calibration import seeded_inputs as calibration_inputs
from moec.compiler.frontend import load_module
from moec.ir.errors import ModelError
from moec.ir.inputs import SMALL_INT, InputSpec, seeded_feeds, shape_for_dims, shape_for_tokens

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["tiny_moe", "tiny_moe_lm"])
def test_the_three_callers_draw_the_same_inputs(name: str) -> None:
    path = ROOT / "models" / f"{name}.onnx"
    model = onnx.load(str(path))
    module, _ = load_module(str(path))
    tokens = 12
    dims = {}
    for vi in model.graph.input:
        named = [d.dim_param for d in vi.type.tensor_type.shape.dim if d.dim_param]
        dims.update({d: 1 for d in named[:-1]} | ({named[-1]: tokens} if named else {}))
    a = make_inputs(model, dims, seed=3)
    b = interp_inputs(model, tokens, seed=3)
    c = calibration_inputs(module, 3, tokens)
    assert a.keys() == b.keys() == c.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]) and np.array_equal(a[k], c[k])
        assert a[k].size == tokens and a[k].min() >= 0  # token ids in the embedding's range


def test_the_rule() -> None:
    specs = [
        InputSpec("ids", np.dtype(np.int64), (2, 500), rows=7),
        InputSpec("flag", np.dtype(np.int32), (500,)),
        InputSpec("mask", np.dtype(np.bool_), (500,)),
        InputSpec("x", np.dtype(np.float32), (4000,)),
    ]
    feeds = seeded_feeds(specs, 0)
    assert set(np.unique(feeds["ids"])) == set(range(7))
    assert set(np.unique(feeds["flag"])) == set(range(SMALL_INT))
    assert feeds["mask"].dtype == np.bool_ and feeds["mask"].any() and not feeds["mask"].all()
    assert abs(float(feeds["x"].mean())) < 0.1 and 0.9 < float(feeds["x"].std()) < 1.1
    again = seeded_feeds(specs, 0)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    assert not np.array_equal(seeded_feeds(specs, 1)["x"], feeds["x"])
    with pytest.raises(ModelError, match="cannot generate"):
        seeded_feeds([InputSpec("s", np.dtype("U4"), (1,))], 0)


def test_shapes() -> None:
    assert shape_for_tokens(["batch", "seq", 16], 9) == (1, 9, 16)
    assert shape_for_tokens([None], 5) == (5,) and shape_for_tokens([3, 4], 5) == (3, 4)
    assert shape_for_dims("x", ["B", 3], {"B": 2}) == (2, 3)
    with pytest.raises(ModelError, match="dimension S has no size"):
        shape_for_dims("x", ["S"], {})
