"""Recognizers for ONNX Runtime's fused ``com.microsoft.MoE`` and ``com.microsoft.QMoE``.

Semantics (ONNX Runtime 1.32 ContribOperators, checked against its CPU kernel):

- ``router_probs`` are logits: softmax over all experts, top-k, and the k weights are
  renormalized only when ``normalize_routing_weights=1`` -- except in ``QMoE``: ONNX Runtime
  1.32's CPU QMoE kernel renormalizes whatever the attribute says (measured: 0.4 relative error
  against the non-renormalized formula, 1e-7 against the renormalized one; its ``MoE`` kernel
  honours the attribute). ORT is the reference moec checks against, so a QMoE with
  ``normalize_routing_weights=0`` is lifted with ``normalize_topk=True`` and
  ``annotations.routing_note`` saying why;
- ``fc1`` is ``[E, fusion*F, d]`` (``y = x @ fc1[e].T``), ``fc2`` is ``[E, d, F]``; the canonical
  layout wants ``[E, d, F]`` / ``[E, F, d]``, so both are transposed;
- ``swiglu_fusion=1``: fc1 rows interleave (gate, linear) pairs, gate at even rows;
  ``2``: ``[gate | linear]`` halves; ``0``: gate in fc1, linear in fc3. SwiGLU is
  ``g * sigmoid(alpha * g) * (l + beta)`` with ``g = min(g, limit)``, ``l = clip(l, -limit, limit)``;
  defaults alpha=1, beta=0, no limit;
- ``gelu`` is the tanh approximation (canonical ``gelu_tanh``); ``fc3`` with another
  activation means a gated FFN ``act(fc1 x) * (fc3 x)``;
- ``geglu`` (onnxruntime-genai's Gemma-4; ORT implements it on CUDA only) is
  ``gelu_tanh(g) * l`` with fc1's (gate, linear) rows laid out as for SwiGLU (fusion 1 or 2, no
  fc3); alpha, beta and limit do not apply. ``moec check`` runs such nodes in ORT through the
  standard-op substitute of ``backends/ort/geglu.py``;
- QMoE ``quant_type='int'``: weights ``uint8`` ``[E, N, K*bits/8]`` (4-bit: element 2i in the low
  nibble), scales ``[E, N]`` (row-wise) or ``[E, N, K/block_size]``, optional zero points (packed
  like the weights); ``w = (q - zp) * scale`` with ``zp = 2**(bits-1)`` when absent. The dequantized
  weights go into the canonical float layout and ``annotations.precision`` records ``int4``/
  ``int8``. (ORT runs block-wise 8-bit experts with int8 activations, which the canonical layer
  does not model: expect ~1e-2 differences there.)

The router is recognized by dataflow: ``router_probs`` must be ``rows(x) @ W_r (+ b)`` for a
constant ``W_r`` of ``d`` rows, where ``rows(x)`` is the MoE input or any reshape of the tensor
it was reshaped from (Reshape/Flatten/Squeeze/Unsqueeze keep the row-major order, so with ``d``
as the contracted last axis logits row n is token n). Between the product and ``router_probs``
may sit reshapes, constant bias Adds and one 2-D Transpose (``logits.T = W_r.T @ x.T``); the
product is MatMul or Gemm (``transB``, ``alpha``, ``beta``, bias ``C``), its constant weight
possibly a folded Transpose of an initializer. So all of these lift, with the MoE op's x and y
keeping their (2-D or 3-D) shape::

    MoE(x[B,S,d], Reshape(MatMul(x, Wr), [-1, E]))            logits reshaped
    MoE(x[B,S,d], Gemm(Flatten(x), WrT, bias, transB=1))      tokens flattened first
    MoE(x[N,d], Transpose(Gemm(WrT, x, transB=1)))            transposed product

A router that normalizes the residual itself (``SimplifiedLayerNormalization(h; w_r) * s``
beside the node's ``SimplifiedLayerNormalization(h; w_x)``) is read as ``x * c``
(``router_norm.py``). The router nodes are lifted into the layer when nothing else uses their
results.
"""

from __future__ import annotations

import numpy as np
import onnx

