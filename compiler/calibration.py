"""Calibration: what each MoE layer sees on seeded inputs (or what a routing trace says it sees).

The cost-aware passes (``annotate-importance``, ``assign-precision``, ``skip-second``) decide from
per-layer routing statistics. With weights present, :func:`calibrate` runs the model on seeded
inputs: the dense ops between MoE layers run in ONNX Runtime (one small extracted model per layer:
the ancestors of the layer's input, with earlier layers' outputs fed in), each MoE layer is
evaluated in numpy by the canonical reference (:func:`moec.ir.moe.evaluate`), and the layer's
input activations and routing are kept. Shape-only models take their routing from a trace
(a file, or ``synth:zipf=...,seed=...``).

Inputs are generated like ``moec check`` does: an integer input that indexes an embedding
(``Gather(table, ids)``) gets ids below the table's first dimension, floats are standard normal,
and symbolic dimensions take ``tokens`` (the last one) or 1 (the others).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from moec.ir.errors import ModelError
from moec.ir.graph import Module, Op, Value
from moec.ir.inputs import InputSpec, seeded_feeds, shape_for_tokens
from moec.ir.moe import MoELayer, evaluate, route
from moec.ir.routing import RoutingTrace, load_trace, validate
from moec.ir.routing_synth import parse_routing_spec

_ELEM = {
    "f32": TensorProto.FLOAT, "f64": TensorProto.DOUBLE, "f16": TensorProto.FLOAT16,
    "i64": TensorProto.INT64, "i32": TensorProto.INT32, "i8": TensorProto.INT8,
    "u8": TensorProto.UINT8, "bool": TensorProto.BOOL,
}  # fmt: skip
_NP = {"f32": np.float32, "f64": np.float64, "f16": np.float16, "i64": np.int64, "i32": np.int32}


@dataclass(frozen=True)
class LayerCalibration:
    """One layer's calibration: routing ``ids``/``gates`` [T, k] and inputs ``x`` [T, d] if known."""

    name: str
    ids: np.ndarray
    gates: np.ndarray
    x: np.ndarray | None = None


def _index_limit(v: Value) -> int | None:
    """The row count of the table ``v`` indexes when ``v`` is the indices of a Gather."""
    for op in v.uses:
        if op.kind == "Gather" and len(op.inputs) > 1 and op.inputs[1] is v:
            table = op.inputs[0]
            if table is not None and table.type is not None and table.type.shape:
                axis = int(op.attrs.get("axis", 0))
                dim = table.type.shape[axis]
                if isinstance(dim, int):
                    return dim
    return None


def seeded_inputs(module: Module, seed: int, tokens: int) -> dict[str, np.ndarray]:
    """Seeded feeds for every module input (:mod:`moec.ir.inputs`: token ids in range for
    embedding lookups; the last symbolic dimension of each input gets ``tokens``)."""
    specs = []
    for v in module.inputs:
        dtype = _NP.get(v.type.dtype) if v.type is not None else None
        if v.type is None or dtype is None:
            raise ModelError(f"input {v.name!r} of type {v.type}: cannot generate calibration data")
        shape = shape_for_tokens(v.type.shape, tokens)
        specs.append(InputSpec(v.name, np.dtype(dtype), shape, _index_limit(v)))
    return seeded_feeds(specs, seed)


def _ancestors(target: Value, stop: set[str]) -> list[Op]:
    """Ops needed to compute ``target``, stopping at values in ``stop`` (in program order later)."""
    seen: dict[int, Op] = {}
    todo = [target]
    while todo:
        v = todo.pop()
        if v.name in stop or v.producer is None or id(v.producer) in seen:
            continue
        op = v.producer
        if op.is_moe:
            raise ModelError("internal: an MoE output must be a stop value", op.name)
        seen[id(op)] = op
        todo.extend(i for i in op.inputs if i is not None)
    return list(seen.values())


def _value_info(v: Value) -> onnx.ValueInfoProto:
    if v.type is None:
        return helper.make_tensor_value_info(v.name, TensorProto.FLOAT, None)
    elem = _ELEM.get(v.type.dtype)
    if elem is None:
        raise ModelError(f"value {v.name!r} of type {v.type} is not supported in calibration")
    return helper.make_tensor_value_info(v.name, elem, list(v.type.shape))


#: How calibration sizes the inputs (:func:`seeded_inputs`), for its error message.
TOKENS_HINT = "the last symbolic dimension = tokens, the others 1"


