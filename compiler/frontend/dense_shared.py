"""Shared experts beside a lifted layer: taken in (fused MoE/QMoE nodes), or said to be dense.

Beside a ``com.microsoft`` MoE/QMoE node, a gated MLP of the node's input added to its output
(``Add``, or onnxruntime-genai's ``GatedAdd(moe, mlp, Sigmoid(x @ w))`` = ``moe + mlp * gate``)
is the layer's shared expert and is taken into the op.

A family whose shared MLP the recognizers could not take into the canonical op still computes
the right numbers (the MLP stays ordinary ops), but the schedules would never stream, split or
count it as part of the layer, and ``moec inspect`` would say ``shared 0``. This check runs
after lifting (the exact shared-expert pattern, then any two-projection MLP of the layer input,
e.g. MiniMax-M3's clamped-SwiGLU shared expert, which the canonical op cannot hold) and marks
such a layer (``annotations.dense_shared`` = the node of the MLP's
down projection), so ``moec inspect`` says so in the layer's row instead of staying silent.

    before: y = moe(x);  out = Add(y, MatMul(silu(x @ Wg) * (x @ Wu), Wd))
    after:  the same graph; layer.annotations.dense_shared = "<down MatMul>"
"""

from __future__ import annotations

import dataclasses

import numpy as np

from moec.compiler.frontend import nbits
from moec.compiler.frontend.hf_layer import match_shared
from moec.compiler.frontend.hf_routing import Walk, match_linear
from moec.compiler.frontend.patterns import GraphView, Lifted
from moec.ir.graph import TensorType, Weight


def mark_dense_shared(view: GraphView, lifted: list[Lifted]) -> list[Lifted]:
    """Take the shared experts beside fused layers in; annotate each layer whose output is
    still summed with a dense MLP of its own input. Returns the (possibly grown) layers."""
    out = []
    for lf in lifted:
        if not lf.layer.has_shared and (lf.layer.annotations.source or "").startswith(
            "com.microsoft"
        ):
            lf = _absorb_beside_fused(view, lf)
        if not lf.layer.has_shared:
            _mark(view, lf)
        out.append(lf)
    return out


def _projection(view: GraphView, value: str) -> tuple[str, Weight] | None:
    """``value = MatMul(a, W)`` with W a rank-2 initializer (present or declared only), or a
    ``com.microsoft.MatMulNBits`` (onnxruntime-genai int4/int8), dequantized as ORT does."""
    p = view.producer(value)
    if p is not None and p.op_type == "MatMulNBits" and not view.is_constant(p.input[0]):
        q = nbits.nbits_product(view, p)
        if isinstance(q, str) or q.bias is not None:
            return None
        data = None if q.w is None else np.ascontiguousarray(q.w, np.float32)
        return p.input[0], Weight(p.input[1], TensorType("f32", q.shape), data)
    if p is None or p.op_type != "MatMul" or len(p.input) != 2:
        return None
    w = view.weight(p.input[1])
    if w is None or len(w.type.shape) != 2 or view.is_constant(p.input[0]):
        return None
    return p.input[0], w


def _act_quant_block(view: GraphView, nodes: set[int]) -> int | None | str:
    """The input-quantization block shared by the MLP's products ``nodes`` (None: all float),
    or "mixed" when they differ (a float MatMul beside a MatMulNBits, or two blocks)."""
    blocks = set()
    for i in nodes:
        n = view.nodes[i]
        if n.op_type == "MatMulNBits":
            blocks.add(nbits.act_quant_block(view, n))
        elif n.op_type == "MatMul":
            blocks.add(None)
    return blocks.pop() if len(blocks) == 1 else "mixed" if blocks else None


def _silu_of(view: GraphView, value: str) -> str | None:
    p = view.producer(value)
    if p is None or p.op_type != "Mul":
        return None
    for z, s in ((p.input[0], p.input[1]), (p.input[1], p.input[0])):
        sig = view.producer(s)
        if sig is not None and sig.op_type == "Sigmoid" and sig.input[0] == z:
            return z
    return None


def _fused_shared_mlp(
    view: GraphView, value: str, x_root: str, walk: Walk
) -> tuple[Weight, Weight, Weight] | None:
    """``value = (silu(x @ Wg) * (x @ Wu)) @ Wd`` on the layer input: (Wg, Wu, Wd), recording
    the nodes; weights may be declared only (``moec inspect`` loads no external data)."""
    down = _projection(view, value)
    mul = view.producer(down[0]) if down is not None else None
    if down is None or mul is None or mul.op_type != "Mul":
        return None
    for g, u in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
        z = _silu_of(view, g)
        gate = _projection(view, z) if z is not None else None
        up = _projection(view, u)
        if gate is None or up is None or {walk.root(gate[0]), walk.root(up[0])} != {x_root}:
            continue
        silu = view.producer(g)
        for v in (value, z, u, down[0], g):
            node = view.producer(v)  # type: ignore[arg-type]
            if node is not None:
                walk.take(node)
        if silu is not None:
            walk.take(view.producer(silu.input[1]) or silu)  # type: ignore[arg-type]
        return gate[1], up[1], down[1]
    return None


