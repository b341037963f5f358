"""Recognizers for ONNX Runtime's fused ``com.microsoft.MoE`` and ``com.microsoft.QMoE``.

Semantics (ONNX Runtime 1.32 ContribOperators, checked against its CPU kernel):

- ``router_probs`` are logits: softmax over all experts, top-k, and the k weights are
  renormalized only when ``normalize_routing_weights=1``;
- ``fc1`` is ``[E, fusion*F, d]`` (``y = x @ fc1[e].T``), ``fc2`` is ``[E, d, F]``; the canonical
  layout wants ``[E, d, F]`` / ``[E, F, d]``, so both are transposed;
- ``swiglu_fusion=1``: fc1 rows interleave (gate, linear) pairs, gate at even rows;
  ``2``: ``[gate | linear]`` halves; ``0``: gate in fc1, linear in fc3. SwiGLU is
  ``g * sigmoid(alpha * g) * (l + beta)`` with ``g = min(g, limit)``, ``l = clip(l, -limit, limit)``;
  defaults alpha=1, beta=0, no limit;
- ``gelu`` is the tanh approximation (canonical ``gelu_tanh``); ``fc3`` with another
  activation means a gated FFN ``act(fc1 x) * (fc3 x)``;
- QMoE ``quant_type='int'``: weights ``uint8`` ``[E, N, K*bits/8]`` (4-bit: element 2i in the low
  nibble), scales ``[E, N]`` (row-wise) or ``[E, N, K/block_size]``, optional zero points (packed
  like the weights); ``w = (q - zp) * scale`` with ``zp = 2**(bits-1)`` when absent. The dequantized
  weights go into the canonical float layout and ``annotations["precision"]`` records ``int4``/
  ``int8``. (ORT runs block-wise 8-bit experts with int8 activations, which the canonical layer
  does not model: expect ~1e-2 differences there.)

The router: ``router_probs`` must be ``x @ Wr`` (MatMul, or Gemm, optionally plus a constant
bias) of the MoE input with a constant ``Wr``; those nodes are lifted into the layer when nothing
else uses their result.
"""

from __future__ import annotations

import numpy as np
import onnx

from moec.compiler.frontend.patterns import GraphView, Lifted, Mismatch, register
from moec.ir.graph import TensorType, Weight
from moec.ir.moe import MoELayer

_ACTIVATIONS = {"relu": "relu", "gelu": "gelu_tanh", "silu": "silu", "identity": "identity"}
_QMOE = {"fc1": 2, "fc1_scales": 3, "fc1_bias": 4, "fc2": 5, "fc2_scales": 6, "fc2_bias": 7,
         "fc3": 8, "fc3_scales": 9, "fc3_bias": 10, "fc1_zp": 11, "fc2_zp": 12, "fc3_zp": 13}  # fmt: skip
_MOE = {"fc1": 2, "fc1_bias": 3, "fc2": 4, "fc2_bias": 5, "fc3": 6, "fc3_bias": 7}


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if index < len(node.input) else ""


def _unsupported(view: GraphView, node: onnx.NodeProto) -> str | None:
    a = view.attr
    if a(node, "use_sparse_mixer", 0):
        return "use_sparse_mixer=1 is not supported (expected 0: softmax top-k routing)"
    if a(node, "swiglu_limit_after_activation", 0):
        return "swiglu_limit_after_activation=1 is not supported (expected 0)"
    act = a(node, "activation_type", "relu")
    if act not in (*_ACTIVATIONS, "swiglu"):
        return f"activation_type={act!r} is not supported (expected relu, gelu, silu, identity or swiglu)"
    if node.op_type == "QMoE":
        if a(node, "quant_type", "int") != "int":
            return f"quant_type={a(node, 'quant_type')!r} is not supported (expected 'int')"
        bits = a(node, "expert_weight_bits", 4)
        if bits not in (4, 8):
            return f"expert_weight_bits={bits} is not supported (expected 4 or 8)"
        for key in ("fc1_expert_weight_bits", "fc2_expert_weight_bits", "fc3_expert_weight_bits"):
            if a(node, key, bits) != bits:
                return f"{key} differing from expert_weight_bits is not supported"
        if a(node, "weights_prepacked", -1) == 1:
            return "weights_prepacked=1 is not supported (expected raw [E, N, K/pack] weights)"
        if any(_input(node, i) for i in range(14, len(node.input))):
            return "router_weights / global or activation scales are not supported"
    return None


