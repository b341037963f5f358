"""Dimension and token inference for the lowering: symbolic dimension sizes, value sizes, tokens.

:func:`resolve_dims` gives every symbolic input dimension a size (``--dims``, else
:func:`default_dim`); :func:`value_sizes` fills the element counts ONNX shape inference left
unknown; :func:`infer_tokens` tells the tokens per iteration of the MoE layers (``--tokens``, else
the routing trace's, else the layer inputs' shapes).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from moec.ir.errors import ModelError, TraceError
from moec.ir.graph import Module, Op, Value
from moec.ir.routing import RoutingTrace

#: Ops that only move or reshape data: no FLOPs, no DRAM in the island estimate.
DATA_MOVEMENT = frozenset({
    "Reshape", "Transpose", "Concat", "Split", "Slice", "Squeeze", "Unsqueeze", "Flatten", "Cast",
    "Identity", "Shape", "Size", "Constant", "ConstantOfShape", "Expand", "Range", "Gather",
    "GatherElements", "GatherND", "ScatterND", "ScatterElements", "Tile", "Pad", "NonZero",
    "CastLike", "Trilu", "Where", "Equal", "Less", "Greater", "Not", "And", "Or", "EyeLike",
})  # fmt: skip


def default_dim(name: str) -> int:
    """The size a symbolic dimension gets when nobody says: 2 for a batch, 8 otherwise."""
    return 2 if "batch" in name.lower() else 8


def resolve_dims(module: Module, given: Mapping[str, int] | None = None) -> dict[str, int]:
    """A size for every symbolic dimension of the module's inputs: ``given``, else the default."""
    out: dict[str, int] = {}
    given = dict(given or {})
    for v in module.inputs:
        for d in v.type.shape if v.type is not None else ():
            if isinstance(d, str) and d not in out:
                out[d] = given.get(d, default_dim(d))
    for k, v in given.items():
        if v < 0:  # 0 is a real size: an empty past cache (a prompt's first step)
            raise ModelError(f"dimension {k} must be >= 0, found {v}", "--dims")
        out.setdefault(k, v)
    return dict(sorted(out.items()))


Size = tuple[int, int | None]  # (elements, last dimension or None when unknown)


def _known_size(v: Value, dims: Mapping[str, int]) -> Size | None:
    if v.type is None or (not v.type.shape and v.weight is None):
        return None  # rank 0 from a failed inference is "unknown", not a scalar
    n = 1
    for d in v.type.shape:
        if isinstance(d, str):
            if d not in dims:
                return None
            n *= dims[d]
        else:
            n *= d
    last = v.type.shape[-1] if v.type.shape else 1
    return n, (dims.get(last) if isinstance(last, str) else last)


def value_sizes(module: Module, dims: Mapping[str, int]) -> dict[str, Size]:
    """Elements (and last dimension) of every value, filling gaps ONNX shape inference left.

    Values after an op inference does not know (``com.microsoft.MoE``) or behind a computed
    reshape come out untyped; they are filled along the way: ``moe`` keeps its input's size,
    ``MatMul``/``Gemm`` by a constant ``[K, N]`` gives ``elements / K * N``, ``Reshape`` keeps the
    elements (and takes the last dimension from a constant shape), other data movement is left
    unknown, anything else takes its largest activation input's size (right for elementwise ops and normalizations).
    """
    sizes: dict[str, Size] = {}
    for v in module.inputs:
        s = _known_size(v, dims)
        if s is not None:
            sizes[v.name] = s
    for w in module.weights.values():
        shape = w.type.shape
        sizes[w.name] = (w.type.numel, int(shape[-1]) if shape else 1)
    for op in module.ops:
        ins = [sizes.get(v.name) if v is not None else None for v in op.inputs]
        for k, out in enumerate(op.outputs):
            s = _known_size(out, dims)
            if s is None and k == 0 and ins and ins[0] is not None:
                s = _infer(op, ins)
            if s is not None:
                sizes[out.name] = s
    return sizes


