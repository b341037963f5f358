"""A fused MoE/QMoE whose ``router_probs`` carry a choice already made: the selected-scores idiom.

onnxruntime-genai's builder writes routers that ORT's fused op cannot express (sigmoid scoring,
a score-correction bias used only to choose) as ops in front of the fused node, and hands the
node the log of the chosen scores, everything else at a very negative constant::

    s   = Sigmoid(x @ W_r)                    (or Softmax)
    idx = TopK(s [+ bias], k).indices
    g   = GatherElements(s, idx)
    router_probs = ScatterElements(ConstantOfShape(-10000), idx, Log(Clip(g, tiny)))
    y   = MoE(x, router_probs, ...) [* ReduceSum(g) / (ReduceSum(g) + eps)]

The fused op's softmax over ``router_probs`` is then ``g / sum(g)`` on the chosen experts and
0 elsewhere, so the layer is: scoring ``s``, choice by ``s [+ bias]``, gates renormalized (by
``sum + eps`` when the optional post-scale is there). :func:`match` recognizes this by
dataflow and returns those settings; the router nodes, the idiom and the post-scale are lifted
into the layer. Casts between floating types may sit between any two of these stages (the
builder's fp16 models compute the product in fp16, the activation in float and hand the node
fp16 ``router_probs``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from moec.compiler.frontend.patterns import GraphView
from moec.ir.graph import TensorType, Weight

_LAYOUT = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
#: ``router_probs`` below this are "not chosen" (exp() of it vanishes in float32).
_FILL_MAX = -1e3


@dataclass
class Selected:
    """What the selected-scores idiom says about the layer's routing."""

    scoring: str
    logits: str
    top_k: int
    nodes: set[int]
    score_bias: Weight | None = None
    normalize_eps: float = 0.0
    output: str | None = None
    owners: set[int] = field(default_factory=set)


#: Floating-point element types: a Cast between two of them changes precision, not meaning.
_FLOATS = frozenset({
    onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
})  # fmt: skip


def _float_cast(view: GraphView, node: onnx.NodeProto) -> bool:
    """A Cast to a floating type of a floating value (fp16 builds cast the router's product to
    float for the written-out activation and the router_probs back to fp16): passed through
    like a reshape; the router's precision is its weights' (the lifted op keeps their dtype)."""
    if node.op_type != "Cast" or int(view.attr(node, "to", 0)) not in _FLOATS:
        return False
    ty = view.tensor_type(node.input[0])
    return ty is None or ty.dtype in ("f32", "f16", "bf16", "f64")


def half_product(view: GraphView, router_nodes: set[int]) -> bool:
    """The router's product (among ``router_nodes``) multiplies by an fp16 weight, as
    onnxruntime-genai's fp16 builds write it: the layer records ``router_precision = "fp16"``."""
    for i in sorted(router_nodes):
        n = view.nodes[i]
        if n.op_type in ("MatMul", "Gemm"):
            types = [view.tensor_type(v) for v in n.input[:2] if view.is_constant(v)]
            return any(t is not None and t.dtype == "f16" for t in types)
    return False


def casts_half_logits_up(view: GraphView, router_nodes: set[int]) -> bool:
    """Among ``router_nodes``, an explicit Cast to float32 reads an fp16 value: the graph
    materializes the router's product in fp16 and ORT keeps that rounding (it drops only the
    casts it inserts itself around fp16 nodes it runs in float, like the fused MoE node), so
    the lifted layer rounds its logits to fp16 (``router_logits_fp16``); measured on
    LFM2-MoE's fp16 build: 64 fp16 units off without it, one with it."""
    for i in sorted(router_nodes):
        n = view.nodes[i]
        if n.op_type == "Cast" and int(view.attr(n, "to", 0)) == onnx.TensorProto.FLOAT:
            ty = view.tensor_type(n.input[0])
            if ty is not None and ty.dtype == "f16":
                return True
    return False


def _through_layout(view: GraphView, value: str, nodes: set[int]) -> str:
    while (p := view.producer(value)) is not None and (
        p.op_type in _LAYOUT or _float_cast(view, p)
    ):
        nodes.add(view.id(p))
        value = p.input[0]
    return value


def _last_axis(view: GraphView, node: onnx.NodeProto, value: str) -> bool:
    axis = int(view.attr(node, "axis", -1))
    ty = view.tensor_type(value)
    return axis == -1 or (ty is not None and axis == len(ty.shape) - 1)


def _scalar(view: GraphView, value: str) -> float | None:
    c = view.constant(value)
    if c is None or np.asarray(c).size != 1:
        return None
    return float(np.asarray(c).reshape(-1)[0])


def _fill(view: GraphView, value: str, nodes: set[int]) -> bool:
    """A tensor of one very negative value: ConstantOfShape(Shape(...)) or a constant."""
    c = view.constant(value)
    if c is not None:
        return bool(np.all(np.asarray(c) <= _FILL_MAX))
    p = view.producer(value)
    if p is None or p.op_type != "ConstantOfShape":
        return False
    fill = view.attr(p, "value", None)
    if fill is None or not np.all(onnx.numpy_helper.to_array(fill) <= _FILL_MAX):
        return False
    nodes.add(view.id(p))
    shape = view.producer(p.input[0])
    if shape is not None and shape.op_type == "Shape":
        nodes.add(view.id(shape))
    return True