from moec.compiler.frontend import fused_router, nbits, router_norm
from moec.compiler.frontend.fused_weights import (
    MOE_INPUTS,
    QMOE_INPUTS,
    declared,
    fc_bias,
    fc_weight,
    input_name,
    present,
    split_bias,
    split_rows,
    transposed,
)  # fmt: skip
from moec.compiler.frontend.nbits import dequantize  # noqa: F401 - re-exported for tests
from moec.compiler.frontend.patterns import GraphView, Lifted, Mismatch, register
from moec.ir.graph import Weight
from moec.ir.moe import MoELayer

_ACTIVATIONS = {"relu": "relu", "gelu": "gelu_tanh", "silu": "silu", "identity": "identity"}
# Annotation left on a QMoE layer whose normalize_routing_weights=0 was lifted as renormalized.
QMOE_NORMALIZE_NOTE = "ort_qmoe_renormalizes_despite_normalize_routing_weights_0"
# Annotation left on a layer whose node asks for use_sparse_mixer=1: ONNX Runtime's CPU kernel
# (1.32) ignores the attribute and routes by softmax top-k (measured; only its CUDA and WebGPU
# kernels implement the sparse mixer), and moec lifts what the CPU kernel computes, which is
# what `moec check` compares with. The HF PhiMoE export lifts as scoring=sparsemixer instead.
SPARSE_MIXER_NOTE = "ort_cpu_ignores_use_sparse_mixer"
#: Gated activations whose fc1 holds (gate, up) rows; geglu is ``gelu_tanh(gate) * up`` (ORT's
#: MoE/QMoE schema; alpha, beta and limit do not apply to it).
_GLU = ("swiglu", "geglu")


def _fc3_index(node: onnx.NodeProto) -> int:
    return (QMOE_INPUTS if node.op_type == "QMoE" else MOE_INPUTS)["fc3"]


def _unsupported(view: GraphView, node: onnx.NodeProto) -> str | None:
    a = view.attr
    if a(node, "swiglu_limit_after_activation", 0):
        return "swiglu_limit_after_activation=1 is not supported (expected 0)"
    act = a(node, "activation_type", "relu")
    if act == "geglu" and (
        int(a(node, "swiglu_fusion", 0)) not in (1, 2) or input_name(node, _fc3_index(node))
    ):
        # ORT's schema: geglu needs fused fc1 (gate, up) rows, swiglu_fusion 1 or 2, no fc3.
        return "activation_type='geglu' needs swiglu_fusion=1 or 2 and no fc3"
    if act not in (*_ACTIVATIONS, *_GLU):
        return (
            f"activation_type={act!r} is not supported "
            "(expected relu, gelu, silu, identity, swiglu or geglu)"
        )
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
        if any(input_name(node, i) for i in range(14, len(node.input))):
            return "router_weights / global or activation scales are not supported"
    return None


# Ops that only relabel a tensor's dimensions: its row-major element order is unchanged.
_LAYOUT = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


def _is_float_cast(view: GraphView, node: onnx.NodeProto) -> bool:
    return node.op_type == "Cast" and view.attr(node, "to") == onnx.TensorProto.FLOAT


def _passes_through(view: GraphView, node: onnx.NodeProto) -> bool:
    return node.op_type in _LAYOUT or _is_float_cast(view, node)


def _token_chain(view: GraphView, value: str) -> list[str]:
    """``value`` and the values it was reshaped from, back to the first computed one."""
    chain = [value]
    while (p := view.producer(chain[-1])) is not None and _passes_through(view, p):
        chain.append(p.input[0])
    return chain


def _bias_vector(c: np.ndarray, E: int, transposed: bool) -> np.ndarray | None:
    """A constant added to the logits as an ``[E]`` router bias, or None if it is not one.

    In row orientation (``[..., E]``) the constant must broadcast along the last axis only; in
    the transposed orientation (``[E, N]``) it must be ``[E, 1]``. A scalar is a bias too.
    """
    arr = np.asarray(c, np.float32)
    if arr.size == 1:
        return np.full(E, float(arr.reshape(-1)[0]), np.float32)
    if arr.size != E:
        return None
    if transposed:
        ok = arr.ndim == 2 and arr.shape == (E, 1)
    else:
        ok = arr.shape[-1] == E and all(s == 1 for s in arr.shape[:-1])
    return arr.reshape(E) if ok else None


