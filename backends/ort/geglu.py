"""A CPU reference for ``com.microsoft.MoE``/``QMoE`` nodes with ``activation_type='geglu'``.

ONNX Runtime 1.32 implements geglu experts only in its CUDA kernels; its CPU kernel refuses the
node at session creation (``Unsupported MoE activation type: geglu``), which is what
onnxruntime-genai's Gemma-4 builds contain. So that ``moec check`` still has an ORT-run
reference on CPU, :func:`substitute` rewrites each such node into standard ONNX ops written from
ORT's own operator schema (``onnxruntime.capi.onnxruntime_pybind11_state.get_all_operator_schema``,
MoE/QMoE, ORT 1.32):

- ``router_probs`` are logits: softmax over the experts, top-k, the k weights renormalized when
  ``normalize_routing_weights=1``;
- ``fc1`` [E, 2F, d] holds (gate, up) rows, interleaved (``swiglu_fusion=1``) or halves (``2``),
  ``h = x @ fc1[e].T + fc1_bias[e]``; ``geglu = GELU(g, approximate='tanh') * l``; alpha, beta
  and swiglu_limit do not apply; ``y_e = geglu @ fc2[e].T + fc2_bias[e]``; the output is the
  weighted sum of the k chosen experts' ``y_e``;
- QMoE weights ``uint8 [E, N, K*bits/8]`` (4-bit: element 2i in the low nibble) dequantized as
  ``(q - zp) * scale`` per block of ``block_size`` (``zp = 2**(bits-1)`` without zero points).
  For 8-bit block-wise weights the activations entering a product whose contracted length is a
  whole number of blocks are quantized to int8 per block (``round(a / s) * s``,
  ``s = max|a| / 127``), as ORT's CPU QMoE does for the activations it implements (measured; the
  GEMM path does not depend on the activation).

Every expert is computed for every token and weighted by a dense [T, E] gate matrix (zero off
the top-k), which is slower than ORT's kernel but the same numbers up to float summation order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from moec.ir.errors import ModelError

#: ORT's session-creation error for a geglu MoE node on CPU.
CPU_REFUSAL = "Unsupported MoE activation type: geglu"
_QMOE = {"fc1": 2, "fc1_scales": 3, "fc1_bias": 4, "fc2": 5, "fc2_scales": 6, "fc2_bias": 7,
         "fc3": 8, "fc1_zp": 11, "fc2_zp": 12}  # fmt: skip
_MOE = {"fc1": 2, "fc1_bias": 3, "fc2": 4, "fc2_bias": 5, "fc3": 6}


def _attr(node: onnx.NodeProto, key: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == key:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def is_geglu(node: onnx.NodeProto) -> bool:
    """A ``com.microsoft`` MoE/QMoE node with ``activation_type='geglu'``."""
    return (
        node.domain == "com.microsoft" and node.op_type in ("MoE", "QMoE")
        and _attr(node, "activation_type", "relu") == "geglu"
    )  # fmt: skip


def _unpack(q: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return q.astype(np.float32)
    lo, hi = q & 0x0F, q >> 4
    return np.stack([lo, hi], axis=-1).reshape(*q.shape[:-1], -1).astype(np.float32)


def dequantize_qmoe(
    q: np.ndarray, scales: np.ndarray, zp: np.ndarray | None, bits: int, block: int
) -> np.ndarray:
    """QMoE weights ``[E, N, K*bits/8]`` -> float ``[E, N, K]`` (block 0: one scale per row)."""
    vals = _unpack(np.asarray(q, np.uint8), bits)
    E, N, K = vals.shape
    width = block or K
    nb = -(-K // width)
    s = np.asarray(scales, np.float32).reshape(E, N, nb)
    if zp is None:
        z = np.full((E, N, nb), 2 ** (bits - 1), np.float32)
    else:
        z = _unpack(np.asarray(zp, np.uint8), bits).reshape(E, N, -1)[:, :, :nb]
    padded = np.pad(vals, ((0, 0), (0, 0), (0, nb * width - K))).reshape(E, N, nb, width)
    return ((padded - z[..., None]) * s[..., None]).reshape(E, N, nb * width)[:, :, :K]


class _Writer:
    """Appends nodes and initializers with fresh names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.n = prefix, 0
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def name(self, base: str) -> str:
        self.n += 1
        return f"{self.prefix}/{base}_{self.n}"

    def const(self, arr: np.ndarray | np.floating[Any], base: str = "c") -> str:
        name = self.name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def op(self, op: str, *ins: str, n_out: int = 1, **attrs: Any) -> list[str]:
        outs = [self.name(op) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op, list(ins), outs, name=outs[0], **attrs))
        return outs

    def __call__(self, op: str, *ins: str, **attrs: Any) -> str:
        return self.op(op, *ins, **attrs)[0]


