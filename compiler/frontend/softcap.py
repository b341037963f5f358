"""Soft-capped SwiGLU experts (Inkling-2), matched by dataflow after the gate/up split.

``softcap(v, c) = c * tanh(v / c)`` bounds a value smoothly to (-c, c). Inkling-2's experts
compute ``softcap(gate, c_g) * sigmoid(gate) * softcap(up, c_u)``: SiLU whose linear gate factor
and the up projection are soft-capped (the sigmoid sees the raw gate)::

    gate -> Div(c_g) -> Tanh -> Mul(c_g) --\\
    gate -> Sigmoid ------------------------ Mul --\\
    up   -> Div(c_u) -> Tanh -> Mul(c_u) ----------- Mul -> down projection

Either cap may be absent (a plain factor); with neither it is SiLU, matched elsewhere. The
canonical op keeps ``activation="silu"`` with ``gate_softcap``/``up_softcap``.
"""

from __future__ import annotations

import onnx

from moec.compiler.frontend.hf_routing import Walk


def _softcap_of(walk: Walk, value: str) -> tuple[float, str] | None:
    """``c * tanh(value / c)`` among the consumers of ``value``: (c, output), nodes recorded."""
    for c in walk.consumers(value):
        if c.input[0] != value or c.op_type not in ("Div", "Mul"):
            continue
        k = walk.scalar(c.input[1])
        if not k:
            continue
        cap = k if c.op_type == "Div" else 1.0 / k
        tanh = walk.of_type(c.output[0], "Tanh")
        if len(tanh) != 1:
            continue
        for m in walk.of_type(tanh[0].output[0], "Mul"):
            back = walk.scalar(walk.other(m, tanh[0].output[0]))
            if back is not None and abs(back - cap) <= 1e-6 * abs(cap):
                for node in (c, tanh[0], m):
                    walk.take(node)
                return cap, m.output[0]
    return None


def _mul_of(walk: Walk, a: str, b: str) -> onnx.NodeProto | None:
    muls = [m for m in walk.of_type(a, "Mul") if walk.other(m, a) == b]
    return muls[0] if len(muls) == 1 else None


def match_softcapped_silu(
    walk: Walk, gate: str, up: str
) -> tuple[float | None, float | None, str] | None:
    """``softcap(gate) * sigmoid(gate) * softcap(up)`` with at least one cap:
    (gate cap, up cap, output), or None."""
    sig = walk.of_type(gate, "Sigmoid")
    if len(sig) != 1:
        return None
    cg, cu = _softcap_of(walk, gate), _softcap_of(walk, up)
    if cg is None and cu is None:
        return None
    first = _mul_of(walk, sig[0].output[0], cg[1] if cg else gate)
    second = _mul_of(walk, first.output[0], cu[1] if cu else up) if first is not None else None
    if first is None or second is None:
        return None
    for node in (sig[0], first, second):
        walk.take(node)
    return (cg[0] if cg else None), (cu[0] if cu else None), second.output[0]