def _folded_constant(view: GraphView, value: str, nodes: set[int]) -> np.ndarray | None:
    """A constant, or a Transpose/Identity/float Cast/Reshape of one (folded, nodes recorded)."""
    c = view.constant(value)
    if c is not None:
        return np.asarray(c)
    p = view.producer(value)
    if p is None or not (
        p.op_type in ("Transpose", "Identity", "Reshape") or _is_float_cast(view, p)
    ):
        return None
    inner = _folded_constant(view, p.input[0], nodes)
    if inner is None:
        return None
    if p.op_type == "Transpose":
        perm = view.attr(p, "perm", None)
        inner = np.transpose(inner, None if perm is None else list(perm))
    elif p.op_type == "Reshape":
        shape = view.constant(p.input[1])
        if shape is None or 0 in np.asarray(shape).tolist():
            return None
        inner = inner.reshape([int(s) for s in np.asarray(shape).reshape(-1)])
    else:
        inner = inner.astype(np.float32) if p.op_type == "Cast" else inner
    nodes.add(view.id(p))
    return inner


def _declared_shape(view: GraphView, value: str) -> tuple[int, ...] | None:
    w = view.weight(value)
    if w is None or w.data is not None:
        return None
    return tuple(int(s) for s in w.type.shape)


def _product(
    view: GraphView, p: onnx.NodeProto, transposed: bool, nodes: set[int]
) -> tuple[str, np.ndarray | None, tuple[int, int], np.ndarray | None] | str:
    """(token rows X, W [d, E] or None if declared, W's shape, Gemm bias) of the router product.

    Row orientation: ``logits = X @ W`` (MatMul, or Gemm with ``transB`` for a stored ``W.T``).
    Transposed orientation: ``logits.T = W.T @ X.T`` (Gemm ``transB=1`` of X, or MatMul with a
    ``Transpose`` of X), turned back into rows by the Transpose found above it.
    """
    if p.op_type == "MatMulNBits":
        q = nbits.nbits_product(view, p)
        return q if isinstance(q, str) else (q.x, q.w, q.shape, q.bias)
    gemm = p.op_type == "Gemm"
    trans_a = bool(view.attr(p, "transA", 0)) if gemm else False
    trans_b = bool(view.attr(p, "transB", 0)) if gemm else False
    alpha = float(view.attr(p, "alpha", 1.0)) if gemm else 1.0
    const_pos = 0 if transposed else 1
    data_pos = 1 - const_pos
    w_name, x_name = p.input[const_pos], p.input[data_pos]
    w = _folded_constant(view, w_name, nodes)
    declared = _declared_shape(view, w_name) if w is None else None
    if w is None and declared is None:
        return f"the router weight ({w_name!r}) is not a constant initializer"
    shape = tuple(w.shape) if w is not None else declared
    if shape is None or len(shape) != 2:
        return f"expected a 2-D router weight, found shape {list(shape or ())}"
    if transposed:
        # logits.T [E, N] = op(A) [E, d] @ op(B) [d, N]
        w_trans = trans_a  # op(A) = A.T: A is stored [d, E]
        if trans_b:
            x_rows = x_name
        else:
            t = view.producer(x_name)
            if (
                t is None
                or t.op_type != "Transpose"
                or list(view.attr(t, "perm", [1, 0])) != [1, 0]
            ):
                return "expected the transposed router product to read the tokens transposed"
            nodes.add(view.id(t))
            x_rows = t.input[0]
        # W [d, E] = op(A).T
        w_de = (w if w_trans else w.T) if w is not None else None
        de = shape if w_trans else shape[::-1]
    else:
        if trans_a:
            return "router Gemm with transA=1 of the tokens is not supported"
        x_rows = x_name
        w_de = (w.T if trans_b else w) if w is not None else None
        de = shape[::-1] if trans_b else shape
    if w_de is not None:
        w_de = np.asarray(w_de, np.float32) * np.float32(alpha)
    elif alpha != 1.0:
        return "router Gemm with alpha != 1 needs the router weight's values"
    bias: np.ndarray | None = None
    if gemm and len(p.input) > 2 and p.input[2]:
        c = view.constant(p.input[2])
        E = int(de[1])
        b = None if c is None else _bias_vector(c, E, transposed)
        if b is None:
            return "router Gemm bias is not a constant [E] vector"
        bias = b * np.float32(view.attr(p, "beta", 1.0))
    return x_rows, w_de, (int(de[0]), int(de[1])), bias