def match(view: GraphView, node: onnx.NodeProto) -> Selected | str | None:
    """The idiom feeding ``node``'s router_probs; None when it is not there, a reason when it is
    there but broken."""
    nodes: set[int] = set()
    value = _through_layout(view, node.input[1], nodes)
    sc = view.producer(value)
    if sc is None or sc.op_type != "ScatterElements" or not _last_axis(view, sc, value):
        return None
    nodes.add(view.id(sc))
    data, idx, upd = sc.input[0], sc.input[1], sc.input[2]
    if not _fill(view, data, nodes):
        return "router_probs scatter the chosen scores into something other than a constant <= -1e3"
    topk = view.producer(idx)
    if topk is None or topk.op_type != "TopK" or topk.output[1] != idx:
        return "router_probs scatter at indices that do not come from a TopK"
    if not view.attr(topk, "largest", 1) or not _last_axis(view, topk, topk.input[0]):
        return "the expert choice must be a TopK of the largest scores over the last axis"
    k = _scalar(view, topk.input[1])
    if k is None:
        return "the TopK's k is not a constant"
    nodes.add(view.id(topk))
    log = view.producer(upd)
    if log is None or log.op_type != "Log":
        return "router_probs scatter something other than Log(chosen scores)"
    nodes.add(view.id(log))
    gathered = log.input[0]
    clip = view.producer(gathered)
    if clip is not None and clip.op_type == "Clip":
        nodes.add(view.id(clip))
        gathered = clip.input[0]
    g = view.producer(gathered)
    if g is None or g.op_type != "GatherElements" or g.input[1] != idx:
        return "router_probs scatter scores not gathered at the TopK's indices"
    nodes.add(view.id(g))
    scores = g.input[0]
    choice = topk.input[0]
    bias: Weight | None = None
    if choice != scores:
        add = view.producer(choice)
        if add is None or add.op_type != "Add" or scores not in add.input:
            return "the TopK chooses by something other than the scores (+ a constant bias)"
        other = add.input[1] if add.input[0] == scores else add.input[0]
        w = view.weight(other)
        if w is None:
            return "the TopK chooses by the scores plus a non-constant"
        bias = w
        nodes.add(view.id(add))
    act = view.producer(scores)
    if act is None or act.op_type not in ("Sigmoid", "Softmax"):
        found = act.op_type if act is not None else "no producing node"
        return f"expected Sigmoid/Softmax router scores, found {found}"
    if act.op_type == "Softmax" and not _last_axis(view, act, act.input[0]):
        return "the router softmax is not over the experts (last axis)"
    nodes.add(view.id(act))
    sel = Selected(
        "sigmoid" if act.op_type == "Sigmoid" else "softmax", act.input[0], int(k), nodes
    )
    if bias is not None:
        arr = None if bias.data is None else np.asarray(bias.data, np.float32).reshape(-1)
        E = int(np.prod(bias.type.shape))
        sel.score_bias = (
            Weight("score_bias", TensorType("f32", (E,)), arr)
            if arr is not None
            else Weight("score_bias", TensorType("f32", (E,)))
        )
    _post_scale(view, node, g.output[0], sel)
    return sel


def _post_scale(view: GraphView, node: onnx.NodeProto, gathered: str, sel: Selected) -> None:
    """Absorb ``y * (sum(g) / (sum(g) + eps))`` after the fused node, if that is what follows."""
    users = view.consumers(node.output[0])
    if len(users) != 1 or users[0].op_type != "Mul" or view.is_graph_output(node.output[0]):
        return
    mul = users[0]
    extra: set[int] = {view.id(mul)}
    scale = mul.input[1] if mul.input[0] == node.output[0] else mul.input[0]
    scale = _through_layout(view, scale, extra)
    div = view.producer(scale)
    if div is None or div.op_type != "Div":
        return
    total = view.producer(div.input[0])
    add = view.producer(div.input[1])
    if total is None or total.op_type != "ReduceSum" or total.input[0] != gathered:
        return
    if add is None or add.op_type != "Add" or div.input[0] not in add.input:
        return
    eps = _scalar(view, add.input[1] if add.input[0] == div.input[0] else add.input[0])
    if eps is None or eps < 0:
        return
    extra |= {view.id(div), view.id(total), view.id(add)}
    # the Reshape's target shape may be computed from x's shape: take those nodes too
    for i in list(extra):
        n = view.nodes[i]
        if n.op_type == "Reshape" and len(n.input) > 1:
            _shape_feeders(view, n.input[1], extra)
    sel.nodes |= extra
    sel.normalize_eps = eps
    sel.output = mul.output[0]


def _shape_feeders(view: GraphView, value: str, into: set[int]) -> None:
    """Nodes computing a shape from other tensors' shapes (Shape, Slice, Concat, Gather ...)."""
    p = view.producer(value)
    if p is None or view.is_constant(value):
        return
    if p.op_type not in ("Shape", "Slice", "Concat", "Gather", "Unsqueeze", "Squeeze", "Cast"):
        return
    into.add(view.id(p))
    if p.op_type == "Shape":
        return
    for i in p.input:
        if i:
            _shape_feeders(view, i, into)
