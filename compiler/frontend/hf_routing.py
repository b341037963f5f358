"""Matching a Hugging Face MoE router in an exported ONNX graph: scores, top-k, gate weights.

Shared by the recognizers of :mod:`moec.compiler.frontend.hf_batched` and
:mod:`moec.compiler.frontend.hf_unrolled`. A :class:`Walk` records every node a match passes
over; matchers raise :class:`NoMatch` (a located reason: expected versus found) when the graph
starts like an MoE router but continues differently, and :class:`NotThisPattern` when the
anchor is not a router of this kind at all. Matching follows dataflow and constant values only,
never node names::

    x -> Gemm/MatMul(+Add) -> Softmax | Sigmoid (-> Add correction bias)
      (-> Reshape [T,G,E/G] -> TopK 2 -> ReduceSum | ReduceMax -> TopK topk_group
          -> ScatterElements -> Expand -> Cast -> (Not) -> Where(mask, scores, fill))
      -> TopK k -> (GatherElements of the scores) (-> ReduceSum | ReduceL1 (+eps | Clip(min=eps)),
         Div) (-> Mul scaling)

The experts' activations are matched in :mod:`moec.compiler.frontend.hf_activation`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnx

from moec.compiler.frontend.patterns import GraphView, NoMatch, NotThisPattern

RESHAPES = frozenset({"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"})
# Ops allowed to compute the shape operands of RESHAPES (TorchScript emits them dynamically).


@dataclass
class Walk:
    """Graph queries for one match attempt, recording every node the match walks over."""

    view: GraphView
    nodes: set[int] = field(default_factory=set)

    def fail(self, node: onnx.NodeProto | str, reason: str) -> NoMatch:
        return NoMatch(node if isinstance(node, str) else self.view.name(node), reason)

    def take(self, node: onnx.NodeProto) -> onnx.NodeProto:
        self.nodes.add(self.view.id(node))
        return node

    def producer(self, value: str) -> onnx.NodeProto | None:
        return self.view.producer(value)

    def consumers(self, value: str) -> list[onnx.NodeProto]:
        return self.view.consumers(value)

    def const(self, value: str) -> np.ndarray | None:
        return self.view.constant(value) if value else None

    def ints(self, value: str) -> list[int] | None:
        arr = self.const(value)
        return None if arr is None else [int(v) for v in np.asarray(arr).reshape(-1)]

    def scalar(self, value: str) -> float | None:
        arr = self.const(value)
        if arr is None or np.asarray(arr).size != 1:
            return None
        return float(np.asarray(arr).reshape(-1)[0])

    def attr(self, node: onnx.NodeProto, key: str, default: object = None) -> object:
        return self.view.attr(node, key, default)

    def other(self, node: onnx.NodeProto, value: str) -> str:
        """The other input of a binary node, given one of them."""
        a, b = node.input[0], node.input[1]
        return b if a == value else a

    def back(self, value: str, ops: Iterable[str] = RESHAPES) -> str:
        """Walk back over value-preserving ops (and float Casts), recording them."""
        kinds = set(ops)
        while True:
            p = self.producer(value)
            if p is None or not (p.op_type in kinds or is_float_cast(p)):
                return value
            self.take(p)
            value = p.input[0]

    def root(self, value: str) -> str:
        """Like :meth:`back` but without recording (to compare two values' origins)."""
        while True:
            p = self.producer(value)
            if p is None or not (p.op_type in RESHAPES or is_float_cast(p)):
                return value
            value = p.input[0]

    def forward(self, value: str) -> str:
        """Follow a chain of single-consumer value-preserving ops forward, recording them."""
        while True:
            cs = self.consumers(value)
            if len(cs) != 1 or not (cs[0].op_type in RESHAPES or is_float_cast(cs[0])):
                return value
            if cs[0].input[0] != value:
                return value
            self.take(cs[0])
            value = cs[0].output[0]

    def only(self, value: str, what: str, op_types: Iterable[str]) -> onnx.NodeProto:
        """The single consumer of ``value`` (after value-preserving ops), of one of ``op_types``."""
        value = self.forward(value)
        cs = self.consumers(value)
        kinds = tuple(op_types)
        if len(cs) != 1 or cs[0].op_type not in kinds:
            found = ", ".join(c.op_type for c in cs) or "no consumer"
            where = self.producer(value)
            raise self.fail(
                where if where is not None else value,
                f"expected {what} ({'/'.join(kinds)}) after {value!r}, found {found}",
            )
        return self.take(cs[0])

    def of_type(self, value: str, op_type: str) -> list[onnx.NodeProto]:
        return [c for c in self.consumers(value) if c.op_type == op_type]


def is_float_cast(node: onnx.NodeProto) -> bool:
    return node.op_type == "Cast" and GraphView.attr(node, "to") == onnx.TensorProto.FLOAT


# --- router -----------------------------------------------------------------------------------


@dataclass
class Linear:
    """``y = a @ w + b`` found in the graph, with ``w`` as [in, out]."""

    input: str
    w: np.ndarray
    b: np.ndarray | None
    output: str


def match_linear(walk: Walk, value: str) -> Linear | None:
    """``value`` as Gemm / MatMul(+Add) of a dynamic input with constant weights, or None."""
    p = walk.producer(value)
    if p is None:
        return None
    bias: np.ndarray | None = None
    if p.op_type == "Add":
        for i in (0, 1):
            c = walk.const(p.input[i])
            q = walk.producer(p.input[1 - i])
            if c is not None and q is not None and q.op_type == "MatMul":
                lin = match_linear(walk, p.input[1 - i])
                if lin is None or lin.b is not None:
                    return None
                walk.take(p)
                return Linear(lin.input, lin.w, np.asarray(c, dtype=np.float32), value)
        return None
    if p.op_type == "MatMul":
        w = walk.const(p.input[1])
        if w is None or w.ndim != 2 or walk.const(p.input[0]) is not None:
            return None
        walk.take(p)
        return Linear(p.input[0], np.asarray(w, dtype=np.float32), None, value)
    if p.op_type == "Gemm":
        w = walk.const(p.input[1])
        if w is None or walk.attr(p, "transA", 0) or walk.const(p.input[0]) is not None:
            return None
        alpha, beta = float(walk.attr(p, "alpha", 1.0)), float(walk.attr(p, "beta", 1.0))  # type: ignore[arg-type]
        w = np.asarray(w, dtype=np.float32) * np.float32(alpha)
        w = w.T if walk.attr(p, "transB", 0) else w
        if len(p.input) > 2 and p.input[2]:
            c = walk.const(p.input[2])
            if c is None:
                return None
            bias = np.asarray(c, dtype=np.float32).reshape(-1) * np.float32(beta)
        walk.take(p)
        return Linear(p.input[0], w, bias, value)
    return None


@dataclass
class Router:
    """Router scores: ``scores = softmax|sigmoid(x @ weight.T + bias)``."""

    x: str
    weight: np.ndarray  # [E, d]
    bias: np.ndarray | None
    scoring: str
    scores: str
    node: onnx.NodeProto


def match_router_scores(walk: Walk, scoring: onnx.NodeProto) -> Router | None:
    """A Softmax(axis -1) / Sigmoid over the logits of a constant-weight projection, or None."""
    if scoring.op_type not in ("Softmax", "Sigmoid"):
        return None
    if scoring.op_type == "Softmax" and walk.attr(scoring, "axis", -1) not in (-1, 1):
        return None
    logits = walk.back(scoring.input[0], ())
    lin = match_linear(walk, logits)
    if lin is None or lin.w.shape[1] < 2:
        return None
    walk.take(scoring)
    kind = "softmax" if scoring.op_type == "Softmax" else "sigmoid"
    return Router(lin.input, np.ascontiguousarray(lin.w.T), lin.b, kind, scoring.output[0], scoring)


# Ops a TopK's scores may pass through between the router scoring and the anchor TopK.
_ROUTE_OPS = frozenset({"Add", "Where", "ReduceSum", "ReduceMax", "TopK", "Reshape", "Cast",
                        "Identity", "Squeeze", "Unsqueeze"})  # fmt: skip


def find_scoring(view: GraphView, topk: onnx.NodeProto, depth: int = 10) -> onnx.NodeProto | None:
    """The Softmax/Sigmoid of a router upstream of ``topk`` (through routing ops), or None."""
    frontier, seen = [topk.input[0]], set()
    for _ in range(depth):
        nxt = []
        for value in frontier:
            p = view.producer(value)
            if p is None or view.id(p) in seen:
                continue
            seen.add(view.id(p))
            if p.op_type in ("Softmax", "Sigmoid") and match_router_scores(Walk(view), p):
                return p
            if p.op_type in _ROUTE_OPS:
                nxt += [i for i in p.input[:3] if i and not view.is_constant(i)]
        frontier = nxt
    return None


# --- routing (router -> top-k ids and gate weights) -------------------------------------------


@dataclass
class Routing:
    router: Router
    top_k: int
    ids: str  # [T, k] expert ids
    weights: str  # [T, k] final gate weights
    score_bias: np.ndarray | None = None
    n_group: int = 1
    topk_group: int = 1
    group_score: str = "max"
    group_fill: float | None = None
    normalize: bool = False
    scaling: float = 1.0
    topk_node: onnx.NodeProto | None = None
    sparsemixer_eps: float = 0.01
    identity_experts: int = 0  # router rows past the real experts (identity.py)
    # Gemma-4: the final gates times a learned per-expert scale gathered by the ids ([E]).
    expert_scale: np.ndarray | None = None
    bias_on_logits: bool = False
    shared_in_norm: bool = False


def _topk_k(walk: Walk, node: onnx.NodeProto) -> int:
    k = walk.ints(node.input[1]) if len(node.input) > 1 else None
    if k is None or len(k) != 1:
        raise walk.fail(node, "expected a constant k on the router TopK, found a computed one")
    if walk.attr(node, "largest", 1) != 1 or walk.attr(node, "axis", -1) not in (-1, 1, 2):
        raise walk.fail(node, "expected TopK(largest=1) over the last axis of the router scores")
    return k[0]


def match_routing(walk: Walk, router: Router) -> Routing:
    """From the router scores to the final top-k ids and gate weights (all variants above)."""
    scores = walk.forward(router.scores)
    E = router.weight.shape[0]
    choice, bias = scores, None
    for c in walk.of_type(scores, "Reshape"):  # the scores viewed as [T, E] again (LongCat)
        if c.input[0] == scores and len(sh := walk.ints(c.input[1]) or []) == 2 and sh[1] == E:
            choice = walk.take(c).output[0]
    for c in walk.consumers(choice):
        if c.op_type == "Add":
            b = walk.const(walk.other(c, choice))
            if b is not None and b.size == E:
                bias, choice = np.asarray(b, dtype=np.float32).reshape(E), c.output[0]
                walk.take(c)
    group = _match_groups(walk, choice, E)
    masked = group[4] if group else choice
    finals = walk.of_type(masked, "TopK")
    if len(finals) != 1:
        found = ", ".join(c.op_type for c in walk.consumers(masked)) or "nothing"
        raise walk.fail(router.node, f"expected one TopK over the expert scores, found {found}")
    topk = walk.take(finals[0])
    k = _topk_k(walk, topk)
    ids = topk.output[1]
    weights = topk.output[0]
    gathers = [
        c for c in walk.consumers(scores)
        if c.op_type == "GatherElements" and walk.root(c.input[1]) == ids
    ]  # fmt: skip
    if gathers:
        weights = walk.take(gathers[0]).output[0]
    elif bias is not None:
        raise walk.fail(topk, "expected the gate weights gathered from the uncorrected scores "
                        "(GatherElements) since the top-k choice uses a correction bias")  # fmt: skip
    r = Routing(router, k, ids, weights, bias, topk_node=topk)
    if group:
        r.n_group, r.topk_group, r.group_score, r.group_fill = group[:4]
    _match_gate_postprocess(walk, r)
    return r


def _match_groups(walk: Walk, choice: str, E: int) -> tuple[int, int, str, float, str] | None:
    """Group-limited top-k: (n_group, topk_group, group_score, fill, masked scores) or None."""
    reshapes = [c for c in walk.consumers(choice) if c.op_type == "Reshape"]
    if not reshapes:
        return None
    rs = reshapes[0]
    shape = walk.ints(rs.input[1])
    if shape is None or len(shape) != 3 or shape[2] <= 0 or E % shape[2]:
        raise walk.fail(
            rs, f"expected expert scores reshaped to [T, groups, {E}/groups], found {shape}"
        )
    G = E // shape[2]
    walk.take(rs)
    grouped = rs.output[0]
    first = walk.consumers(grouped)
    if len(first) != 1:
        raise walk.fail(rs, "expected one group-score reduction after the group reshape")
    red = walk.take(first[0])
    if red.op_type == "TopK" and _topk_k(walk, red) == 2:
        agg = walk.only(red.output[0], "the sum of each group's top-2 scores", ("ReduceSum",))
        gscore, kind = agg.output[0], "top2_sum"
    elif red.op_type == "ReduceMax":
        gscore, kind = red.output[0], "max"
    elif red.op_type == "TopK" and _topk_k(walk, red) == 1:
        gscore, kind = walk.forward(red.output[0]), "max"
    else:
        raise walk.fail(
            red, f"expected a group score (TopK 2 + ReduceSum, or ReduceMax), found {red.op_type}"
        )
    gsel = walk.only(gscore, "the top groups", ("TopK",))
    topk_group = _topk_k(walk, gsel)
    scatter = _group_scatter(walk, gsel.output[1])
    _take_const_tree(walk, scatter.input[0])
    _take_const_tree(walk, scatter.input[2])
    mask = walk.forward(scatter.output[0])
    expand = walk.only(mask, "the group mask expanded to experts", ("Expand",))
    _take_const_tree(walk, expand.input[1])
    mask = walk.forward(expand.output[0])
    cast = walk.only(mask, "the group mask as booleans", ("Cast",))
    where = walk.only(cast.output[0], "the masking of non-selected groups", ("Where", "Not"))
    keep_first = where.op_type == "Where"
    if where.op_type == "Not":
        where = walk.only(where.output[0], "the masking of non-selected groups", ("Where", "Cast"))
        if where.op_type == "Cast" and walk.attr(where, "to") == onnx.TensorProto.BOOL:
            where = walk.only(where.output[0], "the masking of non-selected groups", ("Where",))
    kept, fill_in = (1, 2) if keep_first else (2, 1)
    fill = walk.scalar(where.input[fill_in])
    if walk.root(where.input[kept]) != walk.root(choice) or fill is None:
        raise walk.fail(where, "expected Where(group mask, expert scores, constant fill)")
    return G, topk_group, kind, fill, where.output[0]


def _group_scatter(walk: Walk, ids: str) -> onnx.NodeProto:
    """The ``ScatterElements`` writing the group mask at the top groups ``ids``.

    TorchScript's ``mask.scatter_(1, ids, 1)`` expands the constant to the ids' shape first:
    ``ScatterElements(zeros, ids, Expand(1, Shape(ids)))``; that ``Shape``/``Expand`` pair is
    part of the mask."""
    cs = walk.consumers(walk.forward(ids))
    scatters = [c for c in cs if c.op_type == "ScatterElements"]
    pairs = []
    for c in cs:
        if c.op_type != "Shape":
            continue
        users = walk.consumers(c.output[0])
        if (
            len(users) == 1
            and users[0].op_type == "Expand"
            and walk.const(users[0].input[0]) is not None
        ):
            pairs.append((c, users[0]))
    if len(scatters) == 1 and len(pairs) == 1 and len(cs) == 2:
        (shape, expand), scatter = pairs[0], scatters[0]
        users = walk.consumers(expand.output[0])
        if users == [scatter] and scatter.input[2] == expand.output[0]:
            walk.take(shape)
            walk.take(expand)
            return walk.take(scatter)
    return walk.only(ids, "the group mask", ("ScatterElements",))


def _take_const_tree(walk: Walk, value: str) -> None:
    """Record the node computing a constant operand (ConstantOfShape, Constant) if it is ours.

    Exporters share identical constants between layers (one ``ConstantOfShape`` of zeros for
    every layer's group mask); a shared one stays outside, :func:`close_layer` reads it as a
    constant feeder.
    """
    p = walk.producer(value)
    if p is None or not all(walk.view.is_constant(i) for i in p.input if i):
        return
    if len(walk.consumers(value)) == 1 and not walk.view.is_graph_output(value):
        walk.take(p)


# A floor on the top-k weight sum at most this small changes no float32 quotient of positive
# softmax/sigmoid weights that matters: it is the renormalization's guard against 0 / 0.
_MAX_SUM_FLOOR = 1e-6


def _sum_floor(walk: Walk, denom: str) -> onnx.NodeProto | None:
    """``clamp(sum, min=eps)`` (Clip with only a min, or Max with a scalar) of a tiny eps."""
    for c in walk.consumers(denom):
        if c.op_type == "Clip" and c.input[0] == denom:
            lo = walk.scalar(c.input[1]) if len(c.input) > 1 and c.input[1] else None
            hi = c.input[2] if len(c.input) > 2 else ""
            if lo is not None and not hi and 0 <= lo <= _MAX_SUM_FLOOR:
                return c
        if c.op_type == "Max" and len(c.input) == 2:
            lo = walk.scalar(walk.other(c, denom))
            if lo is not None and 0 <= lo <= _MAX_SUM_FLOOR:
                return c
    return None


def _match_gate_postprocess(walk: Walk, r: Routing) -> None:
    """Top-k renormalization (ReduceSum or ReduceL1, optional epsilon Add or Clip(min=eps), Div)
    and routed scaling (Mul)."""
    w = r.weights
    for _ in range(4):
        w = walk.forward(w)
        cs = walk.consumers(w)
        # ReduceL1 (DBRX's p=1 norm) is the sum: softmax/sigmoid gate weights are >= 0.
        sums = [c for c in cs if c.op_type in ("ReduceSum", "ReduceL1")]
        divs = [c for c in cs if c.op_type == "Div" and c.input[0] == w]
        if sums and divs and not r.normalize:
            s = walk.take(sums[0])
            denom = s.output[0]
            eps = walk.of_type(denom, "Add")
            if eps and walk.scalar(walk.other(eps[0], denom)) is not None:
                denom = walk.take(eps[0]).output[0]
            floor = _sum_floor(walk, denom)
            if floor is not None:
                denom = walk.take(floor).output[0]
            div = [d for d in divs if d.input[1] == denom]
            if not div:
                raise walk.fail(s, "expected the top-k weights divided by their sum")
            r.normalize = True
            w = walk.take(div[0]).output[0]
            continue
        muls = [c for c in cs if c.op_type == "Mul" and walk.scalar(walk.other(c, w)) is not None]
        if len(cs) == 1 and muls:
            r.scaling *= walk.scalar(walk.other(muls[0], w)) or 1.0
            w = walk.take(muls[0]).output[0]
            continue
        break
    r.weights = w


def match_router(walk: Walk, anchor: onnx.NodeProto) -> Routing:
    """Router and routing around any TopK of an MoE router (raises NotThisPattern if none).

    Two router shapes: scores (softmax/sigmoid of all logits) then top-k, as above; or top-k
    of the logits then a softmax of the k values (gpt-oss), which is a softmax over all experts
    with the top-k weights renormalized.
    """
    scoring = find_scoring(walk.view, anchor)
    if scoring is not None:
        router = match_router_scores(walk, scoring)
        if router is not None:
            return match_routing(walk, router)
    logits = walk.back(anchor.input[0], ())
    lin = match_linear(Walk(walk.view), logits)
    if lin is None or lin.w.shape[1] < 2:
        raise NotThisPattern
    sm = [c for c in walk.consumers(anchor.output[0]) if c.op_type == "Softmax"]
    if len(sm) != 1 or walk.attr(sm[0], "axis", -1) not in (-1, 1):
        found = ", ".join(c.op_type for c in walk.consumers(anchor.output[0])) or "nothing"
        raise walk.fail(anchor, f"expected a Softmax of the top-k router logits, found {found}")
    match_linear(walk, logits)
    weight = np.ascontiguousarray(lin.w.T)
    router = Router(lin.input, weight, lin.b, "softmax", logits, walk.take(anchor))
    k = _topk_k(walk, anchor)
    r = Routing(router, k, anchor.output[1], walk.take(sm[0]).output[0], normalize=True)
    r.topk_node = anchor
    _match_gate_postprocess(walk, r)
    return r
