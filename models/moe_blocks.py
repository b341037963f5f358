"""MoE blocks written as ONNX: ORT's fused ``MoE``/``QMoE`` and moec's decomposed standard-op form.

The decomposed form (what :mod:`moec.compiler.frontend.decomposed` recognizes), for ``x [T, d]``::

    logits = MatMul(x, Wr[d, E]) (+ router bias)
    scores = Softmax(logits, axis=-1) | Sigmoid(logits)
    choice = scores (+ score_bias)
    [groups: gs = ReduceMax(Reshape(choice, [-1, G, E/G]), axis 2)  (or sum of TopK-2 values)
             gi = TopK(gs, topk_group).indices
             keep = Reshape(Expand(Unsqueeze(ReduceSum(OneHot(gi, G), axis 1), 2), [1, 1, E/G]), [-1, E])
             choice = Where(Cast(keep, bool), choice, fill)]
    ids = TopK(choice, k).indices
    gates = GatherElements(scores, ids, axis=1)
    [gates = gates / (ReduceSum(gates, axis 1) + eps)] [gates = gates * routed_scaling]
    dense = ScatterElements(ConstantOfShape(Shape(scores)), ids, gates, axis=1)       # [T, E]
    h = act(x @ W_gate[E, d, F] (+ b)) * (x @ W_up[E, d, F] (+ b))                     # [E, T, F]
    out = h @ W_down[E, F, d] (+ b)                                                     # [E, T, d]
    y = ReduceSum(out * Unsqueeze(Transpose(dense), 2), axis 0)  (+ shared experts)

Every expert computes every token (exact: unrouted tokens get gate weight 0); it is a
reference form, not a fast one.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from moec.ir.moe import MoESpec
from moec.models.builder import OnnxBuilder

__all__ = ["MoESpec"]  # defined with the canonical layer, in ir/moe.py


# --- dense pieces -------------------------------------------------------------------------------


def layer_norm(b: OnnxBuilder, x: str, d: int, name: str) -> str:
    scale = (
        b.weight(f"{name}.scale", (d,), scale=0.1)
        if b.shape_only
        else b.array(f"{name}.scale", (1.0 + 0.1 * b.rng.standard_normal(d)).astype(np.float32))
    )
    return b.op("LayerNormalization", [x, scale], name=name, axis=-1, epsilon=1e-5)


def activation(b: OnnxBuilder, z: str, kind: str, name: str) -> str:
    if kind == "silu":
        return b.op("Mul", [z, b.op("Sigmoid", [z], name=f"{name}.sigmoid")], name=f"{name}.silu")
    if kind == "relu":
        return b.op("Relu", [z], name=f"{name}.relu")
    if kind == "gelu":
        inner = b.op(
            "Mul", [z, b.const("inv_sqrt2", np.float32(1 / math.sqrt(2)))], name=f"{name}.scale"
        )
        erf = b.op("Erf", [inner], name=f"{name}.erf")
        one = b.op("Add", [erf, b.const("one", np.float32(1.0))], name=f"{name}.add")
        half = b.op("Mul", [z, b.const("half", np.float32(0.5))], name=f"{name}.half")
        return b.op("Mul", [half, one], name=f"{name}.gelu")
    raise ValueError(f"decomposed form has no activation {kind!r}")


def dense_ffn(b: OnnxBuilder, x: str, d: int, F: int, name: str, act: str = "silu") -> str:
    """A gated dense FFN (the dense layers of DeepSeek models, moec's tiny dense layer)."""
    gate = b.op("MatMul", [x, b.weight(f"{name}.w_gate", (d, F))], name=f"{name}.gate")
    up = b.op("MatMul", [x, b.weight(f"{name}.w_up", (d, F))], name=f"{name}.up")
    h = b.op("Mul", [activation(b, gate, act, name), up], name=f"{name}.mul")
    return b.op("MatMul", [h, b.weight(f"{name}.w_down", (F, d))], name=f"{name}.down")


def _router(b: OnnxBuilder, x: str, s: MoESpec, name: str) -> str:
    logits = b.op(
        "MatMul", [x, b.weight(f"{name}.router", (s.hidden, s.experts))], name=f"{name}.router"
    )
    if s.router_bias:
        bias = b.weight(f"{name}.router_b", (s.experts,), scale=0.1)
        logits = b.op("Add", [logits, bias], name=f"{name}.router_bias")
    return logits


# --- ORT fused ------------------------------------------------------------------------------


def fused_moe(
    b: OnnxBuilder,
    x: str,
    s: MoESpec,
    name: str,
    *,
    swiglu: tuple[float, float, float | None] | None = None,
) -> str:
    """Router MatMul + ``com.microsoft.MoE``. Gated silu is written as swiglu(alpha=1, beta=0).

    ``swiglu=(alpha, beta, limit)`` writes a true SwiGLU instead.
    """
    if (
        s.scoring != "softmax"
        or s.n_group > 1
        or s.score_bias
        or s.routed_scaling != 1.0
        or s.num_shared
    ):
        raise ValueError(
            "com.microsoft.MoE expresses softmax routing without groups or shared experts"
        )
    logits = _router(b, x, s, name)
    E, d, F = s.experts, s.hidden, s.ffn
    gated = s.gated or swiglu is not None
    fc1 = b.weight(f"{name}.fc1", (E, (2 if gated else 1) * F, d), scale=1 / math.sqrt(d))
    fc2 = b.weight(f"{name}.fc2", (E, d, F), scale=1 / math.sqrt(F))
    b1 = b.weight(f"{name}.fc1_b", (E, (2 if gated else 1) * F), scale=0.1) if s.expert_bias else ""
    b2 = b.weight(f"{name}.fc2_b", (E, d), scale=0.1) if s.expert_bias else ""
    attrs: dict[str, object] = {"k": s.top_k, "normalize_routing_weights": int(s.normalize_topk)}
    if gated:
        if s.activation != "silu" and swiglu is None:
            raise ValueError("fused gated experts are SwiGLU (silu) only on CPU")
        alpha, beta, limit = swiglu if swiglu is not None else (1.0, 0.0, None)
        attrs.update(
            activation_type="swiglu", swiglu_fusion=1, activation_alpha=alpha, activation_beta=beta
        )
        if limit is not None:
            attrs["swiglu_limit"] = limit
    else:
        attrs["activation_type"] = s.activation
    return b.op("MoE", [x, logits, fc1, b1, fc2, b2], name=name, domain="com.microsoft", **attrs)


def quantize(
    w: np.ndarray, bits: int, block: int | None, zero_points: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Float [E, N, K] -> (packed uint8 [E, N, K*bits/8], scales, packed zero points or None)."""
    E, N, K = w.shape
    B = block or K
    wb = w.reshape(E, N, K // B, B).astype(np.float64)
    qmax = 2**bits - 1
    if zero_points:
        lo, hi = wb.min(-1, keepdims=True), wb.max(-1, keepdims=True)
        scale = np.maximum(hi - lo, 1e-8) / qmax
        zp = np.clip(np.round(-lo / scale), 0, qmax)
    else:
        scale = np.maximum(np.abs(wb).max(-1, keepdims=True), 1e-8) / (2 ** (bits - 1) - 1)
        zp = np.full_like(scale, 2 ** (bits - 1))
    q = np.clip(np.round(wb / scale) + zp, 0, qmax).astype(np.uint8).reshape(E, N, K)
    scales = scale[..., 0].astype(np.float32)
    zps = zp[..., 0].astype(np.uint8)
    if block is None:
        scales, zps = scales[..., 0], zps[..., 0]
    packed = _pack4(q) if bits == 4 else q
    zpacked = (_pack4(zps) if bits == 4 else zps) if zero_points else None
    return packed, scales, zpacked


def _pack4(q: np.ndarray) -> np.ndarray:
    if q.shape[-1] % 2:
        q = np.concatenate([q, np.zeros((*q.shape[:-1], 1), np.uint8)], axis=-1)
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def fused_qmoe(
    b: OnnxBuilder, x: str, s: MoESpec, name: str, *, bits: int, block: int | None = None,
    zero_points: bool = False, swiglu: tuple[float, float, float | None] | None = None,
) -> str:  # fmt: skip
    """Router MatMul + ``com.microsoft.QMoE`` with seeded weights quantized to ``bits``."""
    logits = _router(b, x, s, name)
    E, d, F = s.experts, s.hidden, s.ffn
    gated = s.gated or swiglu is not None
    w1 = (b.rng.standard_normal((E, (2 if gated else 1) * F, d)) / math.sqrt(d)).astype(np.float32)
    w2 = (b.rng.standard_normal((E, d, F)) / math.sqrt(F)).astype(np.float32)
    ins = [x, logits]
    zps: list[str] = []
    for tag, w in (("fc1", w1), ("fc2", w2)):
        q, sc, zp = quantize(w, bits, block, zero_points)
        ins += [b.array(f"{name}.{tag}_q", q), b.array(f"{name}.{tag}_scales", sc)]
        bias = b.weight(f"{name}.{tag}_b", (E, w.shape[1]), scale=0.1) if s.expert_bias else ""
        ins.append(bias)
        if zp is not None:
            zps.append(b.array(f"{name}.{tag}_zp", zp))
    if zps:
        ins += ["", "", "", zps[0], zps[1]]
    attrs: dict[str, object] = {
        "k": s.top_k, "normalize_routing_weights": int(s.normalize_topk),
        "expert_weight_bits": bits, "weights_prepacked": 0,
    }  # fmt: skip
    if block:
        attrs["block_size"] = block
    if gated:
        alpha, beta, limit = swiglu if swiglu is not None else (1.0, 0.0, None)
        attrs.update(
            activation_type="swiglu", swiglu_fusion=1, activation_alpha=alpha, activation_beta=beta
        )
        if limit is not None:
            attrs["swiglu_limit"] = limit
    else:
        attrs["activation_type"] = s.activation
    return b.op("QMoE", ins, name=name, domain="com.microsoft", **attrs)


# --- decomposed -----------------------------------------------------------------------------


def _group_mask(b: OnnxBuilder, choice: str, s: MoESpec, name: str) -> str:
    G, per = s.n_group, s.experts // s.n_group
    grouped = b.op(
        "Reshape",
        [choice, b.const("shape", np.array([-1, G, per], np.int64))],
        name=f"{name}.groups",
    )
    if s.group_score == "top2_sum":
        top2 = b.node(
            "TopK",
            [grouped, b.const("k", np.array([2], np.int64))],
            name=f"{name}.group_top2",
            outputs=2,
            axis=-1,
        )[0]
        gscore = b.op(
            "ReduceSum",
            [top2, b.const("axes", np.array([2], np.int64))],
            name=f"{name}.group_score",
            keepdims=0,
        )
    else:
        gscore = b.op(
            "ReduceMax",
            [grouped, b.const("axes", np.array([2], np.int64))],
            name=f"{name}.group_score",
            keepdims=0,
        )
    gidx = b.node(
        "TopK",
        [gscore, b.const("k", np.array([s.topk_group], np.int64))],
        name=f"{name}.group_topk",
        outputs=2,
        axis=-1,
    )[1]
    onehot = b.op(
        "OneHot",
        [
            gidx,
            b.const("depth", np.array(G, np.int64)),
            b.const("onoff", np.array([0.0, 1.0], np.float32)),
        ],
        name=f"{name}.group_onehot",
        axis=-1,
    )
    keep = b.op(
        "ReduceSum",
        [onehot, b.const("axes", np.array([1], np.int64))],
        name=f"{name}.group_keep",
        keepdims=0,
    )
    keep3 = b.op(
        "Unsqueeze", [keep, b.const("axes", np.array([2], np.int64))], name=f"{name}.group_keep3"
    )
    wide = b.op(
        "Expand",
        [keep3, b.const("shape", np.array([1, 1, per], np.int64))],
        name=f"{name}.group_expand",
    )
    mask = b.op(
        "Reshape",
        [wide, b.const("shape", np.array([-1, s.experts], np.int64))],
        name=f"{name}.group_mask",
    )
    cond = b.op("Cast", [mask], name=f"{name}.group_bool", to=9)
    fill = b.const("fill", np.float32(0.0) if s.score_bias else np.float32(-np.inf))
    return b.op("Where", [cond, choice, fill], name=f"{name}.group_select")


def _expert_linear(
    b: OnnxBuilder, x: str, s: MoESpec, name: str, tag: str, rows: int, cols: int, bias_cols: int
) -> str:
    E = s.experts
    y = b.op(
        "MatMul",
        [x, b.weight(f"{name}.{tag}", (E, rows, cols), scale=1 / math.sqrt(rows))],
        name=f"{name}.{tag}",
    )
    if s.expert_bias:
        bias = b.weight(f"{name}.b_{tag[2:]}", (E, 1, bias_cols), scale=0.1)
        y = b.op("Add", [y, bias], name=f"{name}.{tag}_bias")
    return y


#: Phi-3.5-MoE's router jitter: the sparsemixer's band is 2 * eps around the max logit.
SPARSEMIXER_EPS = 0.01


def _sparsemixer_pick(b: OnnxBuilder, logits: str, candidates: str, name: str) -> tuple[str, str]:
    """One sparsemixer pick (:func:`moec.ir.moe.sparsemixer`), as transformers exports it."""
    axes = b.const("axes", np.array([-1], np.int64))
    best = b.op("ReduceMax", [candidates, axes], name=f"{name}.best", keepdims=1)
    pick = b.op("ArgMax", [candidates], name=f"{name}.pick", axis=-1, keepdims=1)
    factor = b.op("Max", [b.op("Abs", [logits], name=f"{name}.abs"), best], name=f"{name}.factor")
    gap = b.op("Div", [b.op("Sub", [best, logits], name=f"{name}.gap"), factor], name=f"{name}.rel")
    far = b.op(
        "Greater", [gap, b.const("band", np.float32(2 * SPARSEMIXER_EPS))], name=f"{name}.far"
    )
    masked = b.op(
        "Where", [far, b.const("ninf", np.float32(-np.inf)), candidates], name=f"{name}.mask"
    )
    probs = b.op("Softmax", [masked], name=f"{name}.softmax", axis=-1)
    gate = b.op("GatherElements", [probs, pick], name=f"{name}.gate", axis=-1)
    return pick, gate


def _sparsemixer_routing(b: OnnxBuilder, logits: str, name: str) -> tuple[str, str]:
    """Sparsemixer ids and gates [T, 2]: the arg-max pick, then the best of the rest."""
    first, g1 = _sparsemixer_pick(b, logits, logits, f"{name}.sm1")
    fill = b.op(
        "ConstantOfShape", [b.op("Shape", [first], name=f"{name}.sm_shape")], name=f"{name}.sm_fill",
        value=onnx.helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [-np.inf]),
    )  # fmt: skip
    rest = b.op("ScatterElements", [logits, first, fill], name=f"{name}.sm_drop", axis=-1)
    second, g2 = _sparsemixer_pick(b, logits, rest, f"{name}.sm2")
    ids = b.op("Concat", [first, second], name=f"{name}.sm_ids", axis=-1)
    gates = b.op("Concat", [g1, g2], name=f"{name}.sm_gates", axis=-1)
    return ids, gates


def decomposed_moe(b: OnnxBuilder, x: str, s: MoESpec, name: str) -> str:
    """The decomposed standard-op MoE block described in the module docstring."""
    E = s.experts
    logits = _router(b, x, s, name)
    if s.scoring == "sparsemixer":
        ids, gates = _sparsemixer_routing(b, logits, name)
        return _experts_of_dispatch(b, x, s, name, logits, ids, gates)
    if s.scoring == "softmax":
        scores = b.op("Softmax", [logits], name=f"{name}.softmax", axis=-1)
    else:
        scores = b.op("Sigmoid", [logits], name=f"{name}.sigmoid")
    choice = scores
    if s.score_bias:
        bias = b.weight(f"{name}.score_bias", (E,), scale=0.05)
        choice = b.op("Add", [scores, bias], name=f"{name}.score_bias")
    if s.n_group > 1:
        choice = _group_mask(b, choice, s, name)
    ids = b.node(
        "TopK",
        [choice, b.const("k", np.array([s.top_k], np.int64))],
        name=f"{name}.topk",
        outputs=2,
        axis=-1,
    )[1]
    gates = b.op("GatherElements", [scores, ids], name=f"{name}.gates", axis=1)
    if s.normalize_topk:
        total = b.op(
            "ReduceSum",
            [gates, b.const("axes", np.array([1], np.int64))],
            name=f"{name}.gate_sum",
            keepdims=1,
        )
        if s.scoring == "sigmoid":
            total = b.op("Add", [total, b.const("eps", np.float32(1e-20))], name=f"{name}.gate_eps")
        gates = b.op("Div", [gates, total], name=f"{name}.gate_norm")
    if s.routed_scaling != 1.0:
        gates = b.op(
            "Mul",
            [gates, b.const("scaling", np.float32(s.routed_scaling))],
            name=f"{name}.gate_scale",
        )
    return _experts_of_dispatch(b, x, s, name, scores, ids, gates)


def _experts_of_dispatch(
    b: OnnxBuilder, x: str, s: MoESpec, name: str, scores: str, ids: str, gates: str
) -> str:
    """The dense dispatch matrix from the routing, every expert on every token, the weighted
    sum over experts, and the shared experts."""
    d, F = s.hidden, s.ffn
    zeros = b.op(
        "ConstantOfShape", [b.op("Shape", [scores], name=f"{name}.shape")], name=f"{name}.zeros"
    )
    dense = b.op("ScatterElements", [zeros, ids, gates], name=f"{name}.dispatch", axis=1)
    up = _expert_linear(b, x, s, name, "w_up", d, F, F)
    if s.gated:
        gate = _expert_linear(b, x, s, name, "w_gate", d, F, F)
        h = b.op("Mul", [activation(b, gate, s.activation, f"{name}.act"), up], name=f"{name}.glu")
    else:
        h = activation(b, up, s.activation, f"{name}.act")
    out = _expert_linear(b, h, s, name, "w_down", F, d, d)
    wt = b.op("Transpose", [dense], name=f"{name}.dispatch_t", perm=[1, 0])
    wt3 = b.op(
        "Unsqueeze", [wt, b.const("axes", np.array([2], np.int64))], name=f"{name}.dispatch_3d"
    )
    weighted = b.op("Mul", [out, wt3], name=f"{name}.weighted")
    y = b.op(
        "ReduceSum",
        [weighted, b.const("axes", np.array([0], np.int64))],
        name=f"{name}.combine",
        keepdims=0,
    )
    if s.num_shared:
        Fs = s.shared_ffn
        sg = b.op("MatMul", [x, b.weight(f"{name}.sh_gate", (d, Fs))], name=f"{name}.sh_gate")
        su = b.op("MatMul", [x, b.weight(f"{name}.sh_up", (d, Fs))], name=f"{name}.sh_up")
        sh = b.op("Mul", [activation(b, sg, "silu", f"{name}.sh_act"), su], name=f"{name}.sh_glu")
        sh = b.op("MatMul", [sh, b.weight(f"{name}.sh_down", (Fs, d))], name=f"{name}.sh_down")
        if s.shared_gate:
            r = b.op("MatMul", [x, b.weight(f"{name}.sh_router", (d, 1))], name=f"{name}.sh_router")
            sh = b.op(
                "Mul",
                [sh, b.op("Sigmoid", [r], name=f"{name}.sh_gate_sigmoid")],
                name=f"{name}.sh_scale",
            )
        y = b.op("Add", [y, sh], name=f"{name}.add_shared")
    return y
