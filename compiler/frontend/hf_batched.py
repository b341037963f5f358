"""Recognizer for Hugging Face MoE blocks exported by ``torch.onnx.export(dynamo=True)``.

With ``experts_implementation="batched_mm"`` (transformers 5.x) every MoE block of Mixtral,
Qwen2/3-MoE, OLMoE, DeepSeek-V3 and their relatives exports to the same dataflow, matched here
by what feeds what (never by node names)::

    x -> [Reshape] -> router Gemm/MatMul -> Softmax | Sigmoid (-> Add correction bias)
      (-> group-limited top-k: Reshape [T,G,E/G] -> TopK 2 -> ReduceSum | ReduceMax -> TopK
          -> ScatterElements -> Expand -> Where(masked, fill, scores))
      -> TopK k -> (GatherElements of the scores) (-> ReduceSum, Div) (-> Mul scaling)
    ids -> GatherND(stacked [E,2F,d]) -> MatMul(., repeat_interleave(x, k)) -> Split
        -> act(gate) * up -> MatMul(GatherND(stacked [E,d,F]), .) -> Mul gate weight
        (or separate stacks: act(MatMul(GatherND(gate [E,F,d]), .)) * MatMul(GatherND(up), .))
        -> Reshape [T,k,d] -> ReduceSum axis 1 (-> Add shared MLP(x) (* Sigmoid(x @ w_g)))
        -> [Reshape] -> y

The result is one :class:`moec.ir.moe.MoELayer`. A TopK that starts like a router (scores of a
constant-weight projection) but whose surroundings differ from this dataflow is reported as a
:class:`Mismatch` saying what was expected and what was found. The router part is matched by
:mod:`moec.compiler.frontend.hf_routing`, the shared experts and the layer's node set by
:mod:`moec.compiler.frontend.hf_layer`.
"""

from __future__ import annotations

import numpy as np
import onnx

from moec.compiler.frontend.hf_gating import match_gating, match_separate_gating
from moec.compiler.frontend.hf_layer import (
    Projection,
    absorb_scaling,
    build_layer,
    close_from_deepest,
    layer_output,
    match_shared,
)
from moec.compiler.frontend.hf_routing import (
    RESHAPES,
    NoMatch,
    NotThisPattern,
    Routing,
    Walk,
    is_float_cast,
    match_router,
)
from moec.compiler.frontend.identity import absorb_identity, match_identity
from moec.compiler.frontend.joint_shared import match_gamma_shared, match_joint_router
from moec.compiler.frontend.logit_routing import match_logit_choice
from moec.compiler.frontend.patterns import (
    GraphView,
    Lifted,
    Mismatch,
    lifted_or_mismatch,
    register,
)
from moec.compiler.frontend.sparsemixer import match_sparsemixer


