"""Lifting: run the recognizers over an ONNX graph and build the graph IR.

Every anchor node (``TopK``, ``MoE``, ``QMoE``) must end up inside exactly one lifted MoE layer;
an anchor no recognizer claims is an error naming the node and what was expected (never a silent
pass-through). Everything else becomes an ordinary op with the ONNX op type, domain, attributes
(python values) and value names. Layers are named ``moe0``, ``moe1``, ... in graph order, with
the ONNX anchor node's name in ``layer.annotations.onnx_node``.

    before: MatMul(router) -> Softmax -> TopK -> ... -> ReduceSum   (decomposed MoE)
    after:  %y = moe(%x) {experts=8, top_k=2, ...}
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from moec.compiler.frontend.canonical import canonicalize
from moec.compiler.frontend.dense_shared import mark_dense_shared
from moec.compiler.frontend.loader import infer_shapes, load_onnx
from moec.compiler.frontend.patterns import (
    RECOGNIZERS,
    SOFT_ANCHORS,
    GraphView,
    Lifted,
    Mismatch,
    anchor_ops,
    dtype_name,
    is_declared_only,
)
from moec.ir.errors import ModelError
from moec.ir.graph import Module, Op, TensorType, Value, Weight

_RECOGNIZER_MODULES = ("fused", "decomposed", "torch_loop")
_loaded = False


def load_recognizers() -> None:
    """Import the recognizer modules once: fused, decomposed, torch_loop, then every ``hf_*``
    module."""
    global _loaded
    if _loaded:
        return
    import moec.compiler.frontend as pkg

    names = list(_RECOGNIZER_MODULES)
    names += sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("hf_"))
    for name in names:
        importlib.import_module(f"moec.compiler.frontend.{name}")
    _loaded = True


@dataclass
class LiftResult:
    """The original ONNX model and the MoE layers found in it (in graph order)."""

    model: onnx.ModelProto
    lifted: list[Lifted] = field(default_factory=list)
    source: str = ""

    def layer_names(self) -> list[str]:
        return [lf.layer.name for lf in self.lifted]


def load_module(
    path: str | os.PathLike[str], *, load_weights: bool = True
) -> tuple[Module, LiftResult]:
    """Load an ONNX file and lift its MoE layers: the graph IR plus what was lifted."""
    model = load_onnx(path, load_weights=load_weights)
    return lift_model(model, where=str(path))


def find_layers(view: GraphView) -> list[Lifted]:
    """Run the recognizers at every anchor; raise for anchors that end up in no layer."""
    load_recognizers()
    anchors = anchor_ops()
    found: list[Lifted] = []
    covered: set[int] = set()
    unclaimed: list[tuple[int, Mismatch | None]] = []
    for i, node in enumerate(view.nodes):
        if node.op_type not in anchors or i in covered:
            continue
        result, mismatch = None, None
        for reg in RECOGNIZERS:
            if node.op_type not in reg.anchors:
                continue
            r = reg.fn(view, node)
            if isinstance(r, Lifted):
                result = r
                break
            if isinstance(r, Mismatch) and mismatch is None:
                mismatch = r
        if result is None:
            unclaimed.append((i, mismatch))
            continue
        overlap = covered & result.nodes
        if overlap:
            raise ModelError(
                f"MoE layer overlaps an earlier one at node {view.name(min(overlap))}",
                f"{view.where}: node {view.name(node)}",
            )
        covered |= result.nodes | {i}
        found.append(result)
    for i, mismatch in unclaimed:
        if i in covered:
            continue
        node = view.nodes[i]
        if mismatch is None and node.op_type in SOFT_ANCHORS:
            continue
        if mismatch is None and node.op_type == "TopK" and _over_attention_scores(view, node):
            continue  # e.g. DeepSeek-V3.2's sparse-attention indexer: top-k of token scores
        if mismatch is not None:
            raise ModelError(
                f"{node.op_type} node is not a supported MoE layer: {mismatch.reason}",
                f"{view.where}: node {mismatch.node}",
            )
        # A TopK no recognizer knows says little; expert stacks gathered outside every layer
        # locate the unrecognized MoE layer itself (e.g. DeepSeek-V4's hash-routed layers, where
        # the only TopK is an attention indexer's).
        _check_no_stray_experts(view, covered)
        raise ModelError(
            f"{node.op_type} node is not part of a recognized MoE layer (expected a router "
            "Softmax/Sigmoid -> TopK feeding expert MatMuls and a weighted sum, or a "
            f"com.microsoft MoE/QMoE node){_reshaped_logits_note(view, node)}",
            f"{view.where}: node {view.name(node)}",
        )
    _check_no_stray_experts(view, covered)
    return found


def _over_attention_scores(view: GraphView, node: onnx.NodeProto) -> bool:
    """A TopK over products of two computed tensors (attention scores, ``q @ k``) and over no
    constant-weight projection: not a router (a lone TopK of anything else stays an error)."""
    from moec.compiler.frontend.hf_routing import Walk, find_scoring, match_linear

    if find_scoring(view, node) is not None:
        return False
    frontier, seen, products = [node.input[0]], set(), False
    for _ in range(12):
        nxt = []
        for value in frontier:
            if value in seen or not value:
                continue
            seen.add(value)
            if match_linear(Walk(view), value) is not None:
                return False
            p = view.producer(value)
            if p is None:
                continue
            if p.op_type == "MatMul" and not any(view.is_constant(i) for i in p.input):
                products = True
                continue
            nxt += [i for i in p.input if i and not view.is_constant(i)]
        frontier = nxt
    return products


def _reshaped_logits_note(view: GraphView, node: onnx.NodeProto) -> str:
    """What an unclaimed TopK ranks when it is a router projection reshaped so that its rows
    are no longer one token's N outputs (Doge's product keys: [T, 2n] viewed as [2, T, n])."""
    from moec.compiler.frontend.hf_routing import Walk, match_linear

    p = view.producer(node.input[0])
    if p is None or p.op_type != "Reshape":
        return ""
    lin = match_linear(Walk(view), p.input[0])
    shape = view.constant(p.input[1])
    if lin is None or shape is None:
        return ""
    dims = [int(v) for v in np.asarray(shape).reshape(-1)]
    n = lin.w.shape[1]
    if dims and dims[-1] == n:
        return ""
    return (
        f"; it ranks the {n} outputs of the constant-weight projection {p.input[0]!r} reshaped "
        f"to {dims}, so its rows are not one token's scores (e.g. product-key routing whose "
        "view mixes tokens' logits), which the canonical op cannot hold"
    )


_GATHERS = ("Gather", "GatherND", "GatherElements")


def _check_no_stray_experts(view: GraphView, covered: set[int]) -> None:
    """Stacked expert weights gathered by computed ids outside every layer: an unrecognized MoE.

    A router without TopK (e.g. PhiMoE's sparsemixer, which selects experts by max and masks)
    would otherwise import silently as dense ops; instead it is an error naming the node.
    """
    for i, node in enumerate(view.nodes):
        if i in covered or node.op_type not in _GATHERS or len(node.input) < 2:
            continue
        data, indices = node.input[0], node.input[1]
        stack = view.tensor_type(data) if view.is_constant(data) else None
        if stack is None or len(stack.shape) < 3 or view.is_constant(indices):
            continue
        table = _lookup_table(view, indices)
        why = (
            f"the expert ids are looked up in the constant table {table[0]!r} by the graph "
            f"input {table[1]!r} (hash routing), which the canonical op cannot hold: it routes "
            "by scores of its input"
            if table is not None
            else "no MoE router feeding it was recognized (expected a router Softmax/Sigmoid "
            "-> TopK; routing without TopK is not supported)"
        )
        raise ModelError(
            f"{node.op_type} selects from a stacked weight {data!r} of shape "
            f"{list(stack.shape)} by computed ids, but {why}",
            f"{view.where}: node {view.name(node)}",
        )


def _lookup_table(view: GraphView, ids: str, depth: int = 8) -> tuple[str, str] | None:
    """(table, graph input) when ``ids`` is a constant table gathered by a graph input (through
    reshapes), e.g. DeepSeek-V4's ``tid2eid[input_ids]``; else None."""
    for _ in range(depth):
        p = view.producer(ids)
        if p is None:
            return None
        if p.op_type in _GATHERS and len(p.input) > 1 and view.is_constant(p.input[0]):
            src = p.input[1]
            for _ in range(depth):
                q = view.producer(src)
                if q is None:
                    graph_inputs = {i.name for i in view.graph.input}
                    return (p.input[0], src) if src in graph_inputs else None
                if q.op_type not in ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Cast"):
                    return None
                src = q.input[0]
            return None
        if p.op_type not in ("Reshape", "Unsqueeze", "Squeeze", "Flatten", "Cast", "Identity"):
            return None
        ids = p.input[0]
    return None


def lift_model(model: onnx.ModelProto, *, where: str = "") -> tuple[Module, LiftResult]:
    """Build the graph IR of ``model``, each MoE layer one canonical ``moe`` op."""
    model = canonicalize(model)
    if not model.graph.value_info:
        model = infer_shapes(model)
    view = GraphView(model.graph, where=where or model.graph.name)
    found = mark_dense_shared(view, find_layers(view))
    found.sort(key=lambda lf: max(lf.nodes) if lf.nodes else -1)
    lifted = [_rename(lf, f"moe{i}", view) for i, lf in enumerate(found)]
    module = _build_module(model, view, lifted)
    module.verify()
    return module, LiftResult(model, lifted, where)


def _rename(lf: Lifted, name: str, view: GraphView) -> Lifted:
    layer = lf.layer
    layer.annotations.onnx_node = layer.annotations.onnx_node or layer.name
    layer.name = name
    layer.weights = {
        key: Weight(f"{name}.{key}", w.type, w.data) for key, w in sorted(layer.weights.items())
    }
    return dataclasses.replace(lf, layer=layer)


def _value_type(view: GraphView, name: str) -> TensorType | None:
    try:
        return view.tensor_type(name)
    except (ModelError, ValueError):
        return None


def _build_module(model: onnx.ModelProto, view: GraphView, lifted: list[Lifted]) -> Module:
    g = model.graph
    module = Module(g.name or "model")
    module.opset = {imp.domain or "ai.onnx": int(imp.version) for imp in model.opset_import}
    module.metadata = {p.key: p.value for p in model.metadata_props}
    values: dict[str, Value] = {}
    init_names = {t.name for t in g.initializer}
    for inp in g.input:
        if inp.name in init_names:
            continue
        v = Value(inp.name, _value_type(view, inp.name))
        module.inputs.append(v)
        values[inp.name] = v

    # Nodes replaced by a layer vanish; the layer's op sits where its last node was.
    replaced: dict[int, Lifted] = {}
    for lf in lifted:
        for i in lf.nodes:
            replaced[i] = lf
    last = {lf.layer.name: max(lf.nodes) for lf in lifted}
    _check_closed(view, lifted)

    used_weights: set[str] = set()
    for i, node in enumerate(view.nodes):
        lf = replaced.get(i)
        if lf is not None:
            if i == last[lf.layer.name]:
                x = _use(values, lf.input, view, module, used_weights)
                op = Op("moe", [x], [], {"layer": lf.layer}, name=lf.layer.name)
                x.uses.append(op)
                # The canonical op preserves shape: y's type is x's (symbolic dims included).
                y = Value(lf.output, x.type or _value_type(view, lf.output), producer=op)
                op.outputs.append(y)
                values[lf.output] = y
                module.ops.append(op)
            continue
        ins: list[Value | None] = [
            _use(values, n, view, module, used_weights) if n else None for n in node.input
        ]
        op = Op(
            node.op_type,
            ins,
            [],
            {a.name: _attr_value(a) for a in node.attribute},
            name=view.name(node),
            domain=node.domain,
        )
        for v in ins:
            if v is not None:
                v.uses.append(op)
        for out in node.output:
            ov = Value(out, _value_type(view, out), producer=op)
            op.outputs.append(ov)
            if out:
                values[out] = ov
        module.ops.append(op)
    for out in g.output:
        if out.name not in values:
            raise ModelError(f"graph output {out.name!r} is never produced", view.where)
        module.outputs.append(values[out.name])
    return module


def _use(
    values: dict[str, Value], name: str, view: GraphView, module: Module, used: set[str]
) -> Value:
    v = values.get(name)
    if v is not None:
        return v
    w = _initializer_weight(view, name)
    if w is None:
        raise ModelError(f"value {name!r} is used before it is defined", view.where)
    module.weights[name] = w
    v = Value(name, w.type, weight=w)
    values[name] = v
    used.add(name)
    return v


def _initializer_weight(view: GraphView, name: str) -> Weight | None:
    t = view.initializer(name)
    if t is None:
        return None
    ty = TensorType(dtype_name(t.data_type), tuple(int(d) for d in t.dims))
    data = None if is_declared_only(t) else numpy_helper.to_array(t)
    return Weight(name, ty, data)


def _check_closed(view: GraphView, lifted: list[Lifted]) -> None:
    """Values computed inside a layer may only leave it through the layer's output."""
    for lf in lifted:
        for i in sorted(lf.nodes):
            for out in view.nodes[i].output:
                if not out or out == lf.output:
                    continue
                outside = [c for c in view.consumers(out) if view.id(c) not in lf.nodes]
                if outside or view.is_graph_output(out):
                    who = view.name(outside[0]) if outside else "a graph output"
                    raise ModelError(
                        f"value {out!r} inside MoE layer {lf.layer.name} is also used by {who} "
                        "(expected the layer's output to be its only result)",
                        f"{view.where}: node {view.name(i)}",
                    )


def _attr_value(a: onnx.AttributeProto) -> Any:
    v = onnx.helper.get_attribute_value(a)
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, onnx.TensorProto):
        return numpy_helper.to_array(v) if not is_declared_only(v) else None
    if isinstance(v, list) and v and isinstance(v[0], bytes):
        return [s.decode(errors="replace") for s in v]
    if isinstance(v, np.ndarray):
        return v
    return v
