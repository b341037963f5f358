"""Recognizer for moec's own decomposed MoE form (see :mod:`moec.models.moe_blocks`).

Anchored at the expert-choice ``TopK``; everything is found by dataflow, never by node names:

1. routing, backwards from the TopK: optional group mask (``Where`` over a OneHot of a group
   TopK), optional score-correction bias (``Add`` of a constant), the scores (``Softmax`` or
   ``Sigmoid``) of the router logits (``MatMul(x, Wr)`` + optional constant bias);
2. gate weights, forwards: ``GatherElements(scores, ids)``, optional renormalization
   (``Div`` by a ``ReduceSum``, with or without epsilon), optional ``Mul`` by a constant (routed
   scaling), into ``ScatterElements`` building the dense [T, E] dispatch matrix;
3. experts: the dispatch matrix (transposed, unsqueezed) multiplies ``act(x Wg) * (x Wu) Wd``
   and a ``ReduceSum`` over experts makes the routed output; an ``Add`` of a shared-expert FFN of
   the same x (optionally times ``Sigmoid(x Ws)``) is taken in too.

A group ``TopK`` is not an anchor (``None``); it is covered by the layer of its expert TopK.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from moec.compiler.frontend.hf_routing import NoMatch, NotThisPattern, Walk
from moec.compiler.frontend.patterns import GraphView, Lifted, Mismatch, register
from moec.compiler.frontend.sparsemixer import match_picks
from moec.ir.graph import TensorType, Weight
from moec.ir.moe import MoELayer


class _NoMatch(Exception):
    """Internal: the structure differs from the decomposed form (message says how)."""


def _prod(view: GraphView, value: str, *ops: str) -> onnx.NodeProto:
    p = view.producer(value)
    if p is None or p.op_type not in ops:
        found = p.op_type if p is not None else "no producing node"
        raise _NoMatch(f"expected {'/'.join(ops)} producing {value!r}, found {found}")
    return p


def _only_consumer(view: GraphView, value: str, *ops: str) -> onnx.NodeProto:
    cs = view.consumers(value)
    if len(cs) != 1 or cs[0].op_type not in ops:
        found = ", ".join(c.op_type for c in cs) or "nothing"
        raise _NoMatch(f"expected {value!r} to feed one {'/'.join(ops)}, it feeds {found}")
    return cs[0]


def _other(node: onnx.NodeProto, value: str) -> str:
    ins = [i for i in node.input if i != value]
    if len(ins) != 1:
        raise _NoMatch(f"expected a binary op on {value!r}")
    return ins[0]


def _scalar(view: GraphView, value: str) -> float | None:
    c = view.constant(value)
    if c is None or c.size != 1:
        return None
    return float(c.reshape(-1)[0])


def _weight(view: GraphView, value: str, key: str) -> Weight:
    w = view.weight(value)
    if w is None:
        raise _NoMatch(f"expected a constant weight for {key}, found computed value {value!r}")
    data = None if w.data is None else np.asarray(w.data, np.float32)
    return Weight(key, TensorType("f32", tuple(int(s) for s in w.type.shape)), data)


def _reshaped(w: Weight, key: str, shape: tuple[int, ...]) -> Weight:
    data = None if w.data is None else np.ascontiguousarray(w.data.reshape(shape))
    return Weight(key, TensorType("f32", shape), data)


def _transposed(w: Weight, key: str) -> Weight:
    shape = tuple(reversed(w.type.shape))
    data = None if w.data is None else np.ascontiguousarray(w.data.T)
    return Weight(key, TensorType("f32", shape), data)


class _Match:
    """Accumulates node ids and weights while matching one layer."""

    def __init__(self, view: GraphView) -> None:
        self.view = view
        self.nodes: set[int] = set()
        self.weights: dict[str, Weight] = {}

    def take(self, node: onnx.NodeProto) -> onnx.NodeProto:
        self.nodes.add(self.view.id(node))
        for inp in node.input:
            p = self.view.producer(inp) if inp else None
            if p is not None and p.op_type in ("Constant",):
                self.nodes.add(self.view.id(p))
        return node

    def linear(self, value: str, x: str | None, key: str, bias_key: str | None) -> str:
        """``value = MatMul(x, W) (+ b)``; records W (and b); returns x."""
        view = self.view
        p = _prod(view, value, "MatMul", "Add")
        if p.op_type == "Add":
            const = [i for i in p.input if view.is_constant(i)]
            if len(const) != 1 or bias_key is None:
                raise _NoMatch(f"expected MatMul(x, {key}) plus a constant bias")
            self.weights[bias_key] = _weight(view, const[0], bias_key)
            self.take(p)
            p = _prod(view, _other(p, const[0]), "MatMul")
        if not view.is_constant(p.input[1]):
            raise _NoMatch(f"expected {key} to be a constant weight")
        if x is not None and p.input[0] != x:
            raise _NoMatch(
                f"expected {key} to be applied to the MoE input {x!r}, not {p.input[0]!r}"
            )
        self.weights[key] = _weight(view, p.input[1], key)
        self.take(p)
        return p.input[0]

    def activation(self, value: str) -> tuple[str, str]:
        """``value = act(z)``: (kind, z) for silu (z*Sigmoid(z)), relu, gelu (erf form)."""
        view = self.view
        p = view.producer(value)
        if p is not None and p.op_type == "Relu":
            self.take(p)
            return "relu", p.input[0]
        if p is not None and p.op_type in ("Pow", "Mul"):
            exponent = view.constant(p.input[1]) if p.op_type == "Pow" else None
            square = (
                p.input[0] == p.input[1]
                if p.op_type == "Mul"
                else exponent is not None and np.asarray(exponent).size == 1
                and float(np.asarray(exponent).reshape(-1)[0]) == 2.0
            )  # fmt: skip
            r = view.producer(p.input[0]) if square else None
            if r is not None and r.op_type == "Relu" and len(view.consumers(r.output[0])) == 1:
                self.take(p)
                self.take(r)
                return "relu2", r.input[0]
        if p is not None and p.op_type == "Mul":
            for a, b in ((p.input[0], p.input[1]), (p.input[1], p.input[0])):
                s = view.producer(b)
                if s is not None and s.op_type == "Sigmoid" and s.input[0] == a:
                    self.take(p)
                    self.take(s)
                    return "silu", a
            gelu = self._gelu(p)
            if gelu is not None:
                return "gelu", gelu
        found = p.op_type if p is not None else "no producing node"
        raise _NoMatch(
            f"expected an activation (silu, relu, gelu) producing {value!r}, found {found}"
        )

    def _gelu(self, mul: onnx.NodeProto) -> str | None:
        # Mul(Mul(z, 0.5), Add(Erf(Mul(z, 1/sqrt2)), 1))
        view = self.view
        for a, b in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
            half, add = view.producer(a), view.producer(b)
            if half is None or add is None or half.op_type != "Mul" or add.op_type != "Add":
                continue
            z = next((i for i in half.input if _scalar(view, i) == 0.5), None)
            erf = next((view.producer(i) for i in add.input if _scalar(view, i) is None), None)
            if z is None or erf is None or erf.op_type != "Erf":
                continue
            z = _other(half, z)
            inner = view.producer(erf.input[0])
            if inner is None or inner.op_type not in ("Mul", "Div") or z not in inner.input:
                continue
            c = _scalar(view, _other(inner, z))
            if c is None or not math.isclose(
                c, 1 / math.sqrt(2) if inner.op_type == "Mul" else math.sqrt(2), rel_tol=1e-5
            ):
                continue
            for n in (mul, half, add, erf, inner):
                self.take(n)
            return z
        return None

    def ffn(self, value: str, x: str | None, prefix: str) -> tuple[str, str, bool]:
        """``value = (act(x Wg) * (x Wu)) Wd`` or ``act(x Wu) Wd``: (x, activation, gated)."""
        down_in = self.linear(value, None, f"{prefix}down", "b_down" if prefix == "w_" else None)
        p = self.view.producer(down_in)
        if p is not None and p.op_type == "Mul":
            for a, b in ((p.input[0], p.input[1]), (p.input[1], p.input[0])):
                saved = (set(self.nodes), dict(self.weights))
                try:
                    kind, z = self.activation(a)
                    bias = prefix == "w_"
                    xg = self.linear(z, x, f"{prefix}gate", "b_gate" if bias else None)
                    xu = self.linear(b, xg, f"{prefix}up", "b_up" if bias else None)
                    self.take(p)
                    return xu, kind, True
                except _NoMatch:
                    self.nodes, self.weights = saved
        kind, z = self.activation(down_in)
        xu = self.linear(z, x, f"{prefix}up", "b_up" if prefix == "w_" else None)
        return xu, kind, False


def _routing_back(m: _Match, topk: onnx.NodeProto) -> tuple[str, dict[str, object]]:
    """From the expert TopK back to the scores: (scores value, routing options)."""
    view = m.view
    opts: dict[str, object] = {}
    choice = topk.input[0]
    p = view.producer(choice)
    if p is not None and p.op_type == "Where":
        choice = _group_mask(m, p, opts)
        p = view.producer(choice)
    if p is not None and p.op_type == "Add":
        const = [i for i in p.input if view.is_constant(i)]
        if len(const) == 1:
            m.weights["score_bias"] = _weight(view, const[0], "score_bias")
            m.take(p)
            choice = _other(p, const[0])
    return choice, opts


def _group_mask(m: _Match, where: onnx.NodeProto, opts: dict[str, object]) -> str:
    view = m.view
    m.take(where)
    cast = _prod(view, where.input[0], "Cast")
    reshape = _prod(view, cast.input[0], "Reshape")
    expand = _prod(view, reshape.input[0], "Expand")
    unsq = _prod(view, expand.input[0], "Unsqueeze")
    keep = _prod(view, unsq.input[0], "ReduceSum")
    onehot = _prod(view, keep.input[0], "OneHot")
    gtopk = _prod(view, onehot.input[0], "TopK")
    k = view.constant(gtopk.input[1])
    if k is None:
        raise _NoMatch("group TopK k is not a constant")
    gscore = _prod(view, gtopk.input[0], "ReduceMax", "ReduceSum")
    if gscore.op_type == "ReduceSum":
        top2 = _prod(view, gscore.input[0], "TopK")
        grouped = _prod(view, top2.input[0], "Reshape")
        m.take(top2)
        opts["group_score"] = "top2_sum"
    else:
        grouped = _prod(view, gscore.input[0], "Reshape")
        opts["group_score"] = "max"
    shape = view.constant(grouped.input[1])
    if shape is None or shape.size != 3:
        raise _NoMatch("group Reshape needs a constant [-1, groups, experts/group] shape")
    opts["n_group"] = int(shape[1])
    opts["topk_group"] = int(k.reshape(-1)[0])
    fill = _scalar(view, where.input[2])
    opts["fill"] = fill
    for n in (cast, reshape, expand, unsq, keep, onehot, gtopk, gscore, grouped):
        m.take(n)
    if grouped.input[0] != where.input[1]:
        raise _NoMatch("group scores and masked scores come from different values")
    return where.input[1]


def _match(view: GraphView, topk: onnx.NodeProto) -> Lifted:
    m = _Match(view)
    m.take(topk)
    ids = topk.output[1]
    users = view.consumers(ids)
    if {u.op_type for u in users} != {"GatherElements", "ScatterElements"} or len(users) != 2:
        found = ", ".join(sorted(u.op_type for u in users)) or "nothing"
        raise _NoMatch(
            f"expected TopK indices to feed GatherElements and ScatterElements, found {found}"
        )
    gather = next(u for u in users if u.op_type == "GatherElements")
    scatter = next(u for u in users if u.op_type == "ScatterElements")
    scores_v, opts = _routing_back(m, topk)
    if gather.input[0] != scores_v:
        raise _NoMatch("gate weights are not gathered from the scores TopK chose from")
    scoring_node = _prod(view, scores_v, "Softmax", "Sigmoid")
    m.take(scoring_node)
    scoring = "softmax" if scoring_node.op_type == "Softmax" else "sigmoid"
    x = m.linear(scoring_node.input[0], None, "router_wt", "router_b")
    m.take(gather)
    # Gate weights forward to the dispatch matrix.
    g = gather.output[0]
    normalize, scaling = False, 1.0
    while True:
        users = view.consumers(g)
        if any(u is scatter for u in users):
            break
        nxt = next((u for u in users if u.op_type in ("Div", "Mul")), None)
        if nxt is None:
            raise _NoMatch("expected gate weights to reach the dispatch ScatterElements")
        if nxt.op_type == "Div":
            total = view.producer(nxt.input[1])
            if total is not None and total.op_type == "Add":
                m.take(total)
                total = view.producer(next(i for i in total.input if not view.is_constant(i)))
            if total is None or total.op_type != "ReduceSum" or total.input[0] != g:
                raise _NoMatch("expected gate renormalization Div(g, ReduceSum(g))")
            m.take(total)
            normalize = True
        else:
            c = _scalar(view, _other(nxt, g))
            if c is None:
                raise _NoMatch("gate Mul by a non-constant")
            scaling *= c
        m.take(nxt)
        g = nxt.output[0]
    y, activation, gated = _dispatch_to_output(m, scatter, g, x, opts)
    return _layer(view, topk, m, x, y, scoring, normalize, scaling, activation, gated, opts)


def _dispatch_to_output(
    m: _Match, scatter: onnx.NodeProto, g: str, x: str, opts: dict[str, object]
) -> tuple[str, str, bool]:
    """From the gate weights ``g`` scattered into the dispatch matrix to the layer output:
    (output value, expert activation, gated)."""
    view = m.view
    if scatter.input[2] != g:
        raise _NoMatch("dispatch ScatterElements does not scatter the gate weights")
    m.take(scatter)
    zeros = _prod(view, scatter.input[0], "ConstantOfShape")
    m.take(zeros)
    shape = view.producer(zeros.input[0])
    if shape is not None and shape.op_type == "Shape":
        m.take(shape)
    # Combine: ReduceSum(out * Unsqueeze(Transpose(dispatch))) over experts.
    tr = _only_consumer(view, scatter.output[0], "Transpose")
    unsq = _only_consumer(view, m.take(tr).output[0], "Unsqueeze")
    mul = _only_consumer(view, m.take(unsq).output[0], "Mul")
    red = _only_consumer(view, m.take(mul).output[0], "ReduceSum")
    m.take(red)
    xe, activation, gated = m.ffn(_other(mul, unsq.output[0]), x, "w_")
    if xe != x:
        raise _NoMatch("experts read a different value than the router")
    y = red.output[0]
    # Shared experts: y + ffn_s(x) (optionally * Sigmoid(x Ws)).
    users = view.consumers(y)
    if len(users) == 1 and users[0].op_type == "Add":
        add = users[0]
        other = _other(add, y)
        saved = (set(m.nodes), dict(m.weights))
        try:
            p = view.producer(other)
            if p is not None and p.op_type == "Mul":
                for a, b in ((p.input[0], p.input[1]), (p.input[1], p.input[0])):
                    sg = view.producer(b)
                    if sg is not None and sg.op_type == "Sigmoid":
                        m.linear(sg.input[0], x, "sh_router", None)
                        m.take(sg)
                        m.take(p)
                        other = a
                        break
            xs, sh_act, sh_gated = m.ffn(other, x, "sh_")
            if not sh_gated or xs != x:
                raise _NoMatch("shared expert is not a gated FFN of the MoE input")
            m.take(add)
            y = add.output[0]
            opts["shared_activation"] = sh_act
        except _NoMatch:
            m.nodes, m.weights = saved
    return y, activation, gated


def _layer(
    view: GraphView, topk: onnx.NodeProto, m: _Match, x: str, y: str, scoring: str,
    normalize: bool, scaling: float, activation: str, gated: bool, opts: dict[str, object],
) -> Lifted:  # fmt: skip
    w = m.weights
    w["router_w"] = _transposed(w.pop("router_wt"), "router_w")
    E, d, F = (int(s) for s in w["w_up"].type.shape)
    for key, shape in (
        ("b_up", (E, F)),
        ("b_gate", (E, F)),
        ("b_down", (E, d)),
        ("router_b", (E,)),
        ("score_bias", (E,)),
    ):
        if key in w:
            w[key] = _reshaped(w[key], key, shape)
    k = view.constant(topk.input[1]) if topk.op_type == "TopK" else np.array([2])
    if k is None:
        raise _NoMatch("TopK k is not a constant")
    fill = opts.get("fill")
    if "n_group" in opts and fill is None:
        raise _NoMatch("group mask fill value is not a constant scalar")
    default_fill = 0.0 if "score_bias" in w else -math.inf
    Fs = int(w["sh_up"].type.shape[1]) if "sh_up" in w else 0
    layer = MoELayer(
        name=view.name(topk), num_experts=E, top_k=int(k.reshape(-1)[0]), hidden=d, ffn=F,
        weights=w, scoring=scoring, normalize_topk=normalize, routed_scaling=scaling,
        n_group=int(opts.get("n_group", 1)), topk_group=int(opts.get("topk_group", 1)),  # type: ignore[call-overload]
        group_score=str(opts.get("group_score", "max")), activation=activation, gated=gated,
        num_shared=(max(1, Fs // F) if Fs else 0), shared_ffn=Fs,
        shared_activation=str(opts.get("shared_activation", "silu")),
    )  # fmt: skip
    if "n_group" in opts and fill != default_fill:
        layer.group_fill = float(fill)  # type: ignore[arg-type]
    if "sparsemixer_eps" in opts:
        layer.sparsemixer_eps = float(opts["sparsemixer_eps"])  # type: ignore[arg-type]
    layer.annotations.source = "moec.decomposed"
    layer.verify()
    return Lifted(layer, x, y, frozenset(m.nodes))


@register("moec-decomposed", anchors=("TopK",))
def recognize_decomposed(view: GraphView, node: onnx.NodeProto) -> Lifted | Mismatch | None:
    """The expert-choice TopK of moec's decomposed MoE block."""
    ids_users = view.consumers(node.output[1]) if len(node.output) > 1 else []
    kinds = {u.op_type for u in ids_users}
    if "OneHot" in kinds or not (kinds & {"GatherElements", "ScatterElements"}):
        return None  # a group TopK, or not this form at all
    try:
        return _match(view, node)
    except _NoMatch as err:
        return view.fail(node, str(err))
    except Exception as err:  # noqa: BLE001 - e.g. inconsistent weight shapes
        return view.fail(node, f"inconsistent MoE structure ({err})")


