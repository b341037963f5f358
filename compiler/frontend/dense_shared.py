"""Shared experts left dense: a gated MLP of a layer's input added to its output, outside the op.

A family whose shared MLP the recognizers could not take into the canonical op still computes
the right numbers (the MLP stays ordinary ops), but the schedules would never stream, split or
count it as part of the layer, and ``moec inspect`` would say ``shared 0``. This check runs
after lifting (the exact shared-expert pattern, then any two-projection MLP of the layer input,
e.g. MiniMax-M3's clamped-SwiGLU shared expert, which the canonical op cannot hold) and marks
such a layer (``annotations["dense_shared"]`` = the node of the MLP's
down projection), so ``moec inspect`` says so in the layer's row instead of staying silent.

    before: y = moe(x);  out = Add(y, MatMul(silu(x @ Wg) * (x @ Wu), Wd))
    after:  the same graph; layer.annotations["dense_shared"] = "<down MatMul>"
"""

from __future__ import annotations

from moec.compiler.frontend.hf_layer import match_shared
from moec.compiler.frontend.hf_routing import Walk, match_linear
from moec.compiler.frontend.patterns import GraphView, Lifted


def mark_dense_shared(view: GraphView, lifted: list[Lifted]) -> None:
    """Annotate each lifted layer whose output is summed with a dense MLP of its own input."""
    for lf in lifted:
        if lf.layer.has_shared:
            continue
        walk = Walk(view)
        x_root = walk.root(lf.input)
        _, shared = match_shared(walk, lf.output, x_root)
        if shared is not None:
            down = view.producer(shared.ffn.output)
            lf.layer.annotations["dense_shared"] = view.name(down) if down is not None else "?"
            continue
        other = _mlp_beside(Walk(view), lf.output, x_root)
        if other is not None:
            lf.layer.annotations["dense_shared"] = other


def _mlp_beside(walk: Walk, y: str, x_root: str, depth: int = 12) -> str | None:
    """Any MLP the exact matcher does not know (a clamped SwiGLU, another activation): the
    layer output ``y`` summed with ``down(f(x @ W...))``, two constant-weight projections with
    the layer's input ``x`` at the start; the down projection's node name, or None."""
    out = walk.forward(y)
    cs = walk.consumers(out)
    while len(cs) == 1 and cs[0].op_type == "Mul" and walk.scalar(walk.other(cs[0], out)):
        out = walk.forward(cs[0].output[0])  # a routed scaling applied outside the layer
        cs = walk.consumers(out)
    adds = walk.of_type(out, "Add")
    if len(cs) != 1 or not adds:
        return None
    other = walk.back(walk.other(adds[0], out))
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