def match_batched(view: GraphView, anchor: onnx.NodeProto) -> Lifted:
    """Match the whole batched MoE block around ``anchor`` (raises NoMatch / NotThisPattern)."""
    walk = Walk(view)
    joint = match_joint_router(walk, anchor) if anchor.op_type == "TopK" else None
    if joint is not None:
        routing = joint[0]
    elif anchor.op_type == "ArgMax":
        routing = match_sparsemixer(walk, anchor)
    else:
        routing = match_logit_choice(walk, anchor) or match_router(walk, anchor)
    router = routing.router
    identity = match_identity(walk, routing)
    if identity is not None:
        routing.identity_experts = identity.count
    E = router.weight.shape[0] - routing.identity_experts
    gathers = _gathered_stacks(walk, routing.ids, E)
    if not gathers:
        if _reaches(walk, routing.ids, "OneHot"):
            raise NotThisPattern  # the unrolled per-expert form (hf_unrolled)
        found = ", ".join(sorted({c.op_type for c in walk.consumers(walk.root(routing.ids))}))
        raise walk.fail(
            routing.topk_node or anchor,
            "expected the top-k expert ids to gather stacked expert weights (GatherND/Gather of "
            f"a constant [{E}, ...]), found {found or 'no consumer'}",
        )
    _index_nodes(walk, routing.ids, gathers)
    stacks3 = [g for g in gathers if walk.const(g.input[0]).ndim == 3]  # type: ignore[union-attr]
    biases: dict[str, np.ndarray] = {}
    for g in gathers:
        data = walk.const(g.input[0])
        if data is not None and data.ndim == 2:
            biases[walk.forward(walk.take(g).output[0])] = np.asarray(data, dtype=np.float32)
    projections = [_projection(walk, g, biases) for g in stacks3]
    x_root = walk.root(router.x)
    first = [p for p in projections if walk.root(_token_source(walk, p.input)) == x_root]
    if not first:
        first = _fold_input_scales(walk, routing, projections)
        x_root = walk.root(router.x)
    rest = [p for p in projections if p not in first]
    topk_name = view.name(routing.topk_node) if routing.topk_node is not None else view.name(anchor)
    if len(first) not in (1, 2) or len(rest) != 1:
        raise walk.fail(
            topk_name,
            "expected one fused gate/up projection of the tokens (or separate gate and up "
            f"projections) and one down projection, found {len(first)} token projection(s) "
            f"and {len(rest)} other(s)",
        )
    for p in first:
        _check_repeat_interleave(walk, p.input, routing.top_k)
    down = rest[0]
    if len(first) == 1:
        up = first[0]
        gating = match_gating(walk, up.output, up.w.shape[2])
    else:
        a, b = first
        g, gating = match_separate_gating(walk, a.output, b.output, topk_name)
        gate, up_only = (a, b) if g == a.output else (b, a)
        up = _concatenated(gate, up_only)
    if walk.root(down.input) != walk.root(gating.output):
        raise walk.fail(gating.output, "expected the expert activation to feed the down projection")
    walk.back(down.input)
    combined = _combine(walk, down, routing)
    if identity is not None:
        if walk.root(identity.x) != x_root:
            raise walk.fail(
                identity.output, "expected the identity experts to scale the layer input"
            )
        combined = absorb_identity(walk, combined, identity)
    swiglu = (gating.alpha, gating.beta, gating.limit) if gating.activation == "swiglu" else None
    if joint is not None:  # its scaling also scales the shared experts: none absorbed here
        y, shared = match_gamma_shared(walk, combined, x_root, joint[1])
    else:
        combined = absorb_scaling(walk, combined, routing)
        y, shared = match_shared(walk, combined, x_root, gated=gating.gated, swiglu=swiglu)
    layer = build_layer(topk_name, routing, up, down, gating, shared)
    layer.annotations.source = "hf.batched_mm"
    walk.back(router.x)
    y = _trim_output(walk, layer_output(walk, y, x_root), x_root)
    return close_from_deepest(walk, router.x, y, layer, topk_name)


def _trim_output(walk: Walk, y: str, x: str) -> str:
    """Leave trailing reshapes outside when they give the output another shape than the input
    (the canonical op preserves shape; Gemma-4's input is [T, d], its output reshaped back)."""
    xt = walk.view.tensor_type(x)
    while xt is not None:
        yt, p = walk.view.tensor_type(y), walk.producer(y)
        if yt is None or yt.shape == xt.shape or p is None or p.op_type not in RESHAPES:
            break
        walk.nodes.discard(walk.view.id(p))
        y = p.input[0]
    return y


def _channel_chain(
    walk: Walk, value: str, d: int
) -> list[tuple[str, np.ndarray, list[onnx.NodeProto]]]:
    """``value`` and what it is a per-channel rescale of: going back over reshapes, float casts
    and ``Mul`` by a constant of size 1 or ``d`` (broadcast over the last axis), each value
    passed with the scale that maps it to ``value`` and the nodes in between."""
    scale = np.ones(d, dtype=np.float32)
    nodes: list[onnx.NodeProto] = []
    chain = [(value, scale, list(nodes))]
    while True:
        p = walk.producer(value)
        if p is None:
            return chain
        if p.op_type in RESHAPES or is_float_cast(p):
            value = p.input[0]
        elif p.op_type == "Mul":
            consts = [(i, walk.const(v)) for i, v in enumerate(p.input[:2])]
            found = [(i, c) for i, c in consts if c is not None]
            if len(found) != 1 or np.asarray(found[0][1]).size not in (1, d):
                return chain
            c = np.asarray(found[0][1], dtype=np.float32)
            if c.size == d and c.shape[-1] != d:
                return chain
            scale = (scale * c.reshape(-1)).astype(np.float32)
            value = p.input[1 - found[0][0]]
        else:
            return chain
        nodes.append(p)
        chain.append((value, scale, list(nodes)))


