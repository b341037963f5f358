"""The graph IR: a module of ops over named values, with weights present or declared only.

Ordinary ONNX ops stay as they are ("dense islands": ``Op(kind="MatMul", domain="")``); every
MoE layer is one canonical ``moe`` op (see :mod:`moec.ir.moe`). Values know their producer and
their uses; ops compare by identity. The printer is deterministic, so two modules built from the
same input print the same text.

    module "tiny" {
      input %x : f32[T,64]
      weight @w0 : f32[64,64] present
      %h = MatMul(%x, @w0)
      %y = moe(%h) {experts=8, top_k=2, hidden=64, ffn=128, ...}
      output %y
    }
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from moec.ir.errors import ModelError
from moec.ir.names import NameScope

if TYPE_CHECKING:
    from moec.ir.moe import MoELayer

DTYPE_BYTES: dict[str, float] = {
    "f64": 8, "f32": 4, "f16": 2, "bf16": 2, "i64": 8, "i32": 4, "i16": 2, "i8": 1, "u8": 1,
    "i4": 0.5, "u4": 0.5, "u2": 0.25, "bool": 1, "str": 8,
}  # fmt: skip

Dim = int | str


@dataclass(frozen=True)
class TensorType:
    """Element type and shape; a dimension is an int or a symbolic name (dynamic)."""

    dtype: str
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"unknown dtype {self.dtype!r}")
        for d in self.shape:
            if isinstance(d, int) and d < 0:
                raise ValueError(f"negative dimension in {self.shape}")

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> int:
        if not self.is_static:
            raise ValueError(f"shape {self.shape} is not static")
        n = 1
        for d in self.shape:
            n *= int(d)
        return n

    @property
    def nbytes(self) -> int:
        return int(np.ceil(self.numel * DTYPE_BYTES[self.dtype]))

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


@dataclass(eq=False)
class Weight:
    """A constant tensor: ``data`` is the numpy array, or None when only declared (shape-only)."""

    name: str
    type: TensorType
    data: np.ndarray | None = None

    @property
    def present(self) -> bool:
        return self.data is not None

    def array(self) -> np.ndarray:
        if self.data is None:
            raise ModelError(f"weight {self.name!r} is declared only (shape-only model)")
        return self.data


@dataclass(eq=False)
class Value:
    """A named SSA value. ``producer`` is None for module inputs and weights."""

    name: str
    type: TensorType | None = None
    producer: Op | None = None
    uses: list[Op] = field(default_factory=list)
    weight: Weight | None = None

    def __repr__(self) -> str:
        return f"Value({self.name!r})"


@dataclass(eq=False)
class Op:
    """An operation. ``kind`` is an ONNX op type (with ``domain``) or ``"moe"``."""

    kind: str
    inputs: list[Value | None]
    outputs: list[Value]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    domain: str = ""

    @property
    def is_moe(self) -> bool:
        return self.kind == "moe"

    @property
    def layer(self) -> MoELayer:
        """The canonical layer of an ``moe`` op (its ``attrs["layer"]``, typed); a
        :class:`ModelError` for any other op."""
        from moec.ir.moe import MoELayer

        layer = self.attrs.get("layer")
        if not isinstance(layer, MoELayer):
            raise ModelError("not an MoE op with a canonical layer", self.name or self.kind)
        return layer

    def __repr__(self) -> str:
        return f"Op({self.kind}, {self.name!r})"


@dataclass(eq=False)
class Module:
    """A model: inputs, outputs, ops in topological order, and weights by name."""

    name: str
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    weights: dict[str, Weight] = field(default_factory=dict)
    opset: dict[str, int] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    def moe_ops(self) -> list[Op]:
        return [op for op in self.ops if op.is_moe]

    def values(self) -> Iterator[Value]:
        yield from self.inputs
        for op in self.ops:
            yield from op.outputs

    def verify(self) -> None:
        """Check SSA form, topological order, use lists and MoE op consistency."""
        defined: set[str] = {v.name for v in self.inputs} | set(self.weights)
        seen_ops: set[int] = set()
        for op in self.ops:
            where = op.name or op.kind
            for v in op.inputs:
                if v is None:
                    continue
                if v.name not in defined:
                    raise ModelError(f"input {v.name!r} used before it is defined", where)
                if op not in v.uses:
                    raise ModelError(f"use list of {v.name!r} misses this op", where)
            for v in op.outputs:
                if not v.name:  # an omitted optional output keeps its position, defines nothing
                    continue
                if v.name in defined:
                    raise ModelError(f"value {v.name!r} defined twice", where)
                if v.producer is not op:
                    raise ModelError(f"value {v.name!r} does not name this op as producer", where)
                defined.add(v.name)
            if op.is_moe:
                from moec.ir.moe import MoELayer

                layer = op.attrs.get("layer")
                if not isinstance(layer, MoELayer):
                    raise ModelError("moe op without a MoELayer", where)
                layer.verify()
            if id(op) in seen_ops:
                raise ModelError("op listed twice", where)
            seen_ops.add(id(op))
        for v in self.outputs:
            if v.name not in defined:
                raise ModelError(f"output {v.name!r} is never defined", self.name)

    def print(self) -> str:
        """Deterministic text form (for golden tests and ``moec compile --print-ir``)."""
        lines = [f'module "{self.name}" {{']
        for v in self.inputs:
            lines.append(f"  input %{v.name} : {v.type}")
        for name in sorted(self.weights):
            w = self.weights[name]
            lines.append(f"  weight @{name} : {w.type} {'present' if w.present else 'declared'}")
        for op in self.ops:
            outs = ", ".join(f"%{v.name}" for v in op.outputs)
            ins = ", ".join(_operand(v) for v in op.inputs)
            kind = f"{op.domain}.{op.kind}" if op.domain else op.kind
            attrs = _print_attrs(op.attrs)
            lines.append(f"  {outs} = {kind}({ins}){attrs}")
        lines.append("  output " + ", ".join(f"%{v.name}" for v in self.outputs))
        lines.append("}")
        return "\n".join(lines) + "\n"


def _operand(v: Value | None) -> str:
    if v is None:
        return "_"
    return f"@{v.name}" if v.weight is not None else f"%{v.name}"


def _print_attr(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"tensor<{value.dtype}{list(value.shape)}>"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_print_attr(v) for v in value) + "]"
    if isinstance(value, bytes):
        return f"bytes<{len(value)}>"
    if hasattr(value, "summary"):
        return str(value.summary())
    return str(value)


def _print_attrs(attrs: dict[str, Any]) -> str:
    if not attrs:
        return ""
    body = ", ".join(f"{k}={_print_attr(attrs[k])}" for k in sorted(attrs))
    return " {" + body + "}"


class Builder:
    """Appends ops to a module, keeping producers and use lists right."""

    def __init__(self, module: Module) -> None:
        self.module = module
        self._names = NameScope([v.name for v in module.values()] + list(module.weights))

    def fresh(self, base: str) -> str:
        return self._names.fresh(base)

    def input(self, name: str, type: TensorType) -> Value:
        v = Value(self.fresh(name), type)
        self.module.inputs.append(v)
        return v

    def weight(self, name: str, type: TensorType, data: np.ndarray | None = None) -> Value:
        w = Weight(self.fresh(name), type, data)
        self.module.weights[w.name] = w
        return Value(w.name, type, weight=w)

    def op(
        self,
        kind: str,
        inputs: list[Value | None],
        outputs: list[str],
        attrs: dict[str, Any] | None = None,
        *,
        name: str = "",
        domain: str = "",
        types: list[TensorType | None] | None = None,
    ) -> Op:
        op = Op(kind, list(inputs), [], dict(attrs or {}), name=name, domain=domain)
        for i, out in enumerate(outputs):
            t = types[i] if types else None
            op.outputs.append(Value(self.fresh(out), t, producer=op))
        for v in inputs:
            if v is not None:
                v.uses.append(op)
        self.module.ops.append(op)
        return op
