"""The pattern framework: a read-only view of an ONNX graph and the registry of MoE recognizers.

A *recognizer* is a function ``(view, node) -> Lifted | Mismatch | None`` called at each
*anchor* node (``TopK`` for decomposed forms, ``MoE``/``QMoE`` for fused ones):

- ``None``: this node is not an anchor of this pattern (try the next recognizer);
- ``Mismatch(node, reason)``: the node anchors this pattern but the MoE structure around it is
  only half there (the reason says what was expected and what was found);
- ``Lifted(layer, input, output, nodes)``: the MoE layer, the ONNX value names of its input ``x``
  and output ``y`` (same shape), and the indices of every node it replaces.

Recognizers register themselves with :func:`register`; :mod:`moec.compiler.frontend.lift` runs
them in registration order (fused forms, moec's own decomposed form, then the ``hf_*`` modules).

    @register("mixtral-batched-mm", anchors=("TopK",))
    def mixtral(view: GraphView, node: onnx.NodeProto) -> Lifted | Mismatch | None: ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from moec.ir.errors import ModelError
from moec.ir.graph import TensorType, Weight
from moec.ir.moe import MoELayer

ONNX_DTYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "f32", onnx.TensorProto.DOUBLE: "f64",
    onnx.TensorProto.FLOAT16: "f16", onnx.TensorProto.BFLOAT16: "bf16",
    onnx.TensorProto.INT64: "i64", onnx.TensorProto.INT32: "i32", onnx.TensorProto.INT16: "i16",
    onnx.TensorProto.INT8: "i8", onnx.TensorProto.UINT8: "u8", onnx.TensorProto.INT4: "i4",
    onnx.TensorProto.UINT4: "u4", onnx.TensorProto.BOOL: "bool", onnx.TensorProto.STRING: "str",
}  # fmt: skip

# Model metadata key marking moec's shape-only files (weights declared, not stored).
SHAPE_ONLY_KEY = "moec.shape_only"


def dtype_name(elem_type: int) -> str:
    """moec dtype name of an ONNX element type (``f32`` for FLOAT, ...)."""
    name = ONNX_DTYPES.get(elem_type)
    if name is None:
        raise ModelError(
            f"unsupported ONNX element type {onnx.TensorProto.DataType.Name(elem_type)}"
        )
    return name


def is_declared_only(tensor: onnx.TensorProto) -> bool:
    """True for an initializer whose data is not in memory (external and not loaded)."""
    return tensor.data_location == onnx.TensorProto.EXTERNAL and not tensor.raw_data


@dataclass(frozen=True)
class Mismatch:
    """An anchor node whose MoE structure is only half recognized."""

    node: str
    reason: str


@dataclass(frozen=True)
class Lifted:
    """One recognized MoE layer: the canonical layer, its x and y, and the nodes it replaces."""

    layer: MoELayer
    input: str
    output: str
    nodes: frozenset[int]


Recognizer = Callable[["GraphView", onnx.NodeProto], "Lifted | Mismatch | None"]


@dataclass(frozen=True)
class Registration:
    name: str
    anchors: tuple[str, ...]
    fn: Recognizer


RECOGNIZERS: list[Registration] = []


class NoMatch(Exception):
    """Raised inside a matcher: the anchor starts like this pattern but the rest differs."""

    def __init__(self, node: str, reason: str) -> None:
        super().__init__(reason)
        self.node = node
        self.reason = reason


class NotThisPattern(Exception):
    """Raised inside a matcher: the anchor is not an anchor of this pattern at all."""


def lifted_or_mismatch(
    match: Recognizer, view: GraphView, node: onnx.NodeProto
) -> Lifted | Mismatch | None:
    """Run a matcher that raises: :class:`NotThisPattern` is no match (None), :class:`NoMatch`
    a located :class:`Mismatch`."""
    try:
        return match(view, node)
    except NotThisPattern:
        return None
    except NoMatch as err:
        return Mismatch(err.node, err.reason)


def register(name: str, anchors: Iterable[str]) -> Callable[[Recognizer], Recognizer]:
    """Decorator adding a recognizer tried at nodes whose op_type is in ``anchors``."""

    def wrap(fn: Recognizer) -> Recognizer:
        if any(r.name == name for r in RECOGNIZERS):
            raise ValueError(f"recognizer {name!r} registered twice")
        RECOGNIZERS.append(Registration(name, tuple(anchors), fn))
        return fn

    return wrap


#: Anchors that are ordinary ops when no recognizer claims them (an ArgMax starts a sparsemixer
#: router, but most ArgMax nodes are not routers).
SOFT_ANCHORS = frozenset({"ArgMax"})


def anchor_ops() -> set[str]:
    return {op for r in RECOGNIZERS for op in r.anchors}


@dataclass
class GraphView:
    """Producer/consumer/constant queries over an ONNX graph (nodes are read, never changed).

    Node ids are indices into ``graph.node`` (the file's order, topological in valid ONNX), so
    they are stable; :meth:`name` gives ``op_type_<id>`` for nodes without a name.
    """

    graph: onnx.GraphProto
    where: str = ""
    nodes: list[onnx.NodeProto] = field(init=False)
    _ids: dict[int, int] = field(init=False, repr=False)
    _producer: dict[str, int] = field(init=False, repr=False)
    _consumers: dict[str, list[int]] = field(init=False, repr=False)
    _inits: dict[str, onnx.TensorProto] = field(init=False, repr=False)
    _types: dict[str, onnx.TypeProto] = field(init=False, repr=False)
    _by_name: dict[str, int] = field(init=False, repr=False)
    _const_cache: dict[str, np.ndarray | None] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.nodes = list(self.graph.node)
        self._ids = {id(n): i for i, n in enumerate(self.nodes)}
        self._producer, self._consumers, self._by_name = {}, {}, {}
        for i, n in enumerate(self.nodes):
            for out in n.output:
                if out:
                    self._producer[out] = i
            for inp in n.input:
                if inp:
                    self._consumers.setdefault(inp, []).append(i)
            if n.name:
                self._by_name.setdefault(n.name, i)
        self._inits = {t.name: t for t in self.graph.initializer}
        self._types = {}
        for vi in [*self.graph.input, *self.graph.value_info, *self.graph.output]:
            if vi.type.HasField("tensor_type"):
                self._types.setdefault(vi.name, vi.type)
        self._const_cache = {}

    # --- nodes -------------------------------------------------------------------------------
    def id(self, node: onnx.NodeProto) -> int:
        return self._ids[id(node)]

    def name(self, node: onnx.NodeProto | int) -> str:
        """The node's name, or ``<op_type>_<id>`` when it has none (stable across runs)."""
        n = self.nodes[node] if isinstance(node, int) else node
        return n.name or f"{n.op_type}_{self._ids[id(n)]}"

    def node(self, name: str) -> onnx.NodeProto | None:
        i = self._by_name.get(name)
        return self.nodes[i] if i is not None else None

    def producer(self, value: str) -> onnx.NodeProto | None:
        i = self._producer.get(value)
        return self.nodes[i] if i is not None else None

    def consumers(self, value: str) -> list[onnx.NodeProto]:
        return [self.nodes[i] for i in self._consumers.get(value, [])]

    def is_graph_output(self, value: str) -> bool:
        return any(o.name == value for o in self.graph.output)

    @staticmethod
    def attr(node: onnx.NodeProto, key: str, default: Any = None) -> Any:
        """Python value of an attribute (str for strings), or ``default`` when absent."""
        for a in node.attribute:
            if a.name == key:
                v = onnx.helper.get_attribute_value(a)
                return v.decode() if isinstance(v, bytes) else v
        return default

    # --- constants and types ------------------------------------------------------------------
    def initializer(self, value: str) -> onnx.TensorProto | None:
        return self._inits.get(value)

    def is_constant(self, value: str) -> bool:
        """An initializer (present or declared only) or the output of a Constant node."""
        if value in self._inits:
            return True
        p = self.producer(value)
        return p is not None and p.op_type == "Constant"

    def constant(self, value: str) -> np.ndarray | None:
        """The numpy value of an initializer or Constant node, or an Identity of one (the
        TorchScript exporter writes equal parameters once, the others as Identity of it); None
        if not one or declared only."""
        if value in self._const_cache:
            return self._const_cache[value]
        result: np.ndarray | None = None
        t = self._inits.get(value)
        if t is not None:
            result = None if is_declared_only(t) else numpy_helper.to_array(t)
        else:
            p = self.producer(value)
            if p is not None and p.op_type == "Constant":
                result = _constant_node_value(p)
            elif p is not None and p.op_type == "Identity" and p.input[0] in self._inits:
                result = self.constant(p.input[0])
        self._const_cache[value] = result
        return result

    def weight(self, value: str) -> Weight | None:
        """A constant as a :class:`Weight` (data None when declared only); None if not constant."""
        if not self.is_constant(value):
            return None
        t = self._inits.get(value)
        if t is not None and is_declared_only(t):
            return Weight(value, TensorType(dtype_name(t.data_type), tuple(int(d) for d in t.dims)))
        arr = self.constant(value)
        if arr is None:
            return None
        return Weight(value, _array_type(arr), arr)

    def tensor_type(self, value: str) -> TensorType | None:
        """Declared element type and shape (from inputs, value_info, outputs, initializers)."""
        t = self._inits.get(value)
        if t is not None:
            return TensorType(dtype_name(t.data_type), tuple(int(d) for d in t.dims))
        ty = self._types.get(value)
        if ty is None:
            arr = self.constant(value)
            return _array_type(arr) if arr is not None else None
        tt = ty.tensor_type
        if tt.elem_type not in ONNX_DTYPES:
            return None
        dims: list[int | str] = []
        if tt.HasField("shape"):
            for i, d in enumerate(tt.shape.dim):
                if d.HasField("dim_value"):
                    dims.append(int(d.dim_value))
                else:
                    dims.append(d.dim_param or f"{value}_d{i}")
        return TensorType(ONNX_DTYPES[tt.elem_type], tuple(dims))

    def fail(self, node: onnx.NodeProto, reason: str) -> Mismatch:
        return Mismatch(self.name(node), reason)


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


_NP_DTYPES = {
    "float32": "f32", "float64": "f64", "float16": "f16", "int64": "i64", "int32": "i32",
    "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "bool",
}  # fmt: skip


def _array_type(arr: np.ndarray) -> TensorType:
    return TensorType(_NP_DTYPES.get(str(arr.dtype), "f32"), tuple(int(s) for s in arr.shape))
