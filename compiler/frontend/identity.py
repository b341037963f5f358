"""LongCat-Flash's "zero" (identity) experts in a Hugging Face export: router rows past the
real experts whose pick returns the token itself, times its gate.

After the router's TopK (over ``E + Z`` scores)::

    mask = GreaterOrEqual(ids, E)
    ids' = Where(mask, remap(ids), ids)      # identity picks sent to a real expert ...
    w'   = Where(mask, 0, w)                 # ... with gate 0
    idw  = ReduceSum(Where(Not(mask), 0, w)) # the identity picks' gates, summed per token
    y    = routed(x; ids', w') + x * idw

:func:`match_identity` recognizes the mask and its three uses by dataflow; the routed part is
then matched as usual on ``ids'`` and ``w'``, and :func:`absorb_identity` takes the final
``Add``. The remap's arithmetic is not read: its picks carry gate 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from moec.compiler.frontend.hf_routing import Routing, Walk


@dataclass
class Identity:
    """``count`` identity experts; ``output`` is ``x * idw`` (to be added to the routed sum)."""

    count: int
    x: str
    output: str


def match_identity(walk: Walk, routing: Routing) -> Identity | None:
    """Identity experts after ``routing``'s TopK, or None; rewrites ``routing.ids``/``weights``
    to the routed experts' ids and gates."""
    E = routing.router.weight.shape[0]
    ids = walk.forward(routing.ids)
    ges = [
        c for c in walk.consumers(ids)
        if c.op_type == "GreaterOrEqual" and c.input[0] == ids
    ]  # fmt: skip
    if len(ges) != 1:
        return None
    first = walk.scalar(ges[0].input[1])
    if first is None or not 0 < int(first) < E or float(first) != int(first):
        return None
    ge = walk.take(ges[0])
    mask = ge.output[0]
    w = routing.weights
    new_ids = new_w = ident = None
    for c in walk.consumers(mask):
        inverted = c.op_type == "Not"
        if inverted:
            walk.take(c)
            wheres = walk.of_type(c.output[0], "Where")
        else:
            wheres = [c] if c.op_type == "Where" else []
        for wh in wheres:
            if wh.input[0] not in (mask, c.output[0]):
                continue
            # Where(cond, a, b): value kept where the pick is routed (not identity).
            routed_in, ident_in = (wh.input[1], wh.input[2]) if inverted else (
                wh.input[2], wh.input[1])  # fmt: skip
            if routed_in == ids and _from(walk, ident_in, ids):
                new_ids = walk.take(wh).output[0]
            elif routed_in == w and walk.scalar(ident_in) == 0.0:
                new_w = walk.take(wh).output[0]
            elif ident_in == w and walk.scalar(routed_in) == 0.0:
                ident = walk.take(wh).output[0]
    if new_ids is None or new_w is None or ident is None:
        raise walk.fail(
            ge, "expected identity-expert picks remapped (Where on the ids), their gates zeroed "
            "for the routed experts and summed to scale the layer input",
        )  # fmt: skip
    sums = walk.of_type(ident, "ReduceSum")
    if len(sums) != 1:
        raise walk.fail(ge, "expected the identity experts' gates summed over the top-k slots")
    s = walk.take(sums[0]).output[0]
    muls = walk.of_type(s, "Mul")
    if len(muls) != 1:
        raise walk.fail(sums[0], "expected the summed identity gates to scale the layer input")
    mul = walk.take(muls[0])
    routing.ids, routing.weights = new_ids, new_w
    return Identity(E - int(first), walk.other(mul, s), mul.output[0])


def _from(walk: Walk, value: str, root: str, depth: int = 16) -> bool:
    """``value`` computed from ``root`` and constants only (the remap), recording its nodes."""
    trial = Walk(walk.view)
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if v == root or v in seen or walk.view.is_constant(v):
            continue
        seen.add(v)
        p = walk.producer(v)
        if p is None or len(seen) > depth:
            return False
        trial.take(p)
        stack += [i for i in p.input if i]
    walk.nodes |= trial.nodes
    return True


def absorb_identity(walk: Walk, routed: str, identity: Identity) -> str:
    """The routed sum plus the identity output (the ``Add`` taken), or a located mismatch."""
    out = walk.forward(routed)
    for c in walk.consumers(out):
        if c.op_type == "Add" and walk.other(c, out) == identity.output:
            return walk.take(c).output[0]
    node: onnx.NodeProto | None = walk.producer(identity.output)
    raise walk.fail(
        node if node is not None else identity.output,
        "expected the identity experts' output added to the routed experts' sum",
    )