def _absorb_beside_fused(view: GraphView, lf: Lifted) -> Lifted:
    """A ``com.microsoft`` MoE/QMoE node's shared experts, built beside it as ordinary ops:
    ``Add(moe, mlp(x))`` or onnxruntime-genai's ``GatedAdd(moe, mlp(x), Sigmoid(x @ w))``
    (Qwen3.5-MoE), taken into the layer; ``lf`` unchanged when neither matches."""
    walk = Walk(view)
    x_root = walk.root(lf.input)
    out = walk.forward(lf.output)
    cs = walk.consumers(out)
    if len(cs) != 1 or cs[0].op_type not in ("Add", "GatedAdd") or out not in cs[0].input[:2]:
        return lf
    add = cs[0]
    other = add.input[1] if add.input[0] == out else add.input[0]
    router: Weight | None = None
    if add.op_type == "GatedAdd":
        if add.input[0] != out or len(add.input) < 3:
            return lf
        sig = view.producer(add.input[2])
        proj = (
            _projection(view, sig.input[0])
            if sig is not None and sig.op_type == "Sigmoid"
            else None
        )
        if proj is None or proj[1].type.shape[1] != 1 or walk.root(proj[0]) != x_root:
            return lf
        router = proj[1]
        walk.take(sig)  # type: ignore[arg-type]
        walk.take(view.producer(sig.input[0]))  # type: ignore[arg-type, union-attr]
    mlp = _fused_shared_mlp(view, walk.back(other), x_root, walk)
    if mlp is None:
        return lf
    block = _act_quant_block(view, walk.nodes)
    if block == "mixed":
        down = view.producer(walk.back(other))
        lf.layer.annotations.dense_shared = view.name(down) if down is not None else "?"
        return lf
    walk.take(add)
    layer = lf.layer
    for key, w in zip(("sh_gate", "sh_up", "sh_down"), mlp, strict=True):
        layer.weights[key] = Weight(key, w.type, w.data)
    if router is not None:
        layer.weights["sh_router"] = Weight("sh_router", router.type, router.data)
    Fs = int(mlp[0].type.shape[1])
    layer.num_shared = Fs // layer.ffn if Fs % layer.ffn == 0 else 1
    layer.shared_ffn = Fs
    layer.shared_activation = "silu"
    layer.shared_act_quant_block = block if isinstance(block, int) else None
    layer.verify()
    return dataclasses.replace(lf, output=add.output[0], nodes=lf.nodes | frozenset(walk.nodes))


def _mark(view: GraphView, lf: Lifted) -> None:
    walk = Walk(view)
    x_root = walk.root(lf.input)
    _, shared = match_shared(walk, lf.output, x_root)
    if shared is not None:
        down = view.producer(shared.ffn.output)
        lf.layer.annotations.dense_shared = view.name(down) if down is not None else "?"
        return
    other = _mlp_beside(Walk(view), lf.output, x_root)
    if other is not None:
        lf.layer.annotations.dense_shared = other


def _mlp_beside(walk: Walk, y: str, x_root: str, depth: int = 12) -> str | None:
    """Any MLP the exact matcher does not know (a clamped SwiGLU, another activation): the
    layer output ``y`` summed with ``down(f(x @ W...))``, two constant-weight projections with
    the layer's input ``x`` at the start; the down projection's node name, or None."""
    out = walk.forward(y)
    cs = walk.consumers(out)
    while len(cs) == 1 and cs[0].op_type == "Mul" and walk.scalar(walk.other(cs[0], out)):
        out = walk.forward(cs[0].output[0])  # a routed scaling applied outside the layer
        cs = walk.consumers(out)
    adds = [c for c in cs if c.op_type in ("Add", "GatedAdd") and out in c.input[:2]]
    if len(cs) != 1 or not adds:
        return None
    other = walk.back(adds[0].input[1] if adds[0].input[0] == out else adds[0].input[0])
    down = match_linear(Walk(walk.view), other)
    if down is None or down.b is not None and down.w.ndim != 2:
        return None
    frontier, seen = [down.input], set()
    for _ in range(depth):
        nxt = []
        for value in frontier:
            if value in seen:
                continue
            seen.add(value)
            lin = match_linear(Walk(walk.view), value)
            if lin is not None and walk.root(lin.input) == x_root:
                node = walk.producer(down.output)
                return walk.view.name(node) if node is not None else "?"
            p = walk.producer(value)
            if p is not None:
                nxt += [i for i in p.input if i and not walk.view.is_constant(i)]
        frontier = nxt
    return None
