"""Export of a per-expert precision plan to ONNX that ONNX Runtime 1.32 computes exactly.

``assign-precision`` leaves each routed expert's weights *dequantized* in the graph IR and the
plan in ``layer.annotations.precision`` (a list). This writer (registered as
``EXPERT_WRITERS["mixed"]`` of :mod:`moec.compiler.frontend.export`) writes the layer in one of
two forms; ``auto`` picks QMoE where the layer renormalizes its top-k weights and QDQ elsewhere,
because ONNX Runtime 1.32's CPU QMoE renormalizes regardless of ``normalize_routing_weights=0``
(measured: 0.7 relative error against the non-renormalized reference).

**QMoE** (``qmoe``): one node per precision group, all fed the same router logits, so all compute
the same routing; experts outside a group have zero weights and biases in its node, so they add
exactly zero, and the group outputs are summed (``Add``):

- fp16 (and fp32) experts: ``com.microsoft.MoE`` with the float weights (fp16-rounded values are
  exact in float32);
- int8/int4 experts: ``com.microsoft.QMoE`` with ``expert_weight_bits`` 8 or 4, symmetric (no zero
  points: QMoE's default ``2**(bits-1)``), per-row or ``block_size`` scales. The integers and
  scales are recovered bit-for-bit from the dequantized weights by
  :func:`moec.compiler.quantize.requantize` (weights not on such a grid are an error naming the
  layer), so ORT's ``(q - zp) * scale`` equals the IR's weights exactly.

**QDQ** (``qdq``): one ``com.microsoft.MoE`` whose fc1/fc2 weights are computed in the graph: per
precision group an INT8/INT4 initializer through ``DequantizeLinear`` (opset 21, blocked: per-row
scales are one block of the whole row), fp16 groups as float initializers, ``Concat`` and a
``Gather`` back into expert order. ``(q - 0) * scale`` is the same exact product.

Routed scaling is folded into fc2 (scales and bias), as the float writer does. ``quant_block``
applies to the int4 group only (int8 is per channel: ORT's block-wise 8-bit path quantizes the
activations, which moec does not model).

    moe(%x) {precision=[fp16, int8, int4, ...]}  ->  MatMul(router) -> MoE(fp16 group)
                                                                    -> QMoE(8-bit group)  -> Add
                                                                    -> QMoE(4-bit group)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from moec.compiler.frontend import export
from moec.compiler.frontend.export import EXPERT_WRITERS, OrtRows, _Out, _write_float_moe, ort_rows
from moec.compiler.quantize import BITS, PRECISIONS, QuantizedTensor, pack4, requantize, unpack4
from moec.ir.errors import ModelError
from moec.ir.graph import Module, TensorType, Weight
from moec.ir.moe import EXPERT_KEYS, MoELayer


def _masked(layer: MoELayer, experts: list[int]) -> MoELayer:
    """A copy of ``layer`` whose experts outside ``experts`` have zero weights and biases."""
    keep = np.zeros(layer.num_experts, dtype=bool)
    keep[experts] = True
    weights = dict(layer.weights)
    for key in EXPERT_KEYS:
        if key in weights:
            arr = np.array(layer.array(key), np.float32, copy=True)
            arr[~keep] = 0.0
            weights[key] = Weight(weights[key].name, TensorType("f32", arr.shape), arr)
    return dataclasses.replace(layer, weights=weights)


def _zero_quant(E: int, N: int, K: int, bits: int, block: int | None) -> QuantizedTensor:
    stored = np.full((E, N, K), 2 ** (bits - 1), np.uint8)
    packed = pack4(stored) if bits == 4 else stored
    scales = np.ones((E, N, K // block) if block else (E, N), np.float32)
    return QuantizedTensor(packed, scales, bits, block, (E, N, K))


def _quant_rows(
    layer: MoELayer, rows: np.ndarray, experts: list[int], bits: int, block: int | None, what: str
) -> QuantizedTensor:
    """Rows ``[E, N, K]`` (float) as a QMoE tensor: ``experts`` requantized, the rest zero."""
    E, N, K = rows.shape
    out = _zero_quant(E, N, K, bits, block)
    got = requantize(rows[experts], bits, block)
    if got is None:
        raise ModelError(
            f"{what} of experts {experts} are not on an int{bits} grid "
            f"(block {block or 'per row'}); quantize them with assign-precision first",
            layer.name,
        )
    out.packed[experts] = got.packed
    out.scales[experts] = got.scales
    return out


def _block(layer: MoELayer, bits: int) -> int | None:
    # quant_block applies to int4 experts only: ORT's block-wise 8-bit QMoE path also quantizes
    # the activations, so assign-precision keeps int8 per channel.
    raw = layer.annotations.quant_block
    return int(raw) if raw and bits == 4 else None


def _write_qmoe(
    out: _Out, layer: MoELayer, x: str, logits: str, rows: OrtRows, experts: list[int], bits: int
) -> str:
    """One ``com.microsoft.QMoE`` computing ``experts`` (the others have zero weights)."""
    block = _block(layer, bits)
    keep = np.zeros(layer.num_experts, dtype=bool)
    keep[experts] = True
    attrs = dict(rows.attrs, expert_weight_bits=bits, weights_prepacked=0)
    if block:
        attrs["block_size"] = block

    def masked(b: np.ndarray | None) -> np.ndarray | None:
        return None if b is None else np.where(keep[:, None], b, np.float32(0.0))

    q1 = _quant_rows(layer, rows.fc1, experts, bits, block, "fc1 (gate/up) weights")
    q2 = _quant_rows(layer, rows.fc2, experts, bits, block, "fc2 (down) weights")
    scale = np.float32(layer.routed_scaling)
    b1, b2 = masked(rows.b1), masked(rows.b2)
    n = f"{layer.name}.int{bits}"
    ins = [x, logits, out.init(f"{n}.fc1", q1.packed), out.init(f"{n}.fc1_scales", q1.scales)]
    ins.append(out.init(f"{n}.fc1_b", b1) if b1 is not None else "")
    ins += [out.init(f"{n}.fc2", q2.packed), out.init(f"{n}.fc2_scales", q2.scales * scale)]
    ins.append(out.init(f"{n}.fc2_b", b2 * scale) if b2 is not None else "")
    while ins[-1] == "":
        ins.pop()
    return out.node("QMoE", ins, f"{n}.experts", domain="com.microsoft", **attrs)


def _qmoe_groups(out: _Out, layer: MoELayer, x: str, logits: str, plan: list[str]) -> str:
    rows = ort_rows(layer)
    ys: list[str] = []
    for precision in (*PRECISIONS, "fp32"):
        experts = [e for e, p in enumerate(plan) if p == precision]
        if not experts:
            continue
        if precision in BITS:
            ys.append(_write_qmoe(out, layer, x, logits, rows, experts, BITS[precision]))
        else:
            part = _masked(layer, experts)
            part.name = f"{layer.name}.{precision}"
            ys.append(_write_float_moe(out, part, x, logits))
    y = ys[0]
    for i, other in enumerate(ys[1:]):
        y = out.node("Add", [y, other], f"{layer.name}.sum_groups{i}")
    return y


def _int_tensor(name: str, values: np.ndarray, bits: int) -> onnx.TensorProto:
    if bits == 8:
        return numpy_helper.from_array(values.astype(np.int8), name)
    return helper.make_tensor(
        name, TensorProto.INT4, list(values.shape), values.reshape(-1).tolist()
    )


def _qdq_weight(
    out: _Out, layer: MoELayer, rows: np.ndarray, plan: list[str], what: str, scale: float
) -> str:
    """``rows [E, N, K]`` as a value: per precision group an int initializer + DequantizeLinear
    (or a float initializer), concatenated and gathered back into expert order."""
    E, N, K = rows.shape
    parts: list[str] = []
    order: list[int] = []
    for precision in (*PRECISIONS, "fp32"):
        experts = [e for e, p in enumerate(plan) if p == precision]
        if not experts:
            continue
        base = f"{layer.name}.{what}.{precision}"
        if precision in BITS:
            bits = BITS[precision]
            block = _block(layer, bits)
            qt = _quant_rows(layer, rows[experts], list(range(len(experts))), bits, block, what)
            vals = (unpack4(qt.packed) if bits == 4 else qt.packed).astype(np.int16) - 2 ** (
                bits - 1
            )
            name = out.fresh(f"{base}_q")
            out.inits.append(_int_tensor(name, vals, bits))
            scales = qt.scales.reshape(len(experts), N, K // (block or K)) * np.float32(scale)
            parts.append(
                out.node(
                    "DequantizeLinear", [name, out.init(f"{base}_scales", scales)], base,
                    axis=2, block_size=block or K,
                )
            )  # fmt: skip
        else:
            parts.append(out.init(base, rows[experts] * np.float32(scale)))
        order += experts
    if len(parts) == 1:
        return parts[0]
    cat = out.node("Concat", parts, f"{layer.name}.{what}.concat", axis=0)
    where = np.argsort(np.array(order))  # expert e sits at position where[e] of the concat
    return out.node(
        "Gather", [cat, out.init(f"{layer.name}.{what}.order", where.astype(np.int64))],
        f"{layer.name}.{what}", axis=0,
    )  # fmt: skip


def _qdq(out: _Out, layer: MoELayer, x: str, logits: str, plan: list[str]) -> str:
    rows = ort_rows(layer)
    scale = float(layer.routed_scaling)
    fc1 = _qdq_weight(out, layer, rows.fc1, plan, "fc1", 1.0)
    fc2 = _qdq_weight(out, layer, rows.fc2, plan, "fc2", scale)
    ins = [x, logits, fc1]
    ins.append(out.init(f"{layer.name}.fc1_b", rows.b1) if rows.b1 is not None else "")
    ins.append(fc2)
    if rows.b2 is not None:
        ins.append(out.init(f"{layer.name}.fc2_b", rows.b2 * np.float32(scale)))
    return out.node("MoE", ins, f"{layer.name}.experts", domain="com.microsoft", **rows.attrs)


FORMATS = ("auto", "qmoe", "qdq")
_format = ["auto"]


def write_mixed(out: _Out, layer: MoELayer, x: str, logits: str) -> str:
    """The ``EXPERT_WRITERS["mixed"]`` writer (see the module docstring)."""
    plan = [str(p) for p in layer.annotations.precision]
    if len(plan) != layer.num_experts:
        raise ModelError(
            f"precision table has {len(plan)} entries, expected {layer.num_experts}", layer.name
        )
    unknown = sorted(set(plan) - {*PRECISIONS, "fp32"})
    if unknown:
        raise ModelError(
            f"unknown expert precision {unknown[0]!r} in the precision table", layer.name
        )
    fmt = _format[0]
    if fmt == "auto":
        fmt = "qmoe" if layer.normalize_topk else "qdq"
    if fmt == "qmoe" and not layer.normalize_topk:
        raise ModelError(
            "QMoE export needs normalize_routing_weights=1 (ONNX Runtime 1.32's QMoE "
            "renormalizes the top-k weights regardless); use --format qdq",
            layer.name,
        )
    return (_qmoe_groups if fmt == "qmoe" else _qdq)(out, layer, x, logits, plan)


EXPERT_WRITERS["mixed"] = write_mixed


def export_onnx(module: Module, fmt: str = "auto") -> onnx.ModelProto:
    """:func:`moec.compiler.frontend.export.export_onnx` with the mixed-precision writer active.

    ``fmt``: ``qmoe``, ``qdq``, or ``auto`` (QMoE where the layer renormalizes its top-k
    weights, QDQ elsewhere). QDQ needs ai.onnx opset 21 (int4 and blocked DequantizeLinear),
    so a model using it is written at opset 21.
    """
    if fmt not in FORMATS:
        raise ModelError(f"unknown export format {fmt!r}, expected one of {', '.join(FORMATS)}")
    _format[0] = fmt
    try:
        model = export.export_onnx(module)
    finally:
        _format[0] = "auto"
    if any(n.op_type == "DequantizeLinear" for n in model.graph.node):
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx") and imp.version < 21:
                imp.version = 21
    return model
