"""The weights companion of a stream program: ``prog.msp.weights.onnx``.

The program carries the schedule; the companion carries the numbers the interpreter computes with.
It is the *residual model* (:func:`moec.compiler.frontend.residual.residual_model`): the original
graph's dense nodes unchanged, each MoE layer one node ``ai.moec::MoE(x) -> y`` with attributes
``layer`` (the ``MoEDecl`` name) and every key of :func:`moec.ir.moe.layer_config` (ints, floats,
strings), and initializers: the dense weights plus each layer's weights in the canonical layout
of :mod:`moec.ir.moe`, named ``<layer>.<key>`` (``moe0.w_gate``, ``moe0.router_w``, ...). A layer
whose experts ``assign-precision`` quantized also records their precisions (one name per expert,
attribute :data:`moec.ir.companion.PRECISION_ATTR`), which the interpreter holds the program's
``precision`` tables to. Graph inputs and outputs are the original model's; IR version 10.

The layers are taken from the graph IR after the pass pipeline, so whatever the passes decided
about a layer's options is what the interpreter runs. The bytes are deterministic (protobuf's
deterministic serialization of a graph built in a fixed order): same model and options, same file.

    companion = companion_bytes(lift_result, module)   # None for shape-only models
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import helper, numpy_helper

from moec.compiler.frontend.lift import LiftResult
from moec.compiler.frontend.residual import MOEC_DOMAIN, residual_model
from moec.ir.companion import PRECISION_ATTR
from moec.ir.errors import ModelError
from moec.ir.graph import Module
from moec.ir.moe import MoELayer, layer_config

#: ONNX IR version of the companion (onnxruntime 1.x refuses newer ones).
IR_VERSION = 10


def companion_name(program_name: str) -> str:
    """File name of the companion of program file ``program_name`` (same folder)."""
    return f"{program_name}.weights.onnx"


def has_weights(module: Module) -> bool:
    """True when every MoE layer's and every dense weight is present (not shape-only)."""
    layers = [op.layer for op in module.moe_ops()]
    return all(ly.weights_present for ly in layers) and all(
        w.present for w in module.weights.values()
    )


def companion_model(lifted: LiftResult, module: Module) -> onnx.ModelProto:
    """The residual model with canonical MoE nodes and weights (see the module docstring)."""
    layers: dict[str, MoELayer] = {op.layer.name: op.layer for op in module.moe_ops()}
    model = residual_model(lifted.model, lifted.lifted)
    g = model.graph
    taken = {t.name for t in g.initializer}
    for node in g.node:
        if node.domain != MOEC_DOMAIN or node.op_type != "MoE":
            continue
        name = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "layer")
        name = name.decode() if isinstance(name, bytes) else str(name)
        layer = layers.get(name)
        if layer is None:
            raise ModelError(f"residual model names MoE layer {name!r}, the module has none", name)
        for key, value in layer_config(layer).items():
            node.attribute.append(helper.make_attribute(key, value))
        precision = layer.annotations.precision
        if isinstance(precision, list) and precision:
            names = [str(p) for p in precision]
            node.attribute.append(helper.make_attribute(PRECISION_ATTR, names))
        for key in sorted(layer.weights):
            tensor_name = f"{name}.{key}"
            if tensor_name in taken:
                raise ModelError(
                    f"initializer {tensor_name!r} of MoE layer {name} clashes with a dense weight",
                    name,
                )
            taken.add(tensor_name)
            g.initializer.append(
                numpy_helper.from_array(np.ascontiguousarray(layer.array(key)), tensor_name)
            )
    model.ir_version = IR_VERSION
    if not any(op.domain == MOEC_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MOEC_DOMAIN, 1))
    return model


def companion_bytes(lifted: LiftResult, module: Module) -> bytes | None:
    """Serialized companion, or None when the model's weights are not present (shape-only)."""
    if not has_weights(module):
        return None
    return companion_model(lifted, module).SerializeToString(deterministic=True)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
