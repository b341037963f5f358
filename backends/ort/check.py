"""The ONNX Runtime side of ``moec check``: seeded inputs, a run of the original model, comparison.

Inputs are generated so the model computes something meaningful:

* an integer input that (through Cast/Reshape/Unsqueeze/Squeeze/Flatten/Identity) feeds the
  indices of a ``Gather`` on a constant table is a token id: uniform in ``0 .. rows-1`` of the
  table (the embedding's vocabulary);
* other integer inputs: uniform in ``0 .. 3``; booleans: fair coins;
* floating-point inputs: standard normal;
* symbolic dimensions take the sizes given in ``dims`` (the caller decides the defaults).

Comparison, per graph output: ``max_abs_err = max |got - want|`` and
``max_rel_err = max |got - want| / max |want|`` (the error relative to the output's scale, not
element-wise, so outputs near zero do not blow it up; equal to ``max_abs_err`` when ``want`` is all
zeros). A check passes when every output has the same shape, no NaN/Inf where ONNX Runtime has
none, and ``max_rel_err <= tol``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from moec.backends.ort.runtime import error_text, session_options
from moec.ir.errors import CheckFailed, ModelError, MoecError

#: Ops a token id passes through unchanged on its way to the embedding Gather.
_ID_PATH = frozenset({"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"})
#: Upper bound (exclusive) of integer inputs that are not token ids.
SMALL_INT = 4


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def vocab_sizes(model: onnx.ModelProto) -> dict[str, int]:
    """Graph inputs that are token ids, with the number of rows of the table they index."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out: dict[str, int] = {}
    for inp in _graph_inputs(model):
        frontier, seen = [inp.name], set()
        rows: list[int] = []
        while frontier:
            name = frontier.pop()
            if name in seen:
                continue
            seen.add(name)
            for node in consumers.get(name, []):
                if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name:
                    table = inits.get(node.input[0])
                    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                    if table is not None and len(table.dims) > axis:
                        rows.append(int(table.dims[axis]))
                elif node.op_type in _ID_PATH and node.input and node.input[0] == name:
                    frontier.extend(node.output)
        if rows:
            out[inp.name] = min(rows)
    return out


def input_shape(vi: onnx.ValueInfoProto, dims: Mapping[str, int]) -> tuple[int, ...]:
    """The concrete shape of graph input ``vi`` with symbolic dimensions from ``dims``."""
    shape = []
    for d in vi.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        elif d.dim_param and d.dim_param in dims:
            shape.append(int(dims[d.dim_param]))
        else:
            name = d.dim_param or "?"
            raise ModelError(
                f"input {vi.name!r}: dimension {name} has no size (give --dims {name}=N)", "--dims"
            )
    return tuple(shape)


