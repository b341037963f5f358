"""A router that normalizes the layer's residual itself (onnxruntime-genai's Gemma-4 MoE).

The builder's Gemma-4 layer reads the same residual ``h`` twice: the MoE node's input is
``SimplifiedLayerNormalization(h; w_x)`` (``pre_feedforward_layernorm_2``), the router's product
reads ``SimplifiedLayerNormalization(h; w_r) * s`` (the router's own norm and ``scale``). Both
norms divide ``h`` by the same ``rms(h)`` (same input, epsilon, axis), so the router input is the
MoE input times ``c = w_r * s / w_x`` per channel, provided ``w_x`` has no zeros. A float router
product takes ``c`` into ``router_w``'s columns (exact up to float rounding); a product that
quantizes its input first (``MatMulNBits`` at ``accuracy_level=4``) must see ``x * c`` itself,
so the layer keeps ``c`` as ``router_in_scale`` (applied before the quantization).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from moec.compiler.frontend.patterns import GraphView

NORM_OPS = ("SimplifiedLayerNormalization",)


@dataclass(frozen=True)
class RouterNorm:
    """``c`` [d] (None when a norm weight or the scale is declared only) and the router-side
    nodes (its norm, the scale ``Mul``, casts) that the layer absorbs."""

    scale: np.ndarray | None
    nodes: frozenset[int]


def _norm(view: GraphView, value: str) -> onnx.NodeProto | None:
    p = view.producer(value)
    return p if p is not None and p.op_type in NORM_OPS else None


def _same_norm(view: GraphView, a: onnx.NodeProto, b: onnx.NodeProto) -> bool:
    """Both normalize the same tensor by the same rms: input, epsilon, axis, stash type."""

    def key(n: onnx.NodeProto) -> tuple[object, ...]:
        return (
            n.input[0], float(view.attr(n, "epsilon", 1e-5)), int(view.attr(n, "axis", -1)),
            int(view.attr(n, "stash_type", 1)),
        )  # fmt: skip

    return key(a) == key(b)


def _weight(view: GraphView, node: onnx.NodeProto, d: int) -> np.ndarray | None | str:
    """The norm's [d] weight (ones without one), None when declared only, or why not."""
    if len(node.input) < 2 or not node.input[1]:
        return np.ones(d, np.float32)
    c = view.constant(node.input[1])
    if c is None:
        w = view.weight(node.input[1])
        if w is not None and w.data is None and int(np.prod(w.type.shape)) == d:
            return None
        return f"the weight of {view.name(node)} is not a constant"
    arr = np.asarray(c, np.float64).reshape(-1)
    if arr.size != d:
        return f"the weight of {view.name(node)} has {arr.size} entries, expected {d}"
    return arr


def match(view: GraphView, rows: str, x_chain: list[str], d: int) -> RouterNorm | str | None:
    """The router input ``rows`` as ``x * c`` for the MoE input ``x`` (``x_chain``: x and the
    values it was reshaped from), or why not (a located refusal), or None if ``rows`` is not a
    rescale of a second normalization of x's residual."""
    nodes: set[int] = set()
    mul = view.producer(rows)
    if mul is None or mul.op_type != "Mul":
        return None
    consts = [i for i in mul.input if view.is_constant(i)]
    if len(consts) != 1:
        return None
    other = mul.input[1] if mul.input[0] == consts[0] else mul.input[0]
    router_norm = _norm(view, other)
    x_norm = next((n for v in x_chain if (n := _norm(view, v)) is not None), None)
    if router_norm is None or x_norm is None or router_norm is x_norm:
        return None
    where = f"router {view.name(router_norm)} and MoE input {view.name(x_norm)}"
    if not _same_norm(view, router_norm, x_norm):
        return f"{where} normalize differently (input, epsilon, axis or stash_type differ)"
    nodes.update({view.id(mul), view.id(router_norm)})
    w_r, w_x = _weight(view, router_norm, d), _weight(view, x_norm, d)
    s = view.constant(consts[0])
    for w in (w_r, w_x):
        if isinstance(w, str):
            return f"{where}: {w}"
    if s is None or w_r is None or w_x is None:
        return RouterNorm(None, frozenset(nodes))
    s_arr = np.asarray(s, np.float64).reshape(-1)
    if s_arr.size not in (1, d):
        return f"{where}: the router scale has {s_arr.size} entries, expected 1 or {d}"
    assert isinstance(w_r, np.ndarray) and isinstance(w_x, np.ndarray)
    zeros = np.flatnonzero(w_x == 0)
    if zeros.size:
        return (
            f"{where}: the MoE input's norm weight is 0 at channels {zeros[:8].tolist()}, so the "
            "router's normalization cannot be recovered from it (expected no zeros)"
        )
    return RouterNorm((w_r * s_arr / w_x).astype(np.float32), frozenset(nodes))
