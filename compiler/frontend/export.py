"""Writing the graph IR back to ONNX, each MoE layer as ONNX Runtime's ``com.microsoft.MoE``.

Ordinary ops are written as they are. An MoE layer becomes: the router ``MatMul(x, router_w.T)``
(+ bias), a ``com.microsoft.MoE`` node (fc1 ``[E, F or 2F, d]``, gated layers as interleaved
SwiGLU: gated silu is SwiGLU with alpha=1, beta=0), and shared experts as standard ops added to
its output. Routed scaling folds into fc2 (the expert output is linear in fc2 and its bias).
Not expressible (an error naming the layer): sigmoid scoring, score-correction bias, expert
groups, shared experts scored with the routed ones, erf-GELU or gated non-silu experts.

Per-expert precision is the hook for later work: :data:`EXPERT_WRITERS` maps a layer's
``annotations.precision`` to a writer (``"int4"`` -> a QMoE writer); layers without a
registered writer are written in float, which is exact for the canonical (dequantized) weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from moec.ir.errors import ModelError
from moec.ir.graph import Module, Op, TensorType, Weight
from moec.ir.moe import MoELayer

_ELEM = {
    "f32": TensorProto.FLOAT, "f64": TensorProto.DOUBLE, "f16": TensorProto.FLOAT16,
    "bf16": TensorProto.BFLOAT16, "i64": TensorProto.INT64, "i32": TensorProto.INT32,
    "i16": TensorProto.INT16, "i8": TensorProto.INT8, "u8": TensorProto.UINT8,
    "i4": TensorProto.INT4, "u4": TensorProto.UINT4, "bool": TensorProto.BOOL,
    "str": TensorProto.STRING,
}  # fmt: skip


class _Out:
    """Nodes and initializers being written."""

    def __init__(self, taken: set[str]) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.taken = set(taken)

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name

    def init(self, base: str, arr: np.ndarray) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op: str, ins: list[str], base: str, domain: str = "", **attrs: Any) -> str:
        out = self.fresh(base)
        self.nodes.append(helper.make_node(op, ins, [out], name=out, domain=domain, **attrs))
        return out


ExpertWriter = Callable[[_Out, MoELayer, str, str], str]
EXPERT_WRITERS: dict[str, ExpertWriter] = {}


def _a(w: Weight) -> np.ndarray:
    return np.asarray(w.array(), np.float32)


def expressible(layer: MoELayer) -> str | None:
    """Why ``layer`` cannot be a com.microsoft.MoE, or None if it can."""
    if layer.identity_experts:
        return f"{layer.identity_experts} identity experts (MoE has no expert without weights)"
    if layer.scoring != "softmax":
        return f"{layer.scoring} scoring (MoE softmaxes router logits)"
    if layer.has("score_bias"):
        return "a score-correction bias"
    if layer.n_group > 1:
        return "group-limited top-k"
    if layer.gate_softcap is not None or layer.up_softcap is not None:
        return "soft-capped experts"
    if layer.shared_in_norm:
        return "shared experts scored jointly with the routed ones (shared_in_norm)"
    if layer.activation == "gelu":
        return "erf GELU (ORT's MoE gelu is the tanh approximation)"
    if layer.gated and layer.activation not in ("silu", "swiglu"):
        return f"gated {layer.activation} experts (ORT's CPU MoE gates with SwiGLU only)"
    if not layer.weights_present:
        return "declared-only weights"
    return None


@dataclass(frozen=True)
class OrtRows:
    """A layer's expert weights in ORT's row layout, biases, and the MoE/QMoE attributes.

    Shared by the float (``com.microsoft.MoE``) and quantized (QMoE/QDQ) writers.
    """

    fc1: np.ndarray  # [E, N1, d]: interleaved (gate, up) rows for gated layers
    b1: np.ndarray | None
    fc2: np.ndarray  # [E, d, F]
    b2: np.ndarray | None
    attrs: dict[str, Any]


#: the non-gated expert activations ONNX Runtime's MoE kernels take (moec's names)
ORT_ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu", "identity")


def ort_rows(layer: MoELayer) -> OrtRows:
    E, a = layer.num_experts, layer.array
    up = np.transpose(np.asarray(a("w_up"), np.float32), (0, 2, 1))  # [E, F, d]
    attrs: dict[str, Any] = {
        "k": layer.top_k,
        "normalize_routing_weights": int(layer.normalize_topk),
    }
    b1: np.ndarray | None = None
    bu = np.asarray(a("b_up"), np.float32) if layer.has("b_up") else None
    if layer.gated:
        gate = np.transpose(np.asarray(a("w_gate"), np.float32), (0, 2, 1))
        fc1 = np.empty((E, 2 * layer.ffn, layer.hidden), np.float32)
        fc1[:, 0::2], fc1[:, 1::2] = gate, up
        if layer.has("b_gate") or bu is not None:
            b1 = np.zeros((E, 2 * layer.ffn), np.float32)
            if layer.has("b_gate"):
                b1[:, 0::2] = np.asarray(a("b_gate"), np.float32)
            if bu is not None:
                b1[:, 1::2] = bu
        attrs.update(activation_type="swiglu", swiglu_fusion=1)
        if layer.activation == "swiglu":
            attrs.update(activation_alpha=layer.swiglu_alpha, activation_beta=layer.swiglu_beta)
            if layer.swiglu_limit is not None:
                attrs["swiglu_limit"] = layer.swiglu_limit
        else:
            attrs.update(activation_alpha=1.0, activation_beta=0.0)
    else:
        if layer.activation not in ORT_ACTIVATIONS:
            raise ModelError(
                f"com.microsoft.MoE has no {layer.activation} activation (it runs "
                f"{', '.join(ORT_ACTIVATIONS)})",
                layer.name,
            )
        fc1, b1 = up, bu
        attrs["activation_type"] = "gelu" if layer.activation == "gelu_tanh" else layer.activation
    fc2 = np.transpose(np.asarray(a("w_down"), np.float32), (0, 2, 1))
    b2 = np.asarray(a("b_down"), np.float32) if layer.has("b_down") else None
    return OrtRows(fc1, b1, fc2, b2, attrs)


def _write_float_moe(out: _Out, layer: MoELayer, x: str, logits: str) -> str:
    rows = ort_rows(layer)
    scale = np.float32(layer.routed_scaling)  # folded into fc2: y = scale * sum(gate * expert)
    fc1, b1, fc2, attrs = rows.fc1, rows.b1, rows.fc2 * scale, rows.attrs
    ins = [x, logits, out.init(f"{layer.name}.fc1", fc1)]
    ins.append(out.init(f"{layer.name}.fc1_b", b1) if b1 is not None else "")
    ins.append(out.init(f"{layer.name}.fc2", fc2))
    if rows.b2 is not None:
        ins.append(out.init(f"{layer.name}.fc2_b", rows.b2 * scale))
    return out.node("MoE", ins, f"{layer.name}.experts", domain="com.microsoft", **attrs)


def _write_layer(out: _Out, op: Op) -> None:
    layer: MoELayer = op.layer
    why = expressible(layer)
    if why:
        raise ModelError(f"cannot export as com.microsoft.MoE: the layer has {why}", layer.name)
    x_in = op.inputs[0]
    if x_in is None:
        raise ModelError("moe op without input", layer.name)
    x = x_in.name
    logits = out.node(
        "MatMul",
        [x, out.init(f"{layer.name}.router_w", _a(layer.weights["router_w"]).T)],
        f"{layer.name}.router",
    )
    if layer.has("router_b"):
        logits = out.node(
            "Add",
            [logits, out.init(f"{layer.name}.router_b", _a(layer.weights["router_b"]))],
            f"{layer.name}.router_bias",
        )
    precision = layer.annotations.precision or ""
    # A per-expert list (assign-precision) selects the "mixed" writer (export_qmoe registers it).
    key = "mixed" if isinstance(precision, list) else str(precision)
    writer = EXPERT_WRITERS.get(key, _write_float_moe)
    y = writer(out, layer, x, logits)
    if layer.has_shared:
        n = layer.name
        if layer.shared_activation != "silu" or not layer.has("sh_gate"):
            raise ModelError(
                f"cannot export shared {layer.shared_activation} experts"
                + ("" if layer.has("sh_gate") else " without a gate projection"),
                n,
            )
        sg = out.node(
            "MatMul", [x, out.init(f"{n}.sh_gate", _a(layer.weights["sh_gate"]))], f"{n}.sh_gate"
        )
        su = out.node(
            "MatMul", [x, out.init(f"{n}.sh_up", _a(layer.weights["sh_up"]))], f"{n}.sh_up"
        )
        act = out.node("Mul", [sg, out.node("Sigmoid", [sg], f"{n}.sh_sigmoid")], f"{n}.sh_silu")
        sh = out.node(
            "MatMul",
            [
                out.node("Mul", [act, su], f"{n}.sh_glu"),
                out.init(f"{n}.sh_down", _a(layer.weights["sh_down"])),
            ],
            f"{n}.sh_down",
        )
        if layer.has("sh_router"):
            r = out.node(
                "MatMul",
                [x, out.init(f"{n}.sh_router", _a(layer.weights["sh_router"]))],
                f"{n}.sh_router",
            )
            sh = out.node(
                "Mul", [sh, out.node("Sigmoid", [r], f"{n}.sh_gate_sigmoid")], f"{n}.sh_scale"
            )
        y = out.node("Add", [y, sh], f"{n}.add_shared")
    out.nodes.append(
        helper.make_node("Identity", [y], [op.outputs[0].name], name=f"{layer.name}.out")
    )


def _value_info(name: str, t: TensorType | None) -> onnx.ValueInfoProto:
    if t is None:
        return onnx.ValueInfoProto(name=name)
    return helper.make_tensor_value_info(name, _ELEM[t.dtype], list(t.shape))


def _attribute(key: str, value: Any) -> onnx.AttributeProto:
    if isinstance(value, np.ndarray):
        return helper.make_attribute(key, numpy_helper.from_array(value))
    return helper.make_attribute(key, value)


def _weight_tensor(w: Weight) -> TensorProto:
    if w.data is None:
        raise ModelError("cannot export a declared-only weight", w.name)
    return numpy_helper.from_array(np.ascontiguousarray(w.data), w.name)


def export_onnx(module: Module) -> onnx.ModelProto:
    """An ONNX model ONNX Runtime runs, equal in numbers to ``module``'s canonical ops."""
    taken = {v.name for v in module.values()} | set(module.weights)
    out = _Out(taken)
    used: set[str] = set()
    for op in module.ops:
        if op.is_moe:
            _write_layer(out, op)
            continue
        ins = [v.name if v is not None else "" for v in op.inputs]
        used.update(i for i in ins if i)
        node = helper.make_node(
            op.kind, ins, [v.name for v in op.outputs], name=op.name, domain=op.domain
        )
        node.attribute.extend(_attribute(k, v) for k, v in sorted(op.attrs.items()))
        out.nodes.append(node)
    inits = [_weight_tensor(module.weights[n]) for n in sorted(module.weights) if n in used]
    graph = helper.make_graph(
        out.nodes, module.name,
        [_value_info(v.name, v.type) for v in module.inputs],
        [_value_info(v.name, v.type) for v in module.outputs],
        inits + out.inits,
    )  # fmt: skip
    opsets = {d: v for d, v in module.opset.items() if d != "ai.moec"}
    opsets.setdefault("ai.onnx", 18)
    opsets.setdefault("com.microsoft", 1)
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("" if d == "ai.onnx" else d, v) for d, v in sorted(opsets.items())
        ],
        producer_name="moec.export",
    )
    model.ir_version = 10
    return model