def make_inputs(
    model: onnx.ModelProto, dims: Mapping[str, int], seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded inputs for every graph input (see the module docstring)."""
    rng = np.random.default_rng(seed)
    vocab = vocab_sizes(model)
    feeds: dict[str, np.ndarray] = {}
    for vi in _graph_inputs(model):
        shape = input_shape(vi, dims)
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if np.issubdtype(dtype, np.integer):
            high = vocab.get(vi.name, SMALL_INT)
            feeds[vi.name] = rng.integers(0, high, size=shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            feeds[vi.name] = rng.standard_normal(size=shape).astype(dtype)
    return feeds


def load_inputs(path: str | os.PathLike[str], model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Inputs from an ``.npz`` file: one array per graph input, by name, with matching types."""
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        raise MoecError(f"cannot read inputs: {err}", where) from None
    feeds: dict[str, np.ndarray] = {}
    for vi in _graph_inputs(model):
        if vi.name not in arrays:
            raise MoecError(f"no array for model input {vi.name!r} (found {sorted(arrays)})", where)
        a = arrays[vi.name]
        want = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if a.dtype != want:
            raise MoecError(f"input {vi.name!r} has dtype {a.dtype}, the model wants {want}", where)
        dims = vi.type.tensor_type.shape.dim
        if len(dims) != a.ndim or any(
            d.HasField("dim_value") and d.dim_value != s
            for d, s in zip(dims, a.shape, strict=False)
        ):
            expected = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
            raise MoecError(
                f"input {vi.name!r} has shape {list(a.shape)}, expected {expected}", where
            )
        feeds[vi.name] = a
    return feeds


def dims_of(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Sizes of the symbolic input dimensions as the given inputs have them."""
    out: dict[str, int] = {}
    for vi in _graph_inputs(model):
        a = feeds.get(vi.name)
        if a is None:
            continue
        for d, size in zip(vi.type.tensor_type.shape.dim, a.shape, strict=False):
            if d.dim_param:
                if out.get(d.dim_param, size) != size:
                    raise MoecError(
                        f"dimension {d.dim_param} is {out[d.dim_param]} in one input and {size} in "
                        f"input {vi.name!r}"
                    )
                out[d.dim_param] = int(size)
    return out


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(
            model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # noqa: BLE001 - ORT raises its own unrelated types
        raise ModelError(f"ONNX Runtime cannot load the model: {error_text(err)}") from None


def run_ort(
    model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], extra: Sequence[str] = ()
) -> dict[str, np.ndarray]:
    """Every graph output of ``model`` on ``feeds``, plus the intermediate values ``extra``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    typed = {vi.name: vi for vi in m.graph.value_info}
    for name in extra:
        if name not in present:
            m.graph.output.append(typed.get(name) or onnx.ValueInfoProto(name=name))
            present.add(name)
    sess = session(m)
    names = [o.name for o in sess.get_outputs()]
    try:
        values = sess.run(names, dict(feeds))
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"ONNX Runtime failed to run the model: {error_text(err)}") from None
    return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}


@dataclass(frozen=True)
class OutputError:
    name: str
    shape: tuple[int, ...]
    max_abs_err: float
    max_rel_err: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "shape": list(self.shape), "max_abs_err": self.max_abs_err,
            "max_rel_err": self.max_rel_err,
        }  # fmt: skip


@dataclass
class CheckReport:
    outputs: list[OutputError] = field(default_factory=list)
    tol: float = 1e-4

    @property
    def max_abs_err(self) -> float:
        return max((o.max_abs_err for o in self.outputs), default=0.0)

    @property
    def max_rel_err(self) -> float:
        return max((o.max_rel_err for o in self.outputs), default=0.0)

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and self.max_rel_err <= self.tol

    def to_json(self) -> dict[str, Any]:
        return {
            "outputs": [o.to_json() for o in self.outputs], "max_abs_err": self.max_abs_err,
            "max_rel_err": self.max_rel_err, "passed": self.passed,
        }  # fmt: skip


def check_finite(name: str, got: np.ndarray, want: np.ndarray) -> None:
    """Fail on the first non-finite value on either side: an Inf or NaN is never "close".

    (A relative error divided by an infinite scale would read 0 and pass falsely.)
    """
    for side, values in (("ONNX Runtime", want), ("the interpreter", got)):
        finite = np.isfinite(values)
        if not finite.all():
            index = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise CheckFailed(
                f"non-finite value {values[index]} from {side} at index {list(index)} "
                f"(ONNX Runtime {want[index]}, interpreter {got[index]})",
                f"output {name}",
            )


def compare(
    got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray], tol: float = 1e-4
) -> CheckReport:
    """Errors of ``got`` against ``want`` for every output ``want`` has (in its order)."""
    report = CheckReport(tol=tol)
    for name, w in want.items():
        g = got.get(name)
        if g is None:
            raise MoecError(f"the interpreter produced no graph output {name!r}")
        g64, w64 = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if g64.shape != w64.shape:
            report.outputs.append(OutputError(name, tuple(g64.shape), float("inf"), float("inf")))
            continue
        if g64.size == 0:
            report.outputs.append(OutputError(name, tuple(w64.shape), 0.0, 0.0))
            continue
        check_finite(name, g64, w64)
        abs_err = float(np.abs(g64 - w64).max())
        scale = float(np.abs(w64).max())
        rel = abs_err / scale if scale > 0 else abs_err
        report.outputs.append(OutputError(name, tuple(w64.shape), abs_err, rel))
    return report
