"""The expert weights of a ``com.microsoft.MoE``/``QMoE`` node, in the canonical layout.

``fc1`` is ``[E, N1, d]`` (``y = x @ fc1[e].T``), ``fc2`` ``[E, d, F]``; QMoE weights are
dequantized as ONNX Runtime does (:func:`moec.compiler.frontend.nbits.dequantize`). A fused fc1
holds (gate, linear) rows interleaved (``swiglu_fusion=1``) or as halves (``2``). Weights whose
values are not loaded (``moec inspect`` reads no external data) stay declared, with their shape.
"""

from __future__ import annotations

import numpy as np
import onnx

from moec.compiler.frontend.nbits import dequantize
from moec.compiler.frontend.patterns import GraphView
from moec.ir.graph import TensorType, Weight

#: Input positions of the expert weights of QMoE and MoE nodes.
QMOE_INPUTS = {
    "fc1": 2, "fc1_scales": 3, "fc1_bias": 4, "fc2": 5, "fc2_scales": 6, "fc2_bias": 7,
    "fc3": 8, "fc3_scales": 9, "fc3_bias": 10, "fc1_zp": 11, "fc2_zp": 12, "fc3_zp": 13,
}  # fmt: skip
MOE_INPUTS = {"fc1": 2, "fc1_bias": 3, "fc2": 4, "fc2_bias": 5, "fc3": 6, "fc3_bias": 7}


def input_name(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if index < len(node.input) else ""


def present(name: str, arr: np.ndarray) -> Weight:
    """A float32 weight, or float16 when ``arr`` is: an fp16 model's experts stay fp16, so the
    lowering charges them at fp16 (numerics upcast them exactly, as ONNX Runtime's CPU EP runs
    an fp16 MoE node in float32 with its weights cast up)."""
    half = np.asarray(arr).dtype == np.float16
    a = np.ascontiguousarray(arr, dtype=np.float16 if half else np.float32)
    return Weight(name, TensorType("f16" if half else "f32", tuple(int(s) for s in a.shape)), a)


def declared(name: str, shape: tuple[int, ...], like: Weight | None = None) -> Weight:
    """A weight without values: float32, or float16 ``like`` an fp16 one it is made from."""
    half = like is not None and like.type.dtype == "f16"
    return Weight(name, TensorType("f16" if half else "f32", shape))


def fc_weight(
    view: GraphView, node: onnx.NodeProto, which: str, bits: int | None, block: int | None
) -> Weight | None | str:
    """An fc weight [E, N, K] as float (dequantized for QMoE), declared, None if absent."""
    idx = (QMOE_INPUTS if bits else MOE_INPUTS)[which]
    name = input_name(node, idx)
    if not name:
        return None
    w = view.weight(name)
    if w is None:
        return f"{which} weight {name!r} is not a constant initializer"
    if len(w.type.shape) != 3:
        return (
            f"{which} weight {name!r} has shape {list(w.type.shape)}, expected rank 3 "
            "[experts, rows, columns]"
        )
    if bits is None:
        if w.data is None:
            return w
        data = np.asarray(w.data)
        return present(which, data if data.dtype == np.float16 else data.astype(np.float32))
    E, N, Kp = (int(s) for s in w.type.shape)
    K = Kp * 8 // bits
    if w.data is None:
        return declared(which, (E, N, K))
    scales = view.constant(input_name(node, QMOE_INPUTS[f"{which}_scales"]))
    if scales is None:
        return f"{which}_scales missing or not constant (needed to dequantize {bits}-bit weights)"
    zp_name = input_name(node, QMOE_INPUTS[f"{which}_zp"])
    zp = view.constant(zp_name) if zp_name else None
    return present(which, dequantize(np.asarray(w.data), scales, zp, bits, block))


def fc_bias(view: GraphView, node: onnx.NodeProto, which: str, quant: bool) -> np.ndarray | None:
    name = input_name(node, (QMOE_INPUTS if quant else MOE_INPUTS)[which])
    if not name:
        return None
    c = view.constant(name)
    return None if c is None else np.asarray(c, np.float32)


def transposed(w: Weight, key: str) -> Weight:
    if w.data is None:
        E, N, K = (int(s) for s in w.type.shape)
        return declared(key, (E, K, N), w)
    return present(key, np.transpose(w.data, (0, 2, 1)))


def split_rows(w: Weight, fusion: int, key_a: str, key_b: str) -> tuple[Weight, Weight]:
    """Fused fc1 [E, 2F, d] -> (gate, linear) [E, F, d] by swiglu_fusion layout."""
    E, N, K = (int(s) for s in w.type.shape)
    if w.data is None:
        return declared(key_a, (E, N // 2, K), w), declared(key_b, (E, N // 2, K), w)
    if fusion == 1:
        return present(key_a, w.data[:, 0::2]), present(key_b, w.data[:, 1::2])
    return present(key_a, w.data[:, : N // 2]), present(key_b, w.data[:, N // 2 :])


def split_bias(b: np.ndarray, fusion: int) -> tuple[np.ndarray, np.ndarray]:
    if fusion == 1:
        return b[:, 0::2], b[:, 1::2]
    half = b.shape[1] // 2
    return b[:, :half], b[:, half:]