@register("moec-decomposed-sparsemixer", anchors=("ArgMax",))
def recognize_decomposed_sparsemixer(
    view: GraphView, node: onnx.NodeProto
) -> Lifted | Mismatch | None:
    """The first ``ArgMax`` of a sparsemixer router in moec's decomposed form (the Phi-3.5-MoE
    preset): the picks as :mod:`~moec.compiler.frontend.sparsemixer` matches them, then the
    dispatch matrix and experts as for a TopK router."""
    m = _Match(view)
    try:
        x = m.linear(node.input[0], None, "router_wt", "router_b")
    except _NoMatch:
        return None
    experts = int(m.weights["router_wt"].type.shape[1])
    walk = Walk(view)
    try:
        picks = match_picks(walk, node, experts)
    except NotThisPattern:
        return None
    except NoMatch as err:
        return Mismatch(err.node, err.reason)
    m.nodes |= picks.nodes
    try:
        users = view.consumers(picks.ids)
        if len(users) != 1 or users[0].op_type != "ScatterElements":
            found = ", ".join(sorted(u.op_type for u in users)) or "nothing"
            raise _NoMatch(
                f"expected the sparsemixer ids to feed the dispatch ScatterElements, found {found}"
            )
        opts: dict[str, object] = {"sparsemixer_eps": picks.eps}
        y, activation, gated = _dispatch_to_output(m, users[0], picks.gates, x, opts)
        return _layer(view, node, m, x, y, "sparsemixer", False, 1.0, activation, gated, opts)
    except _NoMatch as err:
        return view.fail(node, str(err))
