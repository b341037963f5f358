"""A small ONNX graph builder for moec's model builders: seeded weights, or declared-only ones.

``OnnxBuilder(shape_only=True)`` writes every weight as a *declared* initializer (dims and dtype,
data external in a file that is never written, model metadata ``moec.shape_only = "1"``; see
:mod:`moec.compiler.frontend.loader`), so a 671B-parameter preset is a few hundred kilobytes.
Structural constants (axes, shapes, epsilons, scaling factors) are always stored inline.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from moec.ir.names import NameScope

SHAPE_ONLY_KEY = "moec.shape_only"  # same key as moec.compiler.frontend.patterns.SHAPE_ONLY_KEY
IR_VERSION = 10
OPSET = 18


class OnnxBuilder:
    """Collects nodes and initializers and produces a checked ``ModelProto``."""

    def __init__(self, name: str, *, seed: int = 0, shape_only: bool = False) -> None:
        self.name = name
        self.shape_only = shape_only
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.uses_ms = False
        self._names = NameScope()
        self._consts: dict[tuple[str, bytes, tuple[int, ...]], str] = {}

    def fresh(self, base: str) -> str:
        return self._names.fresh(base)

    # --- values -------------------------------------------------------------------------------
    def input(self, name: str, elem: int, shape: list[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(self.fresh(name), elem, shape))
        return self.inputs[-1].name

    def output(self, name: str, elem: int, shape: list[int | str] | None) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem, shape))

    def const(self, base: str, value: np.ndarray | float | int | list[int]) -> str:
        """An inline (always stored) constant; identical constants are shared."""
        arr = np.asarray(value)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        key = (str(arr.dtype), arr.tobytes(), arr.shape)
        if key in self._consts:
            return self._consts[key]
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(arr, name))
        self._consts[key] = name
        return name

    def array(self, base: str, data: np.ndarray) -> str:
        """A weight with the given data (stored even in shape-only mode: use for small data)."""
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(data), name))
        return name

    def weight(self, base: str, shape: tuple[int, ...], scale: float | None = None) -> str:
        """A float weight: seeded normal data (std ``scale`` or 1/sqrt(fan_in)), or declared."""
        name = self.fresh(base)
        if self.shape_only:
            t = TensorProto()
            t.name = name
            t.data_type = TensorProto.FLOAT
            t.dims.extend(shape)
            t.data_location = TensorProto.EXTERNAL
            for key, value in (
                ("location", f"{self.name}.weights"),
                ("offset", "0"),
                ("length", str(4 * int(np.prod(shape, dtype=np.int64)))),
            ):
                e = t.external_data.add()
                e.key, e.value = key, value
            self.initializers.append(t)
            return name
        std = scale if scale is not None else 1.0 / np.sqrt(shape[-2] if len(shape) > 1 else 1)
        data = (self.rng.standard_normal(shape) * std).astype(np.float32)
        self.initializers.append(numpy_helper.from_array(data, name))
        return name

    # --- nodes --------------------------------------------------------------------------------
    def node(
        self,
        op: str,
        inputs: list[str],
        *,
        name: str,
        outputs: int = 1,
        domain: str = "",
        **attrs: Any,
    ) -> list[str]:
        node_name = self.fresh(name)
        outs = [
            self.fresh(f"{node_name}_out{i}" if outputs > 1 else node_name) for i in range(outputs)
        ]
        if domain == "com.microsoft":
            self.uses_ms = True
        self.nodes.append(
            helper.make_node(op, inputs, outs, name=node_name, domain=domain, **attrs)
        )
        return outs

    def op(self, op: str, inputs: list[str], *, name: str, domain: str = "", **attrs: Any) -> str:
        return self.node(op, inputs, name=name, domain=domain, **attrs)[0]

    # --- result -------------------------------------------------------------------------------
    def model(self, metadata: dict[str, str] | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, self.name, self.inputs, self.outputs, self.initializers
        )
        opsets = [helper.make_opsetid("", OPSET)]
        if self.uses_ms:
            opsets.append(helper.make_opsetid("com.microsoft", 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name="moec.models")
        model.ir_version = IR_VERSION
        meta = dict(metadata or {})
        if self.shape_only:
            meta[SHAPE_ONLY_KEY] = "1"
        for k in sorted(meta):
            model.metadata_props.add(key=k, value=meta[k])
        return model