def _fold_input_scales(
    walk: Walk, routing: Routing, projections: list[Projection]
) -> list[Projection]:
    """Router and experts reading two per-channel rescales of one value (Gemma-4: the router
    reads ``RMSNorm(h) * scale * d**-0.5``, the experts ``RMSNorm(h) * w``, the normalization
    shared): fold each side's scale into its weights (``router_w`` columns, the experts' input
    projection rows; exact up to float rounding) and make that value the router's input.
    Returns the projections that read it (none when there is no such common value)."""
    router = routing.router
    d = router.weight.shape[1]
    router_chain = _channel_chain(walk, router.x, d)
    sides = [(p, _channel_chain(walk, _token_source(walk, p.input), d)) for p in projections]
    for base, s_r, nodes_r in router_chain[1:]:
        found = []
        for p, chain in sides:
            hit = [(s, nodes) for v, s, nodes in chain if v == base]
            if hit:
                found.append((p, *hit[0]))
        if not found:
            continue
        router.weight = (router.weight * s_r[None, :]).astype(np.float32)
        router.x = base
        for node in nodes_r:
            walk.take(node)
        for p, s_p, nodes_p in found:
            p.w = (p.w * s_p[None, :, None]).astype(np.float32)
            for node in nodes_p:
                if node.op_type == "Mul":
                    walk.take(node)
        return [p for p, _, _ in found]
    return []


def _concatenated(gate: Projection, up: Projection) -> Projection:
    """Separate gate and up projections as one ``[E, d, 2F]`` projection, gate columns first."""
    if (gate.b is None) != (up.b is None):
        raise NoMatch(gate.output, "expected biases on both the gate and up projections or neither")
    w = np.concatenate([gate.w, up.w], axis=2)
    b = None if gate.b is None or up.b is None else np.concatenate([gate.b, up.b], axis=-1)
    return Projection(w, b, up.input, up.output)


def _gathered_stacks(walk: Walk, ids: str, E: int) -> list[onnx.NodeProto]:
    """GatherND/Gather(axis 0) nodes reading constant [E, ...] stacks by the top-k ids."""
    reached, frontier, found = {ids}, [ids], []
    while frontier:
        value = frontier.pop()
        for c in walk.consumers(value):
            if c.op_type in RESHAPES and c.input[0] == value:
                reached.add(c.output[0])
                frontier.append(c.output[0])
            elif c.op_type in ("GatherND", "Gather") and len(c.input) > 1 and c.input[1] == value:
                data = walk.const(c.input[0])
                axis_ok = c.op_type == "GatherND" or walk.attr(c, "axis", 0) == 0
                if data is not None and data.ndim in (2, 3) and data.shape[0] == E and axis_ok:
                    if c.op_type == "GatherND" and walk.attr(c, "batch_dims", 0) != 0:
                        continue
                    found.append(c)
    return found


def _index_nodes(walk: Walk, ids: str, gathers: list[onnx.NodeProto]) -> None:
    """Record the reshapes between the ids and the gathers."""
    targets = {g.input[1] for g in gathers}
    for t in targets:
        value = t
        while value != ids:
            p = walk.producer(value)
            if p is None or p.op_type not in RESHAPES:
                raise walk.fail(gathers[0], f"expected the expert ids reshaped into {t!r}")
            walk.take(p)
            value = p.input[0]


def _projection(walk: Walk, gather: onnx.NodeProto, biases: dict[str, np.ndarray]) -> Projection:
    """The batched MatMul consuming gathered weights, with its layout and optional bias."""
    stack = np.asarray(walk.const(gather.input[0]), dtype=np.float32)
    walk.take(gather)
    g_out = walk.forward(gather.output[0])
    mm = walk.only(g_out, "a batched MatMul of the gathered expert weights", ("MatMul",))
    if mm.input[0] == g_out:
        # W[s] @ x[s][:, None]: weights are [E, out, in].
        w, operand = np.ascontiguousarray(stack.transpose(0, 2, 1)), mm.input[1]
    else:
        w, operand = stack, mm.input[0]
    inp = walk.back(operand)
    out = walk.forward(mm.output[0])
    for add in walk.of_type(out, "Add"):
        other = walk.other(add, out)
        if other in biases:
            walk.take(add)
            return Projection(w, biases[other], inp, walk.forward(add.output[0]))
    return Projection(w, None, inp, out)


def _reaches(walk: Walk, value: str, op_type: str, depth: int = 4) -> bool:
    if depth == 0:
        return False
    for c in walk.consumers(value):
        if c.op_type == op_type or any(_reaches(walk, o, op_type, depth - 1) for o in c.output):
            return True
    return False