def _quantized(w: _Writer, a: str, K: int, block: int) -> str:
    """``a`` [.., K] through int8 block quantization along its last axis (K a multiple)."""
    blocks = w("Reshape", a, w.const(np.array([-1, K // block, block], np.int64)))
    amax = w("ReduceMax", w("Abs", blocks), w.const(np.array([-1], np.int64)), keepdims=1)
    s = w("Div", amax, w.const(np.float32(127)))
    zero = w("Equal", s, w.const(np.float32(0)))
    safe = w("Where", zero, w.const(np.float32(1)), s)
    q = w("Clip", w("Round", w("Div", blocks, safe)), w.const(np.float32(-127)),
          w.const(np.float32(127)))  # fmt: skip
    return w("Reshape", w("Mul", q, safe), w("Shape", a))


def _gelu_tanh(w: _Writer, g: str) -> str:
    cube = w("Mul", w("Mul", g, g), g)
    inner = w("Add", g, w("Mul", cube, w.const(np.float32(0.044715))))
    t = w("Tanh", w("Mul", inner, w.const(np.float32(math.sqrt(2.0 / math.pi)))))
    half = w("Mul", g, w.const(np.float32(0.5)))
    return w("Mul", half, w("Add", t, w.const(np.float32(1.0))))


def _weights(
    node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], which: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """(float weights [E, N, K], bias [E, N] or None) of fc1/fc2."""
    quant = node.op_type == "QMoE"
    idx = _QMOE if quant else _MOE

    def arr(key: str) -> np.ndarray | None:
        i = idx.get(key, -1)
        name = node.input[i] if 0 <= i < len(node.input) else ""
        if not name:
            return None
        if name not in inits:
            raise ModelError(f"node {node.name}: {key} ({name!r}) is not an initializer")
        return numpy_helper.to_array(inits[name])

    raw = arr(which)
    if raw is None:
        raise ModelError(f"node {node.name}: {which} weights are missing")
    bias = arr(f"{which}_bias")
    if not quant:
        return raw.astype(np.float32), None if bias is None else bias.astype(np.float32)
    scales = arr(f"{which}_scales")
    if scales is None:
        raise ModelError(f"node {node.name}: {which}_scales are missing")
    bits = int(_attr(node, "expert_weight_bits", 4))
    block = int(_attr(node, "block_size", 0))
    w = dequantize_qmoe(raw, scales, arr(f"{which}_zp"), bits, block)
    return w, None if bias is None else bias.astype(np.float32)


def _expand(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> _Writer:
    """Standard ops computing ``node`` (a geglu MoE/QMoE) into its own output name."""
    w = _Writer(f"{node.name or 'moe'}/geglu_reference")
    fc1, b1 = _weights(node, inits, "fc1")
    fc2, b2 = _weights(node, inits, "fc2")
    E, N1, d = fc1.shape
    F = N1 // 2
    k = int(_attr(node, "k", 1))
    fusion = int(_attr(node, "swiglu_fusion", 0))
    if fusion not in (1, 2) or (len(node.input) > 6 and node.input[_MOE["fc3"]] and
                                node.op_type == "MoE"):  # fmt: skip
        raise ModelError(f"node {node.name}: geglu needs swiglu_fusion 1 or 2 and no fc3")
    bits = int(_attr(node, "expert_weight_bits", 0)) if node.op_type == "QMoE" else 0
    block = int(_attr(node, "block_size", 0)) if bits == 8 else 0
    x = w("Reshape", node.input[0], w.const(np.array([-1, d], np.int64)))
    logits = w("Reshape", node.input[1], w.const(np.array([-1, E], np.int64)))
    probs = w("Softmax", logits, axis=-1)
    vals, ids = w.op("TopK", probs, w.const(np.array([k], np.int64)), n_out=2, axis=-1)
    if int(_attr(node, "normalize_routing_weights", 0)):
        total = w("ReduceSum", vals, w.const(np.array([-1], np.int64)), keepdims=1)
        vals = w("Div", vals, total)
    gates = w("ScatterElements", w("Mul", probs, w.const(np.float32(0))), ids, vals, axis=1)
    x_in = _quantized(w, x, d, block) if block and d % block == 0 else x
    h = w("MatMul", x_in, w.const(np.ascontiguousarray(fc1.transpose(0, 2, 1)), "fc1"))
    if b1 is not None:
        h = w("Add", h, w.const(b1[:, None, :], "fc1_bias"))  # [E, T, 2F]
    if fusion == 1:
        g_idx, l_idx = np.arange(0, N1, 2), np.arange(1, N1, 2)
    else:
        g_idx, l_idx = np.arange(F), np.arange(F, N1)
    g = w("Gather", h, w.const(g_idx.astype(np.int64)), axis=2)
    lin = w("Gather", h, w.const(l_idx.astype(np.int64)), axis=2)
    act = w("Mul", _gelu_tanh(w, g), lin)
    act_in = _quantized(w, act, F, block) if block and F % block == 0 else act
    y = w("MatMul", act_in, w.const(np.ascontiguousarray(fc2.transpose(0, 2, 1)), "fc2"))
    if b2 is not None:
        y = w("Add", y, w.const(b2[:, None, :], "fc2_bias"))  # [E, T, d]
    weight = w("Unsqueeze", w("Transpose", gates, perm=[1, 0]), w.const(np.array([2], np.int64)))
    summed = w("ReduceSum", w("Mul", y, weight), w.const(np.array([0], np.int64)), keepdims=0)
    w.nodes.append(
        helper.make_node(
            "Reshape", [summed, w("Shape", node.input[0])], [node.output[0]], name=w.name("Reshape")
        )  # fmt: skip
    )
    return w


def substitute(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with every geglu MoE/QMoE node replaced by :func:`_expand`'s ops."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    nodes: list[onnx.NodeProto] = []
    for node in g.node:
        if is_geglu(node):
            w = _expand(node, inits)
            nodes.extend(w.nodes)
            g.initializer.extend(w.inits)
        else:
            nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    if not any(o.domain in ("", "ai.onnx") for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid("", 18))  # every op written here is <= 18
    return out
