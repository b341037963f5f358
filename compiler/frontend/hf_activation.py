"""Matching an expert activation written out in an exported ONNX graph (by dataflow).

:func:`match_activation` finds SiLU (``x * Sigmoid(x)``), ReLU, squared ReLU (``Relu`` then
``Pow(., 2)`` or ``Mul(r, r)``), the ``Gelu`` op, and GELU written out in elementary ops (opset < 20:
``0.5 * x * (1 + Erf(x / sqrt 2))``, or the tanh approximation with ``Pow`` and ``Tanh``),
recording the nodes it walks over in a :class:`~moec.compiler.frontend.hf_routing.Walk`.
"""

from __future__ import annotations

import numpy as np
import onnx

from moec.compiler.frontend.hf_routing import Walk


def squared(walk: Walk, value: str) -> str | None:
    """``value ** 2`` (``Pow(value, 2)`` or ``Mul(value, value)``) as the only use of ``value``:
    its output, the node recorded; else None."""
    cs = walk.consumers(value)
    if len(cs) != 1:
        return None
    c = cs[0]
    if c.op_type == "Pow" and c.input[0] == value and walk.scalar(c.input[1]) == 2.0:
        return walk.take(c).output[0]
    if c.op_type == "Mul" and c.input[0] == value and c.input[1] == value:
        return walk.take(c).output[0]
    return None


def match_activation(walk: Walk, value: str) -> tuple[str, str] | None:
    """``act(value)`` among the consumers of ``value``: (activation, output) or None."""
    for c in walk.consumers(value):
        if c.op_type == "Sigmoid":
            for m in walk.of_type(c.output[0], "Mul"):
                if walk.other(m, c.output[0]) == value:
                    walk.take(c)
                    return "silu", walk.take(m).output[0]
        if c.op_type == "Relu":
            out = walk.take(c).output[0]
            sq = squared(walk, out)
            return ("relu2", sq) if sq is not None else ("relu", out)
        if c.op_type == "Gelu":
            kind = "gelu_tanh" if walk.attr(c, "approximate", "none") == "tanh" else "gelu"
            return kind, walk.take(c).output[0]
    return match_gelu(walk, value)


_INV_SQRT2 = 1.0 / np.sqrt(2.0)
_TANH_C = np.sqrt(2.0 / np.pi)


def _close(a: float | None, b: float) -> bool:
    return a is not None and abs(a - b) <= 1e-5 * max(1.0, abs(b))


def _scaled(walk: Walk, value: str, op: str) -> tuple[onnx.NodeProto, float] | None:
    """A consumer ``Mul(value, c)`` / ``Div(value, c)`` of a scalar ``c``: (node, factor)."""
    for c in walk.consumers(value):
        if c.op_type == "Mul" and value in c.input:
            k = walk.scalar(walk.other(c, value))
            if k is not None and op == "Mul":
                return c, k
        if c.op_type == "Div" and c.input[0] == value and op == "Div":
            k = walk.scalar(c.input[1])
            if k:
                return c, 1.0 / k
    return None


def _gelu_tail(walk: Walk, value: str, t: str) -> str | None:
    """``0.5 * value * (1 + t)`` as Add(1) then Muls by constants and by ``value``: the output."""
    adds = [a for a in walk.of_type(t, "Add") if _close(walk.scalar(walk.other(a, t)), 1.0)]
    if len(adds) != 1:
        return None
    out, coef, used_x = walk.take(adds[0]).output[0], 1.0, False
    for _ in range(3):
        if used_x and _close(coef, 0.5):
            return out
        muls = walk.of_type(out, "Mul")
        if len(muls) != 1:
            return None
        other = walk.other(muls[0], out)
        k = walk.scalar(other)
        half = walk.producer(other)
        if k is not None:
            coef *= k
        elif other == value and not used_x:
            used_x = True
        elif half is not None and half.op_type == "Mul" and value in half.input and not used_x:
            k = walk.scalar(walk.other(half, value))
            if k is None:
                return None
            coef, used_x = coef * k, True
            walk.take(half)
        else:
            return None
        out = walk.take(muls[0]).output[0]
    return out if used_x and _close(coef, 0.5) else None


def match_gelu(walk: Walk, value: str) -> tuple[str, str] | None:
    """GELU written out with elementary ops (ONNX opset < 20 exports): (kind, output) or None.

    ``0.5 * x * (1 + erf(x / sqrt 2))`` is ``gelu``; ``0.5 * x * (1 + tanh(sqrt(2/pi) *
    (x + 0.044715 x^3)))`` is ``gelu_tanh``.
    """
    trial = Walk(walk.view)
    for op in ("Div", "Mul"):
        sc = _scaled(trial, value, op)
        if sc is None or not _close(sc[1], _INV_SQRT2):
            continue
        erf = trial.of_type(sc[0].output[0], "Erf")
        if len(erf) == 1:
            trial.take(sc[0])
            out = _gelu_tail(trial, value, trial.take(erf[0]).output[0])
            if out is not None:
                walk.nodes |= trial.nodes
                return "gelu", out
    trial = Walk(walk.view)
    for pw, x3 in _cubes(walk, value):
        cube = _scaled(trial, x3.output[0], "Mul")
        if cube is None or not _close(cube[1], 0.044715):
            continue
        inner = [a for a in trial.of_type(cube[0].output[0], "Add") if value in a.input]
        if len(inner) != 1:
            continue
        sc = _scaled(trial, inner[0].output[0], "Mul")
        if sc is None or not _close(sc[1], _TANH_C):
            continue
        tanh = trial.of_type(sc[0].output[0], "Tanh")
        if len(tanh) != 1:
            continue
        for n in (*pw, cube[0], inner[0], sc[0]):
            trial.take(n)
        out = _gelu_tail(trial, value, trial.take(tanh[0]).output[0])
        if out is not None:
            walk.nodes |= trial.nodes
            return "gelu_tanh", out
    return None


def _cubes(walk: Walk, value: str) -> list[tuple[list[onnx.NodeProto], onnx.NodeProto]]:
    """``value ** 3`` as ``Pow(value, 3)`` or ``Mul(value, Mul(value, value))`` (TorchScript):
    (its nodes, the last)."""
    out = []
    for c in walk.consumers(value):
        if c.op_type == "Pow" and c.input[0] == value and _close(walk.scalar(c.input[1]), 3.0):
            out.append(([c], c))
        if c.op_type == "Mul" and list(c.input) == [value, value]:
            out += [([c, m], m) for m in walk.of_type(c.output[0], "Mul") if value in m.input]
    return out
