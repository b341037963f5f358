"""Shared experts left dense: a gated MLP of a layer's input added to its output, outside the op.

A family whose shared MLP the recognizers could not take into the canonical op still computes
the right numbers (the MLP stays ordinary ops), but the schedules would never stream, split or
count it as part of the layer, and ``moec inspect`` would say ``shared 0``. This check runs
after lifting and marks such a layer (``annotations.dense_shared`` = the node of the MLP's
down projection), so ``moec inspect`` says so in the layer's row instead of staying silent.

    before: y = moe(x);  out = Add(y, MatMul(silu(x @ Wg) * (x @ Wu), Wd))
    after:  the same graph; layer.annotations.dense_shared = "<down MatMul>"
"""

from __future__ import annotations

from moec.compiler.frontend.hf_layer import match_shared
from moec.compiler.frontend.hf_routing import Walk
from moec.compiler.frontend.patterns import GraphView, Lifted


def mark_dense_shared(view: GraphView, lifted: list[Lifted]) -> None:
    """Annotate each lifted layer whose output is summed with a dense MLP of its own input."""
    for lf in lifted:
        if lf.layer.has_shared:
            continue
        walk = Walk(view)
        x_root = walk.root(lf.input)
        _, shared = match_shared(walk, lf.output, x_root)
        if shared is None:
            continue
        down = view.producer(shared.ffn.output)
        lf.layer.annotations.dense_shared = view.name(down) if down is not None else "?"
