"""The rest of a Hugging Face MoE layer: shared experts, the node set it replaces, the layer.

- :func:`match_shared`: ``routed + down(act(x @ gate) * (x @ up)) (* sigmoid(x @ w_g))``;
- :func:`close_layer`: every node between the layer's input and output must have been matched,
  be a constant feeder or shape arithmetic, and nothing computed inside may be used outside;
- :func:`build_layer`: the canonical :class:`moec.ir.moe.MoELayer` in moec's weight layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from moec.compiler.frontend.hf_gating import Gating, eval_ints, swiglu_of
from moec.compiler.frontend.hf_routing import (
    RESHAPES,
    NoMatch,
    Routing,
    Walk,
    is_float_cast,
    match_linear,
)
from moec.compiler.frontend.patterns import GraphView, Lifted
from moec.ir.moe import MoELayer, present

SHAPE_OPS = frozenset(
    {"Shape", "Gather", "Concat", "Unsqueeze", "Squeeze", "Slice", "Cast", "Constant", "Add",
     "Sub", "Mul", "Div", "Range", "ConstantOfShape", "Equal", "Where", "Reshape", "Expand"}
)  # fmt: skip
# (op type, input position) pairs that read a tensor's values only as a shape or index list.


SHAPE_OPERANDS = frozenset(
    {("Reshape", 1), ("Expand", 1), ("Unsqueeze", 1), ("Squeeze", 1), ("Slice", 1),
     ("Slice", 2), ("Slice", 3), ("Slice", 4), ("ConstantOfShape", 0), ("Split", 1),
     ("TopK", 1), ("ReduceSum", 1), ("ReduceMax", 1), ("Tile", 1), ("Range", 0), ("Range", 1),
     ("Range", 2), ("OneHot", 1)}
)  # fmt: skip


@dataclass
class DenseFFN:
    """A gated MLP ``down(act(x @ gate) * (x @ up))`` with [in, out] weights, or (``gate``
    None) a plain one, ``down(act(x @ up))``."""

    x: str
    gate: np.ndarray | None
    up: np.ndarray
    down: np.ndarray
    activation: str
    output: str
    # gpt-oss SwiGLU parameters (alpha, beta, limit) when ``activation`` is "swiglu".
    swiglu: tuple[float, float, float | None] | None = None


def match_dense_ffn(walk: Walk, value: str) -> DenseFFN | None:
    """``value`` as a gated MLP of one input with constant, bias-free weights, or None."""
    trial = Walk(walk.view)
    down = match_linear(trial, value)
    if down is None or down.b is not None:
        return None
    prod = trial.producer(down.input)
    plain = _activation_of(Walk(walk.view), down.input)
    if plain is not None and plain[0] != "silu":  # down(act(x @ up)): a non-gated MLP
        act = _activation_of(trial, down.input)
        assert act is not None
        up = match_linear(trial, act[1])
        if up is None or up.b is not None:
            return None
        walk.nodes |= trial.nodes
        return DenseFFN(up.input, None, up.w, down.w, act[0], value)
    if prod is None or prod.op_type != "Mul":
        return None
    sw = _swiglu_ffn(trial, down.input)
    if sw is not None:
        walk.nodes |= trial.nodes
        return DenseFFN(sw[0], sw[1], sw[2], down.w, "swiglu", value, sw[3])
    for gi in (0, 1):
        act = _activation_of(trial, prod.input[gi])
        if act is None:
            continue
        fused = _split_gate_up(trial, act[1], prod.input[1 - gi])
        if fused is not None:
            trial.take(prod)
            walk.nodes |= trial.nodes
            return DenseFFN(fused[0], fused[1], fused[2], down.w, act[0], value)
        gate = match_linear(trial, act[1])
        up = match_linear(trial, prod.input[1 - gi])
        if gate is None or up is None or gate.b is not None or up.b is not None:
            return None
        if trial.root(gate.input) != trial.root(up.input):
            return None
        trial.take(prod)
        walk.nodes |= trial.nodes
        return DenseFFN(gate.input, gate.w, up.w, down.w, act[0], value)
    return None


def _split_gate_up(walk: Walk, gate: str, up: str) -> tuple[str, np.ndarray, np.ndarray] | None:
    """``gate`` and ``up`` as the two halves of one ``Split`` of ``x @ [gate | up]`` (a fused
    gate-up projection, GraniteMoE-shared's shared MLP): (x, W_gate, W_up), or None."""
    split = walk.producer(gate)
    if split is not None and split.op_type == "Slice":
        return _sliced_gate_up(walk, split, walk.producer(up))
    if split is None or split.op_type != "Split" or walk.producer(up) is not split:
        return None
    outs = list(split.output)
    if len(outs) != 2 or gate == up:
        return None
    lin = match_linear(walk, split.input[0])
    if lin is None or lin.b is not None or lin.w.shape[1] % 2:
        return None
    axis = int(walk.attr(split, "axis", 0))  # type: ignore[call-overload]
    sizes = walk.ints(split.input[1]) if len(split.input) > 1 and split.input[1] else None
    half = lin.w.shape[1] // 2
    t = walk.view.tensor_type(split.input[0])
    last = axis == -1 or (t is not None and axis == len(t.shape) - 1)
    if not last or (sizes is not None and sizes != [half, half]):
        return None
    halves = (lin.w[:, :half], lin.w[:, half:])
    g = outs.index(gate)
    walk.take(split)
    return lin.input, halves[g], halves[1 - g]


def _sliced_gate_up(
    walk: Walk, sg: onnx.NodeProto, su: onnx.NodeProto | None
) -> tuple[str, np.ndarray, np.ndarray] | None:
    """The fused projection cut by two Slices of its last axis (TorchScript's ``chunk``, the
    bounds computed from its Shape): (x, W_gate, W_up), or None."""
    if su is None or su.op_type != "Slice" or su.input[0] != sg.input[0] or su is sg:
        return None
    lin = match_linear(walk, sg.input[0])
    if lin is None or lin.b is not None or lin.w.shape[1] % 2:
        return None
    width = lin.w.shape[1]
    t = walk.view.tensor_type(sg.input[0])
    cols = []
    for s in (sg, su):
        start, end, axes = (eval_ints(walk, v) for v in s.input[1:4])
        steps = eval_ints(walk, s.input[4]) if len(s.input) > 4 and s.input[4] else [1]
        if start is None or end is None or axes is None or steps != [1] or len(axes) != 1:
            return None
        if not (axes[0] == -1 or (t is not None and axes[0] == len(t.shape) - 1)):
            return None
        cols.append(np.arange(width)[start[0] : end[0]])
    half = width // 2
    halves = {0: lin.w[:, :half], half: lin.w[:, half:]}
    if sorted(len(c) for c in cols) != [half, half] or {int(c[0]) for c in cols} != {0, half}:
        return None
    walk.take(sg)
    walk.take(su)
    return lin.input, halves[int(cols[0][0])], halves[int(cols[1][0])]


def _swiglu_ffn(
    walk: Walk, value: str, depth: int = 6
) -> tuple[str, np.ndarray, np.ndarray, tuple[float, float, float | None]] | None:
    """``value`` as the clamped SwiGLU of the two halves of one fused gate-up projection
    (MiniMax-M3's shared MLP, the routed experts' form in :mod:`hf_gating`): (x, W_gate, W_up,
    (alpha, beta, limit)), or None. The ``Split`` is found behind ``value``; the SwiGLU is then
    matched forward from its halves and must end at ``value``."""
    frontier, split = [value], None
    for _ in range(depth):
        nodes = [walk.producer(v) for v in frontier]
        splits = [n for n in nodes if n is not None and n.op_type in ("Split", "Slice")]
        if splits:
            split = splits[0]
            break
        frontier = [i for n in nodes if n is not None for i in n.input if i]
    if split is None:
        return None
    if split.op_type == "Slice":  # TorchScript's chunk: two Slices of the projection
        cuts = [c for c in walk.consumers(split.input[0]) if c.op_type == "Slice"]
        halves = tuple(c.output[0] for c in cuts)
    else:
        halves = tuple(split.output)
    if len(halves) != 2:
        return None
    for g, u in (halves, halves[::-1]):
        trial = Walk(walk.view)
        sw = swiglu_of(trial, g, u)
        if sw is None or sw[0] != value:
            continue
        fused = _split_gate_up(trial, g, u)
        if fused is None:
            return None
        walk.nodes |= trial.nodes
        return fused[0], fused[1], fused[2], sw[1:]
    return None


def _squared_input(walk: Walk, node: onnx.NodeProto) -> str | None:
    """``a`` if ``node`` computes ``a ** 2`` (``Pow(a, 2)`` or ``Mul(a, a)``), else None."""
    if node.op_type == "Pow" and walk.scalar(node.input[1]) == 2.0:
        return node.input[0]
    if node.op_type == "Mul" and node.input[0] == node.input[1]:
        return node.input[0]
    return None


def _activation_of(walk: Walk, value: str) -> tuple[str, str] | None:
    """``value`` as act(a): (activation, a), recording the activation nodes, or None."""
    p = walk.producer(value)
    if p is None:
        return None
    if p.op_type == "Relu":
        walk.take(p)
        return "relu", p.input[0]
    base = _squared_input(walk, p)
    relu = walk.producer(base) if base is not None else None
    if relu is not None and relu.op_type == "Relu" and len(walk.consumers(relu.output[0])) == 1:
        walk.take(p)
        walk.take(relu)
        return "relu2", relu.input[0]
    if p.op_type == "Gelu":
        walk.take(p)
        return ("gelu_tanh" if walk.attr(p, "approximate", "none") == "tanh" else "gelu"), p.input[
            0
        ]
    if p.op_type == "Mul":
        for si in (0, 1):
            sig = walk.producer(p.input[si])
            if sig is not None and sig.op_type == "Sigmoid" and sig.input[0] == p.input[1 - si]:
                walk.take(sig)
                walk.take(p)
                return "silu", sig.input[0]
    return None


def absorb_scaling(walk: Walk, routed: str, routing: Routing) -> str:
    """Scalar ``Mul`` nodes after the routed sum (MiniMax-M3's ``routed_scaling_factor``, applied
    to the sum instead of the gates) folded into ``routing.scaling``; the scaled value."""
    while True:
        out = walk.forward(routed)
        cs = walk.consumers(out)
        if len(cs) != 1 or cs[0].op_type != "Mul":
            return out
        factor = walk.scalar(walk.other(cs[0], out))
        if factor is None or cs[0].input[0] == cs[0].input[1]:
            return out
        routing.scaling *= factor
        routed = walk.take(cs[0]).output[0]


@dataclass
class SharedExperts:
    """Shared experts (one concatenated MLP) and their optional sigmoid gate [d, 1]."""

    ffn: DenseFFN
    gate: np.ndarray | None
    count: int | None = None  # how many experts side by side, when the graph shows it


def match_shared(
    walk: Walk,
    routed: str,
    x_root: str,
    gated: bool = True,
    swiglu: tuple[float, float, float | None] | None = None,
) -> tuple[str, SharedExperts | None]:
    """Optional ``routed + shared(x) (* sigmoid(x @ w))``; returns the sum and the shared part.
    The shared MLP must be gated exactly when the routed experts are (``gated``): the canonical
    op gives both one form; another shape stays outside, as dense ops. The op holds one set of
    SwiGLU parameters: a SwiGLU shared MLP whose parameters differ from the routed experts'
    (``swiglu``, None when those are not SwiGLU) also stays outside."""
    out = walk.forward(routed)
    adds = walk.of_type(out, "Add")
    if len(walk.consumers(out)) != 1 or not adds:
        return out, None
    add = adds[0]
    other = walk.other(add, out)
    trial = Walk(walk.view)
    gate_w: np.ndarray | None = None
    other = trial.back(other)  # AFMoE reshapes the shared output to [B, S, d] before the sum
    p = trial.producer(other)
    ffn_value = other
    if p is not None and p.op_type == "Mul":
        for si in (0, 1):
            sig = trial.producer(p.input[si])
            if sig is None or sig.op_type != "Sigmoid":
                continue
            lin = match_linear(trial, sig.input[0])
            if lin is not None and lin.w.shape[1] == 1 and lin.b is None:
                if trial.root(lin.input) == x_root:
                    trial.take(sig)
                    trial.take(p)
                    gate_w, ffn_value = lin.w, p.input[1 - si]
                    break
    ffn = match_dense_ffn(trial, ffn_value)
    if ffn is None or trial.root(ffn.x) != x_root or (ffn.gate is not None) != gated:
        return out, None
    if ffn.swiglu is not None and swiglu is not None and ffn.swiglu != swiglu:
        return out, None
    walk.nodes |= trial.nodes
    walk.take(add)
    return add.output[0], SharedExperts(ffn, gate_w)


# --- closure: the exact set of nodes a layer replaces -----------------------------------------


def close_layer(walk: Walk, x: str, y: str, what: str) -> frozenset[int]:
    """All nodes between ``x`` and ``y``: those matched, constant feeders, and shape arithmetic.

    Any other node on a path from ``x`` to ``y`` is a computation the match did not account for,
    and a value computed inside that is also used outside would be lost: both are mismatches.
    """
    view = walk.view
    inside: set[int] = set()
    constants: set[int] = set()
    stack, seen = [y], set()
    while stack:
        value = stack.pop()
        if value == x or value in seen:
            continue
        seen.add(value)
        p = view.producer(value)
        if p is None:
            if view.initializer(value) is not None:
                continue
            raise walk.fail(
                what, f"the MoE output depends on {value!r} besides the layer input {x!r}"
            )
        i = view.id(p)
        if i not in walk.nodes:
            if _is_constant_subgraph(view, p):
                constants.add(i)
                continue
            if not _is_shape_arithmetic(view, p, walk.nodes):
                raise walk.fail(p, f"unexpected {p.op_type} inside the MoE layer {what}")
        inside.add(i)
        stack += [v for v in p.input if v]
    # Constant feeders move into the layer only when nothing outside uses them.
    for i in sorted(constants, reverse=True):
        outs = [o for o in view.nodes[i].output if o]
        if all(view.id(c) in inside for o in outs for c in view.consumers(o)):
            inside.add(i)
    for i in sorted(inside):
        for out in view.nodes[i].output:
            if not out or out == y:
                continue
            outside = [c for c in view.consumers(out) if view.id(c) not in inside]
            if outside or view.is_graph_output(out):
                who = view.name(outside[0]) if outside else "a graph output"
                raise walk.fail(
                    view.nodes[i],
                    f"expected {out!r} to be used only inside the MoE layer {what}, "
                    f"found it also used by {who}",
                )
    return frozenset(inside)


def _is_constant_subgraph(view: GraphView, node: onnx.NodeProto, depth: int = 8) -> bool:
    if depth == 0:
        return False
    for v in node.input:
        if not v or view.is_constant(v):
            continue
        p = view.producer(v)
        if p is None or not _is_constant_subgraph(view, p, depth - 1):
            return False
    return True


def _is_shape_arithmetic(view: GraphView, node: onnx.NodeProto, matched: set[int]) -> bool:
    """A shape computation whose results reach only shape operands or matched nodes.

    A matched node reading such a value (like ``token * k`` indexing the gate weights) was
    checked by its matcher; anything else reading it as data makes this a real computation.
    """
    if node.op_type not in SHAPE_OPS:
        return False
    for out in node.output:
        for c in view.consumers(out):
            if view.id(c) in matched:
                continue
            for pos, v in enumerate(c.input):
                if v != out or (c.op_type, pos) in SHAPE_OPERANDS:
                    continue
                if c.op_type in SHAPE_OPS and _is_shape_arithmetic(view, c, matched):
                    continue
                return False
    return True


def close_from_deepest(walk: Walk, x: str, y: str, layer: MoELayer, what: str) -> Lifted:
    """Lift with the deepest input reachable back over reshapes that keeps the layer closed."""
    chain = [x]
    while True:
        p = walk.producer(chain[-1])
        if p is None or not (p.op_type in RESHAPES or is_float_cast(p)):
            break
        chain.append(p.input[0])
    error: NoMatch | None = None
    for cand in reversed(chain):
        try:
            return Lifted(layer, cand, y, close_layer(walk, cand, y, what))
        except NoMatch as err:
            error = error or err
    assert error is not None
    raise error


def layer_output(walk: Walk, y: str, x: str) -> str:
    """Follow single-consumer reshapes after the layer until its output has the input's shape."""
    xt = walk.view.tensor_type(x)
    while True:
        yt = walk.view.tensor_type(y)
        if xt is None or yt is None or yt.shape == xt.shape:
            return y
        cs = walk.consumers(y)
        if len(cs) != 1 or cs[0].op_type not in RESHAPES or cs[0].input[0] != y:
            return y
        y = walk.take(cs[0]).output[0]


# --- building the canonical layer -------------------------------------------------------------


#: The layer's gates were multiplied by a per-expert scale (Gemma-4), folded into ``w_down``:
#: the outputs are the model's, the op's gate weights are the scale-free ones.
EXPERT_SCALE_NOTE = "per_expert_gate_scale_folded_into_w_down"


@dataclass(eq=False)
class Projection:
    """One batched projection: ``out[s] = in[s] @ W[ids[s]] (+ b[ids[s]])``, W as [E, in, out]."""

    w: np.ndarray
    b: np.ndarray | None
    input: str
    output: str


def build_layer(
    name: str,
    routing: Routing,
    up: Projection,
    down: Projection,
    gating: Gating,
    shared: SharedExperts | None,
) -> MoELayer:
    """The canonical layer from the matched parts (weights copied into moec's layout)."""
    router = routing.router
    R, d = router.weight.shape
    E = R - routing.identity_experts
    weights = {"router_w": present("router_w", router.weight)}
    if router.bias is not None:
        weights["router_b"] = present("router_b", router.bias)
    if routing.score_bias is not None:
        weights["score_bias"] = present("score_bias", routing.score_bias)
    cols = {"up": gating.up_cols} if gating.gate_cols is None else {
        "gate": gating.gate_cols, "up": gating.up_cols}  # fmt: skip
    for part, c in cols.items():
        weights[f"w_{part}"] = present(f"w_{part}", np.ascontiguousarray(up.w[:, :, c]))
        if up.b is not None:
            weights[f"b_{part}"] = present(f"b_{part}", np.ascontiguousarray(up.b[:, c]))
    F = len(gating.up_cols)
    w_down, b_down = down.w, down.b
    if routing.expert_scale is not None:
        # gate * s[e] * (h @ W_down[e] + b[e]) == gate * (h @ (s[e] W_down[e]) + s[e] b[e])
        s = routing.expert_scale.astype(np.float32)
        w_down = (w_down * s[:, None, None]).astype(np.float32)
        b_down = None if b_down is None else (b_down * s[:, None]).astype(np.float32)
    weights["w_down"] = present("w_down", w_down)
    if b_down is not None:
        weights["b_down"] = present("b_down", b_down)
    layer = MoELayer(
        name, E, routing.top_k, d, F, weights, scoring=router.scoring,
        normalize_topk=routing.normalize, routed_scaling=routing.scaling,
        n_group=routing.n_group, topk_group=routing.topk_group, group_score=routing.group_score,
        activation=gating.activation, gated=gating.gated, swiglu_alpha=gating.alpha,
        swiglu_beta=gating.beta, swiglu_limit=gating.limit, gate_softcap=gating.gate_softcap,
        up_softcap=gating.up_softcap,
        sparsemixer_eps=routing.sparsemixer_eps, bias_on_logits=routing.bias_on_logits,
        shared_in_norm=routing.shared_in_norm,
        identity_experts=routing.identity_experts,
    )  # fmt: skip
    if routing.n_group > 1:
        layer.group_fill = routing.group_fill
    if routing.expert_scale is not None:
        layer.annotations.routing_note = EXPERT_SCALE_NOTE
    if shared is not None:
        attach_shared(layer, shared)
    layer.verify()
    return layer


def attach_shared(layer: MoELayer, shared: SharedExperts) -> None:
    """Put matched shared experts into ``layer`` (weights, count, size, activation)."""
    ffn, weights, F = shared.ffn, layer.weights, layer.ffn
    Fs = ffn.up.shape[1]
    if ffn.gate is not None:
        weights["sh_gate"] = present("sh_gate", ffn.gate)
    weights["sh_up"] = present("sh_up", ffn.up)
    weights["sh_down"] = present("sh_down", ffn.down)
    if shared.gate is not None:
        weights["sh_router"] = present("sh_router", shared.gate)
    # Shared experts are concatenated along Fs; their count is only visible when Fs is a
    # multiple of the routed experts' F (DeepSeek: n_shared * F), else they count as one.
    layer.num_shared = shared.count or (Fs // F if Fs % F == 0 else 1)
    layer.shared_ffn = Fs
    layer.shared_activation = ffn.activation
    if ffn.swiglu is not None:
        # One set of SwiGLU parameters per layer (match_shared checked they agree).
        layer.swiglu_alpha, layer.swiglu_beta, layer.swiglu_limit = ffn.swiglu