def _infer(op: Op, ins: list[Size | None]) -> Size | None:
    first = ins[0]
    assert first is not None
    if op.is_moe:
        return first
    w = op.inputs[1].weight if len(op.inputs) > 1 and op.inputs[1] is not None else None
    if op.kind in ("MatMul", "Gemm") and w is not None and len(w.type.shape) >= 2:
        k, n = int(w.type.shape[-2]), int(w.type.shape[-1])
        if op.kind == "Gemm" and op.attrs.get("transB", 0):
            k, n = n, k
        return first[0] // max(k, 1) * n, n
    if op.kind == "Reshape":
        last = None
        if w is not None and w.present and w.type.numel:
            tail = int(np.asarray(w.array()).reshape(-1)[-1])
            last = tail if tail > 0 else None
        return first[0], last
    if op.kind in ("Cast", "Identity", "CastLike"):
        return first
    if op.kind in DATA_MOVEMENT:
        return None
    acts = [
        s
        for s, v in zip(ins, op.inputs, strict=True)
        if s is not None and v is not None and v.weight is None
    ]
    return max(acts, key=lambda s: s[0]) if acts else None


def numel(v: Value | None, sizes: Mapping[str, Size]) -> int | None:
    """Elements of ``v`` from :func:`value_sizes`; None when unknown."""
    if v is None or v.name not in sizes:
        return None
    return sizes[v.name][0]


# --- tokens ---------------------------------------------------------------------------------------
def _layer_tokens(op: Op, sizes: Mapping[str, Size]) -> int | None:
    x = op.inputs[0]
    n = numel(x, sizes)
    hidden = op.layer.hidden
    return n // hidden if n is not None and n % hidden == 0 and n >= 0 else None


def _shape_tokens(module: Module, ops: list[Op], dims: Mapping[str, int]) -> set[int]:
    sizes = value_sizes(module, dims)
    return {n for n in (_layer_tokens(op, sizes) for op in ops) if n is not None}


def infer_tokens(
    module: Module,
    ops: list[Op],
    given: Mapping[str, int] | None,
    tokens: int | None,
    routing: RoutingTrace | None,
    where: str,
) -> tuple[int, dict[str, int]]:
    """Tokens per iteration and the symbolic dimension sizes that go with them.

    With ``--tokens`` or a trace, symbolic dimensions nobody set become 1 except the last one,
    which takes the token count (``[batch, seq]`` -> batch 1, seq T), so the dense islands are
    estimated for the same tokens. A model whose shapes fix the tokens (static shapes) must
    agree, unless it is shape-only (timing runs at any token count).
    """
    if tokens is not None and tokens < 1:
        raise ModelError(f"--tokens must be >= 1, found {tokens}", where)
    want = tokens if tokens is not None else (routing.tokens if routing is not None else None)
    dims = resolve_dims(module, given)
    if want is None:
        # Every layer sees the same tokens; layers after ops without shape inference say nothing.
        known = _shape_tokens(module, ops, dims)
        if len(known) != 1:
            raise ModelError(
                "cannot tell the tokens per iteration from the MoE layers' input shapes "
                f"(found {sorted(known) or 'none'}); give --tokens N",
                where,
            )
        found = known.pop()
        if found < 1:
            raise ModelError(
                f"the MoE layers get no tokens with these dimension sizes ({_sizes(dims)})", where
            )
        return found, dims
    static = _shape_tokens(module, ops, {})
    if static and want not in static and _has_weights(ops):
        src = "--tokens" if tokens is not None else "the routing trace"
        raise (TraceError if tokens is None else ModelError)(
            f"{src} gives {want} tokens, but the model's MoE layers have {min(static)} "
            "(static shapes)",
            where,
        )
    free = [d for d in dims if d not in (given or {})]
    if free:
        trial = {**dims, **{d: 1 for d in free}}
        trial[free[-1]] = want
        if _shape_tokens(module, ops, trial) <= {want}:
            dims = trial
    return want, dims


def _sizes(dims: Mapping[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(dims.items()))


def _has_weights(ops: list[Op]) -> bool:
    return all(op.layer.weights_present for op in ops)