def _token_source(walk: Walk, value: str) -> str:
    """The tokens behind a repeat_interleave: back over Expand/Unsqueeze/Reshape."""
    while True:
        p = walk.producer(value)
        if p is None or p.op_type not in (*RESHAPES, "Expand"):
            return value
        value = p.input[0]


def _check_repeat_interleave(walk: Walk, value: str, k: int) -> None:
    """The token rows must be x repeated k times consecutively (token-major), like the ids."""
    p = walk.producer(value)
    if k == 1:
        walk.back(value)
        return
    while p is not None and p.op_type in RESHAPES:
        walk.take(p)
        if p.op_type == "Unsqueeze":
            break
        p = walk.producer(p.input[0])
    if p is None or p.op_type != "Expand":
        raise walk.fail(
            p or value, "expected the tokens repeated k times (Unsqueeze, Expand, Reshape)"
        )
    walk.take(p)
    shape = walk.ints(p.input[1])
    unsq = walk.producer(p.input[0])
    if unsq is None or unsq.op_type != "Unsqueeze":
        raise walk.fail(p, "expected Expand of the tokens unsqueezed at axis 1")
    axes = walk.ints(unsq.input[1]) if len(unsq.input) > 1 else list(walk.attr(unsq, "axes", []))  # type: ignore[call-overload]
    if axes not in ([1], [-2]) or (shape is not None and shape[1] != k):
        raise walk.fail(
            unsq,
            f"expected tokens repeated {k} times per token (axis 1), found axes {axes}, shape {shape}",
        )
    walk.take(unsq)
    walk.back(unsq.input[0])


def _combine(walk: Walk, down: Projection, routing: Routing) -> str:
    """Weighting by the gate weights and the sum over the k slots: the routed output."""
    mul = walk.only(down.output, "the expert outputs times their gate weights", ("Mul",))
    other = walk.other(mul, walk.forward(down.output))
    if walk.root(other) != walk.root(routing.weights):
        _per_expert_scale(walk, walk.back(other), routing)
    if walk.root(other) != walk.root(routing.weights):
        raise walk.fail(
            mul,
            f"expected the expert outputs weighted by the routing gate weights, found {other!r}",
        )
    walk.back(other)
    red = walk.only(mul.output[0], "the sum over the top-k slots", ("ReduceSum",))
    rs = walk.producer(red.input[0])
    shape = walk.ints(rs.input[1]) if rs is not None and rs.op_type == "Reshape" else None
    axes = walk.ints(red.input[1]) if len(red.input) > 1 else None
    if shape is None or len(shape) != 3 or shape[1] != routing.top_k or axes not in ([1], [-2]):
        raise walk.fail(
            red,
            f"expected ReduceSum over axis 1 of [T, {routing.top_k}, d], found shape {shape}, axes {axes}",
        )
    if walk.attr(red, "keepdims", 1):
        raise walk.fail(red, "expected ReduceSum(keepdims=0) over the top-k slots")
    return red.output[0]


def _per_expert_scale(walk: Walk, value: str, r: Routing) -> None:
    """Gemma-4's gates: ``value = weights * scale[ids]`` with a constant [E] ``scale`` gathered
    by the top-k ids (GatherND, or Gather on axis 0). On a match the scale goes to
    ``r.expert_scale`` and ``value`` becomes the routing's gate weights."""
    mul = walk.producer(value)
    if mul is None or mul.op_type != "Mul" or r.expert_scale is not None:
        return
    E = r.router.weight.shape[0]
    for w, s in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
        p = walk.producer(walk.root(s))
        if walk.root(w) != walk.root(r.weights) or p is None or len(p.input) < 2:
            continue
        data = walk.const(p.input[0])
        ok = (p.op_type == "GatherND" and walk.attr(p, "batch_dims", 0) == 0) or (
            p.op_type == "Gather" and walk.attr(p, "axis", 0) == 0
        )
        if ok and data is not None and data.size == E and walk.root(p.input[1]) == walk.root(r.ids):
            walk.back(s)
            walk.take(p)
            walk.back(p.input[1])
            walk.back(w)
            r.expert_scale = np.asarray(data, dtype=np.float32).reshape(E)
            r.weights = walk.take(mul).output[0]
            return


@register("hf-batched-mm", anchors=("TopK", "ArgMax"))
def recognize(view: GraphView, node: onnx.NodeProto) -> Lifted | Mismatch | None:
    """The dynamo ``batched_mm`` export of a Hugging Face MoE block, anchored at a router TopK."""
    return lifted_or_mismatch(match_batched, view, node)
