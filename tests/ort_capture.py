"""Test helper: run an ONNX model in ONNX Runtime and capture intermediate values.

``capture(model, feeds, names)`` adds ``names`` as extra graph outputs of a copy of the model
and returns every graph output plus those values, by name. Used to take an MoE layer's input and
output from a run of the original model and compare the canonical op's evaluation against them.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def capture(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str]
) -> dict[str, np.ndarray]:
    """Outputs of ``model`` on ``feeds`` plus the intermediate values ``names``."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    typed = {vi.name: vi for vi in m.graph.value_info}
    for name in names:
        if name in present:
            continue
        vi = typed.get(name)
        m.graph.output.append(vi if vi is not None else onnx.ValueInfoProto(name=name))
        present.add(name)
    sess = session(m)
    out_names = [o.name for o in sess.get_outputs()]
    return dict(zip(out_names, sess.run(out_names, feeds), strict=True))


def max_rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max |want| (0 when both are zero)."""
    scale = float(np.abs(want).max())
    diff = float(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64)).max())
    return diff / scale if scale > 0 else diff
