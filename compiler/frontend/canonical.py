"""Canonical spellings: activations written out in elementary ops become one node before lifting.

Exporters and builders spell the router's activation in many ways: onnxruntime-genai writes a
sigmoid as ``Reciprocal(Add(Exp(Neg(x)), 1))``, hand-written graphs as ``Div(1, 1 + Exp(-x))``,
a softmax as ``Exp(x - ReduceMax(x)) / ReduceSum(...)``. The recognizers match dataflow through
``Sigmoid`` and ``Softmax``; this pass rewrites each written-out form into that one node (same
output name, so every consumer stays wired), on a copy of the model, so recognizers need not
know every spelling. Intermediate values that something else still reads are kept.

    before: Neg(x) -> Exp -> Add(1) -> Reciprocal -> y
    after:  Sigmoid(x) -> y
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from moec.compiler.frontend.patterns import GraphView


def _scalar(view: GraphView, value: str) -> float | None:
    c = view.constant(value)
    if c is None or np.asarray(c).size != 1:
        return None
    return float(np.asarray(c).reshape(-1)[0])


def _prod(view: GraphView, value: str, op: str) -> onnx.NodeProto | None:
    p = view.producer(value)
    return p if p is not None and p.op_type == op else None


def _negated(view: GraphView, value: str) -> tuple[str, list[onnx.NodeProto]] | None:
    """``x`` and the nodes of ``Neg(x)``, ``Mul(x, -1)`` or ``Sub(0, x)``."""
    p = view.producer(value)
    if p is None:
        return None
    if p.op_type == "Neg":
        return p.input[0], [p]
    if p.op_type == "Mul" and len(p.input) == 2:
        for a, b in (p.input, p.input[::-1]):
            if _scalar(view, b) == -1.0:
                return a, [p]
    if p.op_type == "Sub" and _scalar(view, p.input[0]) == 0.0:
        return p.input[1], [p]
    return None


def _one_plus_exp_neg(view: GraphView, value: str) -> tuple[str, list[onnx.NodeProto]] | None:
    add = _prod(view, value, "Add")
    if add is None or len(add.input) != 2:
        return None
    for a, b in (add.input, add.input[::-1]):
        if _scalar(view, b) != 1.0:
            continue
        exp = _prod(view, a, "Exp")
        if exp is None:
            continue
        neg = _negated(view, exp.input[0])
        if neg is not None:
            return neg[0], [add, exp, *neg[1]]
    return None


def _sigmoid(
    view: GraphView, node: onnx.NodeProto
) -> tuple[onnx.NodeProto, list[onnx.NodeProto]] | None:
    """``Reciprocal(1 + Exp(-x))`` or ``Div(1, 1 + Exp(-x))`` ending at ``node``."""
    if node.op_type == "Reciprocal":
        inner = _one_plus_exp_neg(view, node.input[0])
    elif node.op_type == "Div" and _scalar(view, node.input[0]) == 1.0:
        inner = _one_plus_exp_neg(view, node.input[1])
    else:
        return None
    if inner is None:
        return None
    x, nodes = inner
    return onnx.helper.make_node("Sigmoid", [x], [node.output[0]], name=node.name), [node, *nodes]


def _axes(view: GraphView, node: onnx.NodeProto) -> tuple[int, ...] | None:
    axes = view.attr(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1]:
        c = view.constant(node.input[1])
        axes = None if c is None else [int(a) for a in np.asarray(c).reshape(-1)]
    if axes is None or len(axes) != 1 or view.attr(node, "keepdims", 1) != 1:
        return None
    return (int(axes[0]),)


def _softmax(
    view: GraphView, node: onnx.NodeProto
) -> tuple[onnx.NodeProto, list[onnx.NodeProto]] | None:
    """``Exp(x [- ReduceMax(x)]) / ReduceSum(that)`` over one axis, ending at ``node``."""
    if node.op_type != "Div":
        return None
    exp = _prod(view, node.input[0], "Exp")
    total = _prod(view, node.input[1], "ReduceSum")
    if exp is None or total is None or total.input[0] != exp.output[0]:
        return None
    axes = _axes(view, total)
    if axes is None:
        return None
    nodes = [node, exp, total]
    x = exp.input[0]
    sub = _prod(view, x, "Sub")
    if sub is not None:
        mx = _prod(view, sub.input[1], "ReduceMax")
        if mx is not None and mx.input[0] == sub.input[0] and _axes(view, mx) == axes:
            x = sub.input[0]
            nodes += [sub, mx]
    soft = onnx.helper.make_node("Softmax", [x], [node.output[0]], name=node.name, axis=axes[0])
    return soft, nodes


_RULES: tuple[
    Callable[[GraphView, onnx.NodeProto], tuple[onnx.NodeProto, list[onnx.NodeProto]] | None], ...
] = (
    _sigmoid,
    _softmax,
)


def canonicalize(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with written-out sigmoids and softmaxes as single nodes (a copy; the input is
    returned unchanged when nothing matches)."""
    view = GraphView(model.graph)
    replace: dict[int, onnx.NodeProto] = {}
    dropped: set[int] = set()
    for node in view.nodes:
        for rule in _RULES:
            hit = rule(view, node)
            if hit is None:
                continue
            new, nodes = hit
            inner = {view.id(n) for n in nodes} - {view.id(node)}
            if (inner | {view.id(node)}) & (set(replace) | dropped):
                continue
            replace[view.id(node)] = new
            for i in inner:  # keep a written-out step whose value something else reads
                outs = view.nodes[i].output
                readers = {view.id(c) for o in outs for c in view.consumers(o)}
                if readers <= inner | {view.id(node)} and not any(
                    view.is_graph_output(o) for o in outs
                ):
                    dropped.add(i)
            break
    if not replace:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    for i, node in enumerate(view.nodes):
        if i in dropped:
            continue
        out.graph.node.append(replace.get(i, node))
    return out