def _router(view: GraphView, node: onnx.NodeProto) -> tuple[str, dict[str, Weight], set[int]] | str:
    """(x, {router_w, router_b}, router node ids) from the logits' producer, or why not."""
    x = node.input[0]
    logits = node.input[1]
    bias: np.ndarray | None = None
    nodes: set[int] = set()
    p = view.producer(logits)
    if p is not None and p.op_type == "Add":
        const = [i for i in p.input if view.constant(i) is not None]
        other = [i for i in p.input if view.constant(i) is None]
        if len(const) == 1 and len(other) == 1:
            bias = np.asarray(view.constant(const[0]), np.float32).reshape(-1)
            nodes.add(view.id(p))
            p = view.producer(other[0])
    if p is None or p.op_type not in ("MatMul", "Gemm"):
        found = p.op_type if p is not None else "a graph input"
        return f"router_probs come from {found}, expected MatMul(x, W_router) of the MoE input"
    if p.input[0] != x:
        return "the router MatMul does not read the MoE input"
    w = view.weight(p.input[1])
    if w is None:
        return "the router weight is not a constant initializer"
    nodes.add(view.id(p))
    transposed = p.op_type == "Gemm" and view.attr(p, "transB", 0) == 1
    if p.op_type == "Gemm":
        if view.attr(p, "transA", 0) or view.attr(p, "alpha", 1.0) != 1.0:
            return "router Gemm with transA or alpha != 1 is not supported"
        if len(p.input) > 2 and p.input[2]:
            c = view.constant(p.input[2])
            if c is None or view.attr(p, "beta", 1.0) != 1.0:
                return "router Gemm bias is not a constant"
            bias = np.asarray(c, np.float32).reshape(-1) + (bias if bias is not None else 0.0)
    weights: dict[str, Weight] = {}
    if w.data is not None:
        arr = np.asarray(w.data, np.float32)
        weights["router_w"] = _present("router_w", arr if transposed else arr.T)
    else:
        d, E = w.type.shape if not transposed else w.type.shape[::-1]
        weights["router_w"] = _declared("router_w", (int(E), int(d)))
    if bias is not None:
        weights["router_b"] = _present("router_b", bias)
    # Only absorb router nodes whose results feed nothing but this layer.
    for i in sorted(nodes):
        for out in view.nodes[i].output:
            users = {view.id(c) for c in view.consumers(out)}
            if not users <= nodes | {view.id(node)} or view.is_graph_output(out):
                nodes = set()
                break
    return x, weights, nodes


def _present(name: str, arr: np.ndarray) -> Weight:
    a = np.ascontiguousarray(arr, dtype=np.float32)
    return Weight(name, TensorType("f32", tuple(int(s) for s in a.shape)), a)


def _declared(name: str, shape: tuple[int, ...]) -> Weight:
    return Weight(name, TensorType("f32", shape))