#: (MoE input, {router_w, router_b}, router node ids, the MatMulNBits router's node or None).
RouterMatch = tuple[str, dict[str, Weight], set[int], onnx.NodeProto | None]


def _router(view: GraphView, node: onnx.NodeProto, d: int) -> RouterMatch | str:
    """:data:`RouterMatch` of ``router_probs`` as logits, or why not."""
    return _logits_router(view, node.input[1], node.input[0], d, {view.id(node)})


def _logits_router(
    view: GraphView, value: str, x: str, d: int, owners: set[int]
) -> RouterMatch | str:
    """:data:`RouterMatch` of the router logits ``value``, or why not.

    Recognized by dataflow: the logits must be ``rows(x) @ W_r (+ b)`` for a constant
    ``W_r [d, E]``, where ``rows(x)`` is the MoE input ``x`` (or a tensor it was reshaped from,
    or a reshape of either) with ``d`` as its last axis, and any chain of Reshape/Flatten/Squeeze/
    Unsqueeze/Identity, constant-bias Adds and one 2-D Transpose may sit between the product and
    the logits. Reshapes keep the row-major element order, so logits row n is token n. A bias
    whose values are not loaded (``moec inspect`` reads no external data) is kept declared.
    Router nodes are absorbed only when nothing but them and ``owners`` reads their results.
    """
    nodes: set[int] = set()
    bias: np.ndarray | None = None
    declared_bias: tuple[int, ...] | None = None
    transposed = False
    while True:
        p = view.producer(value)
        if p is None:
            what = "a graph input" if not view.is_constant(value) else "a constant"
            return f"router_probs come from {what}, expected MatMul(x, W_router) of the MoE input"
        if p.op_type in ("MatMul", "Gemm") or (p.op_type == "MatMulNBits" and not transposed):
            break
        if _passes_through(view, p) and not (transposed and p.op_type in _LAYOUT - {"Identity"}):
            nodes.add(view.id(p))
            value = p.input[0]
            continue
        if p.op_type == "Transpose" and not transposed:
            perm = view.attr(p, "perm", None)
            ty = view.tensor_type(p.input[0])
            if perm is None:  # reverses all axes: a swap only of a known 2-D tensor
                swap = ty is not None and len(ty.shape) == 2
            else:
                swap = list(perm) == [1, 0]
            if swap:
                transposed = True
                nodes.add(view.id(p))
                value = p.input[0]
                continue
        if p.op_type == "Add":
            declared_ins = [i for i in p.input if _declared_shape(view, i) is not None]
            if len(declared_ins) == 1 and declared_bias is None and bias is None:
                declared_bias = _declared_shape(view, declared_ins[0])
                nodes.add(view.id(p))
                value = p.input[1] if p.input[0] == declared_ins[0] else p.input[0]
                continue
            consts = [i for i in p.input if view.constant(i) is not None]
            if len(consts) == 1 and declared_bias is None:
                other = p.input[1] if p.input[0] == consts[0] else p.input[0]
                c = np.asarray(view.constant(consts[0]))
                E = c.size if c.size > 1 else 0
                b = _bias_vector(c, E, transposed) if E else None
                if b is None and c.size == 1:
                    b = np.full(1, float(c.reshape(-1)[0]), np.float32)
                if b is None:
                    return (
                        f"router logits Add {view.name(p)} adds a constant of shape "
                        f"{list(c.shape)}, expected a per-expert bias"
                    )
                if bias is not None and 1 not in (b.size, bias.size) and b.size != bias.size:
                    return f"router logits Adds biases of {bias.size} and {b.size} experts"
                bias = b if bias is None else bias + b
                nodes.add(view.id(p))
                value = other
                continue
        return (
            f"router_probs come from {p.op_type} ({view.name(p)}), expected MatMul(x, W_router) "
            "of the MoE input, through reshapes and constant bias Adds only"
        )
    if transposed and p.op_type == "MatMul":
        ty = view.tensor_type(p.output[0])
        if ty is not None and len(ty.shape) != 2:
            return "expected a 2-D transposed router product"
    prod = _product(view, p, transposed, nodes)
    if isinstance(prod, str):
        return prod
    x_rows, w, (d_w, E), gemm_bias = prod
    nodes.add(view.id(p))
    if d_w != d:
        return f"the router weight contracts {d_w} features, expected the hidden size {d}"
    # The router must read the MoE input's tokens: both reshaped from the same tensor.
    x_chain = _token_chain(view, x)
    rows_chain: list[int] = []
    value = x_rows
    rescale: router_norm.RouterNorm | None = None
    while value not in x_chain:
        q = view.producer(value)
        if q is None or not _passes_through(view, q):
            norm = router_norm.match(view, value, x_chain, d)
            if isinstance(norm, str):
                return norm
            if norm is None:
                return (
                    f"the router {p.op_type} ({view.name(p)}) does not read the MoE input "
                    f"{x!r} (or a reshape of it)"
                )
            rescale = norm
            rows_chain.extend(norm.nodes)
            break
        rows_chain.append(view.id(q))
        value = q.input[0]
    nodes.update(rows_chain)
    if gemm_bias is not None:
        bias = gemm_bias if bias is None else bias + gemm_bias
    if bias is not None and bias.size not in (1, E):
        return f"router bias has {bias.size} entries, expected {E} (one per expert)"
    weights: dict[str, Weight] = {}
    if rescale is not None:
        quantizes = p.op_type == "MatMulNBits" and nbits.act_quant_block(view, p) is not None
        if quantizes or w is None or rescale.scale is None:
            c = rescale.scale
            weights["router_in_scale"] = (
                present("router_in_scale", c)
                if c is not None
                else declared("router_in_scale", (d,))
            )
        else:
            w = w * rescale.scale[:, None]  # folded: x @ (c * W) == (x * c) @ W
    weights["router_w"] = (
        present("router_w", w.T) if w is not None else declared("router_w", (E, d))
    )
    if bias is not None:
        weights["router_b"] = present("router_b", np.broadcast_to(bias, (E,)))
    elif declared_bias is not None:
        if int(np.prod(declared_bias)) not in (1, E):
            return f"router bias has shape {list(declared_bias)}, expected [{E}]"
        weights["router_b"] = declared("router_b", (E,))
    # Only absorb router nodes whose results feed nothing but this layer.
    for i in sorted(nodes):
        for out in view.nodes[i].output:
            users = {view.id(c) for c in view.consumers(out)}
            if not users <= nodes | owners or view.is_graph_output(out):
                nodes = set()
                break
        if not nodes:
            break
    return x, weights, nodes, p if p.op_type == "MatMulNBits" else None


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
    weights: dict[str, Weight] = {}
    act = a(node, "activation_type", "relu")
    fusion = int(a(node, "swiglu_fusion", 0))
    fcs: dict[str, Weight | None] = {}
    for key in ("fc1", "fc2", "fc3"):
        fc = fc_weight(view, node, key, bits, block)
        if isinstance(fc, str):
            return view.fail(node, fc)
        fcs[key] = fc
    fc1, fc2, fc3 = fcs["fc1"], fcs["fc2"], fcs["fc3"]
    if fc1 is None or fc2 is None:
        return view.fail(node, "fc1 and fc2 expert weights are required")
    b1 = fc_bias(view, node, "fc1_bias", quant)
    b2 = fc_bias(view, node, "fc2_bias", quant)
    b3 = fc_bias(view, node, "fc3_bias", quant)
    gated = act in _GLU or fc3 is not None
    if act in _GLU and fusion in (1, 2):
        gate, up = split_rows(fc1, fusion, "w_gate", "w_up")
        if b1 is not None:
            bg, bu = split_bias(b1, fusion)
            weights["b_gate"], weights["b_up"] = present("b_gate", bg), present("b_up", bu)
    elif gated:
        if fc3 is None:
            return view.fail(node, "swiglu_fusion=0 needs fc3 (linear) expert weights")
        gate, up = fc1, fc3
        if b1 is not None:
            weights["b_gate"] = present("b_gate", b1)
        if b3 is not None:
            weights["b_up"] = present("b_up", b3)
    else:
        gate, up = None, fc1
        if b1 is not None:
            weights["b_up"] = present("b_up", b1)
    if gate is not None:
        weights["w_gate"] = transposed(gate, "w_gate")
    weights["w_up"] = transposed(up, "w_up")
    weights["w_down"] = transposed(fc2, "w_down")
    if b2 is not None:
        weights["b_down"] = present("b_down", b2)
    E, d, F = (int(s) for s in weights["w_up"].type.shape)
    k = int(a(node, "k", 1))
    selected = fused_router.match(view, node)
    if isinstance(selected, str):
        return view.fail(node, selected)
    if selected is not None:
        if selected.top_k != k:
            return view.fail(node, f"the router chooses {selected.top_k} experts, the node k={k}")
        owners = selected.nodes | {view.id(node)}
        router = _logits_router(view, selected.logits, node.input[0], d, owners)
    else:
        router = _router(view, node, d)
    if isinstance(router, str):
        return view.fail(node, router)
    x, router_weights, router_nodes, nbits_router = router
    weights.update(router_weights)
    if selected is not None:
        router_nodes |= selected.nodes
        if selected.score_bias is not None:
            weights["score_bias"] = selected.score_bias
    if int(weights["router_w"].type.shape[0]) != E:
        return view.fail(
            node, f"router has {weights['router_w'].type.shape[0]} experts, fc1 has {E}"
        )
    normalize = bool(a(node, "normalize_routing_weights", 0)) or selected is not None
    if quant and not normalize:
        # ORT 1.32's CPU QMoE renormalizes whatever the attribute says; ORT is the reference.
        normalize = True
    layer = MoELayer(
        name=view.name(node),
        num_experts=E,
        top_k=k,
        hidden=d,
        ffn=F,
        weights=weights,
        scoring=selected.scoring if selected is not None else "softmax",
        normalize_topk=normalize,
        normalize_eps=selected.normalize_eps if selected is not None else None,
        activation={"swiglu": "swiglu", "geglu": "gelu_tanh"}.get(act) or _ACTIVATIONS[act],
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
        if not a(node, "normalize_routing_weights", 0) and selected is None:
            layer.annotations.routing_note = QMOE_NORMALIZE_NOTE
        layer.annotations.precision = f"int{bits}"
        if block:
            layer.annotations.quant_block = int(block)
            if bits == 8:  # ORT's CPU kernel has no float path for these: int8 activations
                layer.act_quant_block = int(block)
    if fused_router.half_product(view, router_nodes):
        layer.annotations.router_precision = "fp16"
        layer.router_logits_fp16 = fused_router.casts_half_logits_up(view, router_nodes)
    if nbits_router is not None:
        layer.router_act_quant_block = nbits.act_quant_block(view, nbits_router)
        layer.annotations.router_precision = f"int{int(a(nbits_router, 'bits', 4))}"
    if a(node, "use_sparse_mixer", 0):
        note = layer.annotations.routing_note
        layer.annotations.routing_note = (
            SPARSE_MIXER_NOTE if note is None else f"{note};{SPARSE_MIXER_NOTE}"
        )
    layer.annotations.source = f"com.microsoft.{node.op_type}"
    try:
        layer.verify()
    except Exception as err:  # noqa: BLE001 - report as a mismatch at this node
        return view.fail(node, f"inconsistent expert weights ({err})")
    output = selected.output if selected is not None and selected.output else node.output[0]
    return Lifted(layer, x, output, frozenset(router_nodes | {view.id(node)}))