def _run_dense(
    module: Module, ops: list[Op], feeds: dict[str, np.ndarray], want: Value
) -> np.ndarray:
    order = {id(op): i for i, op in enumerate(module.ops)}
    ops = sorted(ops, key=lambda op: order[id(op)])
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    inputs: list[onnx.ValueInfoProto] = []
    used: set[str] = set()
    for op in ops:
        names = [v.name if v is not None else "" for v in op.inputs]
        node = helper.make_node(
            op.kind, names, [v.name for v in op.outputs], name=op.name, domain=op.domain
        )
        for k, a in sorted(op.attrs.items()):
            node.attribute.append(
                helper.make_attribute(
                    k, numpy_helper.from_array(a) if isinstance(a, np.ndarray) else a
                )
            )
        nodes.append(node)
        used.update(n for n in names if n)
    produced = {v.name for op in ops for v in op.outputs}
    for name in sorted(used - produced):
        w = module.weights.get(name)
        if w is not None:
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.array()), name))
        elif name in feeds:
            v = next(v for op in ops for v in op.inputs if v is not None and v.name == name)
            inputs.append(_value_info(v))
        else:
            raise ModelError(f"calibration: value {name!r} is not available", module.name)
    graph = helper.make_graph(nodes, "calibrate", inputs, [_value_info(want)], inits)
    opsets = {d: v for d, v in module.opset.items() if d != "ai.moec"}
    opsets.setdefault("ai.onnx", 18)
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("" if d == "ai.onnx" else d, v) for d, v in sorted(opsets.items())
        ],
    )
    model.ir_version = 10
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # fatal only: failures become moec errors, not native log lines
    opts.intra_op_num_threads = 1
    feed = {i.name: feeds[i.name] for i in inputs}
    try:
        sess = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        return np.asarray(sess.run([want.name], feed)[0])
    except Exception as err:  # noqa: BLE001 - ORT raises its own types; one located line here
        # e.g. a decoder's past key/value inputs, which calibration sizes like token inputs
        text = " ".join(str(err).split())[:300]
        raise ModelError(
            f"calibration: ONNX Runtime failed on the dense ops before {want.name!r} with seeded "
            f"inputs of {TOKENS_HINT}: {text}; give the pass a routing trace instead "
            "(trace=FILE, e.g. from 'moec trace dump')",
            module.name,
        ) from None


def _value(module: Module, v: Value, env: dict[str, np.ndarray], stop: set[str]) -> np.ndarray:
    if v.name not in env:
        env[v.name] = _run_dense(module, _ancestors(v, stop), env, v)
    return env[v.name]


def run_module(
    module: Module, feeds: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Evaluate ``module`` on ``feeds``: dense ops in ONNX Runtime, MoE layers by the numpy
    reference (with whatever weights the IR holds, e.g. dequantized ones).

    Returns (graph outputs by name, each MoE layer's input ``[tokens, hidden]`` by layer name).
    """
    env = dict(feeds)
    inputs: dict[str, np.ndarray] = {}
    stop = set(feeds) | set(module.weights) | {op.outputs[0].name for op in module.moe_ops()}
    for op in module.moe_ops():
        layer: MoELayer = op.layer
        x_val = op.inputs[0]
        if x_val is None:
            raise ModelError("moe op without input", layer.name)
        x = np.asarray(_value(module, x_val, env, stop), np.float32)
        env[op.outputs[0].name] = evaluate(layer, x)
        inputs[layer.name] = x.reshape(-1, layer.hidden)
    outputs = {v.name: np.asarray(_value(module, v, env, stop)) for v in module.outputs}
    return outputs, inputs


def layer_inputs(module: Module, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each MoE layer's input activations ``[tokens, hidden]`` on ``feeds``."""
    return run_module(module, feeds)[1]


def routing_source(module: Module, trace: str, seed: int, tokens: int) -> RoutingTrace:
    """The routing trace ``trace`` (a file, or ``synth:...``) checked against ``module``."""
    layers = [op.layer for op in module.moe_ops()]
    shape = [(lay.num_experts, lay.top_k) for lay in layers]
    spec = parse_routing_spec(trace or f"synth:zipf=1.0,seed={seed}")
    if isinstance(spec, str):
        tr = load_trace(spec)
        if len(tr.layers) > len(shape):
            tr = tr.head(len(shape))
        validate(tr, shape, where=spec)
        return tr
    return spec.make(shape, tokens, num_dies=1, model=module.name)


def calibrate(
    module: Module, *, seed: int = 0, tokens: int = 64, trace: str = ""
) -> list[LayerCalibration]:
    """Per MoE layer (graph order): its calibration routing, and inputs when weights exist.

    Numerics when every layer's weights are present and no ``trace`` is given; otherwise the
    routing of ``trace`` (default ``synth:zipf=1.0,seed=<seed>`` with ``tokens`` tokens).
    """
    layers: list[MoELayer] = [op.layer for op in module.moe_ops()]
    if not layers:
        return []
    if not trace and all(lay.weights_present for lay in layers):
        xs = layer_inputs(module, seeded_inputs(module, seed, tokens))
        out = []
        for lay in layers:
            ids, gates = route(lay, xs[lay.name])
            out.append(LayerCalibration(lay.name, ids, gates, xs[lay.name]))
        return out
    tr = routing_source(module, trace, seed, tokens)
    return [
        LayerCalibration(lay.name, lr.ids, lr.gates)
        for lay, lr in zip(layers, tr.layers, strict=True)
    ]


def describe(module: Module, *, seed: int, tokens: int, trace: str) -> str:
    """A one-line provenance of :func:`calibrate`'s data (stored in ``module.metadata``)."""
    layers = [op.layer for op in module.moe_ops()]
    if not trace and layers and all(lay.weights_present for lay in layers):
        return f"numerics:seed={seed},tokens={tokens}"
    return f"trace:{trace or f'synth:zipf=1.0,seed={seed}'},tokens={tokens}"