def _unpack4(packed: np.ndarray) -> np.ndarray:
    lo = packed & 0x0F
    hi = packed >> 4
    return np.stack([lo, hi], axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def dequantize(
    q: np.ndarray, scales: np.ndarray, zp: np.ndarray | None, bits: int, block: int | None
) -> np.ndarray:
    """QMoE int weights ``[E, N, K*bits/8]`` -> float ``[E, N, K]``."""
    vals = _unpack4(q) if bits == 4 else q
    vals = vals.astype(np.float32)
    E, N, K = vals.shape
    nblocks = K // block if block else 1
    s = np.asarray(scales, np.float32).reshape(E, N, nblocks)
    if zp is None:
        z = np.full((E, N, nblocks), 2 ** (bits - 1), np.float32)
    else:
        zv = _unpack4(zp) if bits == 4 else zp
        z = zv.reshape(E, N, -1)[:, :, :nblocks].astype(np.float32)
    blk = vals.reshape(E, N, nblocks, K // nblocks)
    return ((blk - z[..., None]) * s[..., None]).reshape(E, N, K)


def _fc(
    view: GraphView, node: onnx.NodeProto, which: str, bits: int | None, block: int | None
) -> Weight | None | str:
    """An fc weight [E, N, K] as float (dequantized for QMoE), declared, None if absent."""
    idx = (_QMOE if bits else _MOE)[which]
    name = _input(node, idx)
    if not name:
        return None
    w = view.weight(name)
    if w is None:
        return f"{which} weight {name!r} is not a constant initializer"
    if bits is None:
        if w.data is None:
            return w
        return _present(which, np.asarray(w.data, np.float32))
    E, N, Kp = (int(s) for s in w.type.shape)
    K = Kp * 8 // bits
    if w.data is None:
        return _declared(which, (E, N, K))
    scales = view.constant(_input(node, _QMOE[f"{which}_scales"]))
    if scales is None:
        return f"{which}_scales missing or not constant (needed to dequantize {bits}-bit weights)"
    zp_name = _input(node, _QMOE[f"{which}_zp"])
    zp = view.constant(zp_name) if zp_name else None
    return _present(which, dequantize(np.asarray(w.data), scales, zp, bits, block))


def _bias(view: GraphView, node: onnx.NodeProto, which: str, quant: bool) -> np.ndarray | None:
    name = _input(node, (_QMOE if quant else _MOE)[which])
    if not name:
        return None
    c = view.constant(name)
    return None if c is None else np.asarray(c, np.float32)


def _transpose(w: Weight, key: str) -> Weight:
    if w.data is None:
        E, N, K = (int(s) for s in w.type.shape)
        return _declared(key, (E, K, N))
    return _present(key, np.transpose(w.data, (0, 2, 1)))


def _split_rows(w: Weight, fusion: int, key_a: str, key_b: str) -> tuple[Weight, Weight]:
    """Fused fc1 [E, 2F, d] -> (gate, linear) [E, F, d] by swiglu_fusion layout."""
    E, N, K = (int(s) for s in w.type.shape)
    if w.data is None:
        return _declared(key_a, (E, N // 2, K)), _declared(key_b, (E, N // 2, K))
    if fusion == 1:
        return _present(key_a, w.data[:, 0::2]), _present(key_b, w.data[:, 1::2])
    return _present(key_a, w.data[:, : N // 2]), _present(key_b, w.data[:, N // 2 :])


def _split_bias(b: np.ndarray, fusion: int) -> tuple[np.ndarray, np.ndarray]:
    if fusion == 1:
        return b[:, 0::2], b[:, 1::2]
    half = b.shape[1] // 2
    return b[:, :half], b[:, half:]


@register("ort-fused-moe", anchors=("MoE", "QMoE"))
def recognize_fused(view: GraphView, node: onnx.NodeProto) -> Lifted | Mismatch | None:
    """com.microsoft.MoE / QMoE -> the canonical layer (router MatMul lifted in)."""
    if node.domain != "com.microsoft":
        return None
    quant = node.op_type == "QMoE"
    why = _unsupported(view, node)
    if why:
        return view.fail(node, why)
    a = view.attr
    bits = int(a(node, "expert_weight_bits", 4)) if quant else None
    block = a(node, "block_size", None) if quant else None
    router = _router(view, node)
    if isinstance(router, str):
        return view.fail(node, router)
    x, weights, router_nodes = router
    act = a(node, "activation_type", "relu")
    fusion = int(a(node, "swiglu_fusion", 0))
    fcs: dict[str, Weight | None] = {}
    for key in ("fc1", "fc2", "fc3"):
        fc = _fc(view, node, key, bits, block)
        if isinstance(fc, str):
            return view.fail(node, fc)
        fcs[key] = fc
    fc1, fc2, fc3 = fcs["fc1"], fcs["fc2"], fcs["fc3"]
    if fc1 is None or fc2 is None:
        return view.fail(node, "fc1 and fc2 expert weights are required")
    b1 = _bias(view, node, "fc1_bias", quant)
    b2 = _bias(view, node, "fc2_bias", quant)
    b3 = _bias(view, node, "fc3_bias", quant)
    gated = act == "swiglu" or fc3 is not None
    if act == "swiglu" and fusion in (1, 2):
        gate, up = _split_rows(fc1, fusion, "w_gate", "w_up")
        if b1 is not None:
            bg, bu = _split_bias(b1, fusion)
            weights["b_gate"], weights["b_up"] = _present("b_gate", bg), _present("b_up", bu)
    elif gated:
        if fc3 is None:
            return view.fail(node, "swiglu_fusion=0 needs fc3 (linear) expert weights")
        gate, up = fc1, fc3
        if b1 is not None:
            weights["b_gate"] = _present("b_gate", b1)
        if b3 is not None:
            weights["b_up"] = _present("b_up", b3)
    else:
        gate, up = None, fc1
        if b1 is not None:
            weights["b_up"] = _present("b_up", b1)
    if gate is not None:
        weights["w_gate"] = _transpose(gate, "w_gate")
    weights["w_up"] = _transpose(up, "w_up")
    weights["w_down"] = _transpose(fc2, "w_down")
    if b2 is not None:
        weights["b_down"] = _present("b_down", b2)
    E, d, F = (int(s) for s in weights["w_up"].type.shape)
    k = int(a(node, "k", 1))
    if int(weights["router_w"].type.shape[0]) != E:
        return view.fail(
            node, f"router has {weights['router_w'].type.shape[0]} experts, fc1 has {E}"
        )
    layer = MoELayer(
        name=view.name(node),
        num_experts=E,
        top_k=k,
        hidden=d,
        ffn=F,
        weights=weights,
        scoring="softmax",
        normalize_topk=bool(a(node, "normalize_routing_weights", 0)),
        activation="swiglu" if act == "swiglu" else _ACTIVATIONS[act],
        gated=gated,
    )
    if act == "swiglu":
        alpha = float(a(node, "activation_alpha", 1.0))
        beta = float(a(node, "activation_beta", 0.0))
        lim = a(node, "swiglu_limit", None)
        if (alpha, beta, lim) == (1.0, 0.0, None):
            layer.activation = "silu"  # g * sigmoid(g) * l is exactly a gated silu
        else:
            layer.swiglu_alpha, layer.swiglu_beta = alpha, beta
            layer.swiglu_limit = None if lim is None else float(lim)
    if quant:
        layer.annotations["precision"] = f"int{bits}"
        if block:
            layer.annotations["quant_block"] = int(block)
    layer.annotations["source"] = f"com.microsoft.{node.op_type}"
    try:
        layer.verify()
    except Exception as err:  # noqa: BLE001 - report as a mismatch at this node
        return view.fail(node, f"inconsistent expert weights ({err})")
    return Lifted(layer, x, node.output[0], frozenset(router_nodes | {view.id(node)}))
