"""Recognizer for hand-written MoE blocks traced by the TorchScript exporter (``dynamo=False``).

The textbook block keeps its experts in a ``ModuleList`` (separate weights per expert, not a
stacked tensor) and loops over them::

    for e, expert in enumerate(experts):
        tok, slot = torch.where(selected == e)
        out.index_add_(0, tok, expert(x[tok]) * weights[tok, slot, None])

Tracing unrolls the loop once per expert, each with its expert id as a constant::

    ids -> Equal(ids, e) -> NonZero -> Transpose -> Split -> (tok, slot); per expert e:
    rows = Gather(x, tok) -> MatMul(W_e ...) (gate and up, or one fused projection, or up only)
         -> act(gate) * up -> MatMul(W_down_e)
         -> Mul(., Gather(Flatten(gate weights), tok * k + slot)) -> ScatterElements(zeros, tok, .)
    acc = zeros + scatter_0 + ... + scatter_{E-1} -> [Reshape] -> y

The router is any router :func:`~moec.compiler.frontend.hf_routing.match_router` knows; the
gate weighting, scatter and accumulation are those of transformers' own unrolled loop
(:mod:`moec.compiler.frontend.hf_unrolled`). Every expert 0..E-1 must have its own unrolled
body, each computing the same expert function with its own weights; anything else is a located
mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from moec.compiler.frontend.hf_gating import Gating, match_gating, match_separate_gating
from moec.compiler.frontend.hf_layer import (
    Projection,
    build_layer,
    close_from_deepest,
    layer_output,
    match_shared,
)
from moec.compiler.frontend.hf_routing import (
    NotThisPattern,
    Routing,
    Walk,
    match_linear,
    match_router,
)
from moec.compiler.frontend.hf_unrolled import (
    _accumulation,
    _gating_key,
    _Slot,
    _weight_and_scatter,
)
from moec.compiler.frontend.patterns import (
    GraphView,
    Lifted,
    Mismatch,
    lifted_or_mismatch,
    register,
)


@dataclass
class _Expert:
    """One unrolled loop body: expert ``e``'s weights ([in, out]), gating and accumulation."""

    e: int
    up: np.ndarray  # [d, F] (gated: [d, 2F], gate columns first)
    up_b: np.ndarray | None
    down: np.ndarray  # [F, d]
    down_b: np.ndarray | None
    gating: Gating
    slot: _Slot


def match_loop(view: GraphView, anchor: onnx.NodeProto) -> Lifted:
    """Match the unrolled hand-written loop around the router ``anchor``."""
    walk = Walk(view)
    routing = match_router(walk, anchor)
    E = routing.router.weight.shape[0]
    ids = walk.forward(routing.ids)
    name = view.name(routing.topk_node or anchor)
    per_expert = _expert_masks(walk, ids, E)
    if not per_expert:
        raise NotThisPattern
    if sorted(per_expert) != list(range(E)):
        raise walk.fail(
            name,
            f"expected the per-expert loop unrolled for all {E} experts, found ids "
            f"{sorted(per_expert)}",
        )
    x_root = walk.root(routing.router.x)
    found = [_match_expert(walk, e, *per_expert[e], x_root, routing) for e in range(E)]
    if (
        len({_gating_key(f.gating) for f in found}) != 1
        or len({(f.up.shape, f.down.shape, f.up_b is None, f.down_b is None) for f in found}) != 1
    ):
        raise walk.fail(name, "expected every unrolled expert to compute the same function")
    y = _accumulation(walk, [f.slot for f in found], name)
    gating = found[0].gating
    y, shared = match_shared(walk, y, x_root, gated=gating.gated)
    up = Projection(np.stack([f.up for f in found]), _stack([f.up_b for f in found]), "", "")
    down = Projection(np.stack([f.down for f in found]), _stack([f.down_b for f in found]), "", "")
    layer = build_layer(name, routing, up, down, gating, shared)
    layer.annotations.source = "torchscript.loop"
    walk.back(routing.router.x)
    y = layer_output(walk, y, x_root)
    return close_from_deepest(walk, routing.router.x, y, layer, name)


def _stack(parts: list[np.ndarray | None]) -> np.ndarray | None:
    if any(p is None for p in parts):
        return None
    return np.stack([np.asarray(p, dtype=np.float32).reshape(-1) for p in parts if p is not None])


def _expert_masks(walk: Walk, ids: str, E: int) -> dict[int, tuple[str, bool]]:
    """Each expert's routed mask: ``{e: (mask, slot_major)}``. ``Equal(ids, e)`` is [T, k]
    (token-major); ``Gather(Transpose[2,1,0](one_hot(ids)), e)`` is [k, T] (slot-major), with
    the one-hot as ``OneHot(ids, E)`` or ``Equal(Unsqueeze(ids, -1), arange(E))`` (dynamo)."""
    out: dict[int, tuple[str, bool]] = {}
    onehots: list[str] = []
    for c in walk.consumers(ids):
        if c.op_type == "Equal" and walk.ints(walk.other(c, ids)) == list(range(E)) and E > 1:
            onehots.append(walk.take(c).output[0])  # ids already unsqueezed: a one-hot
        elif c.op_type == "Equal":
            e = walk.ints(walk.other(c, ids))
            if e is None or len(e) != 1 or not 0 <= e[0] < E or e[0] in out:
                raise walk.fail(c, f"expected the expert ids compared with one id in 0..{E - 1}")
            out[e[0]] = (walk.take(c).output[0], False)
        elif c.op_type == "OneHot" and c.input[0] == ids:
            depth, values = walk.ints(c.input[1]), walk.ints(c.input[2])
            if depth == [E] and values == [0, 1]:
                onehots.append(walk.take(c).output[0])
        elif c.op_type == "Unsqueeze" and walk.ints(c.input[1]) in ([-1], [2]):
            for eq in walk.of_type(c.output[0], "Equal"):
                if walk.ints(walk.other(eq, c.output[0])) == list(range(E)):
                    walk.take(c)
                    onehots.append(walk.take(eq).output[0])
    for oh in onehots:
        tr = walk.only(
            _past_casts(walk, oh), "the expert mask as [experts, k, tokens]", ("Transpose",)
        )
        if list(walk.attr(tr, "perm", [])) != [2, 1, 0]:  # type: ignore[call-overload]
            raise walk.fail(tr, "expected Transpose(perm=[2, 1, 0]) of the one-hot expert mask")
        for g in walk.consumers(tr.output[0]):
            e = walk.ints(g.input[1]) if g.op_type == "Gather" else None
            if e is None or len(e) != 1 or walk.attr(g, "axis", 0) != 0 or e[0] in out:
                raise walk.fail(g, "expected the expert mask indexed by one constant expert id")
            out[e[0]] = (walk.take(g).output[0], True)
    return out


def _past_casts(walk: Walk, value: str) -> str:
    """``value`` after the Casts (to bool, int) that are its only use, recorded."""
    while len(cs := walk.consumers(value)) == 1 and cs[0].op_type == "Cast":
        value = walk.take(cs[0]).output[0]
    return value


def _match_expert(
    walk: Walk, e: int, mask: str, slot_major: bool, x_root: str, routing: Routing
) -> _Expert:
    """Expert ``e``'s unrolled body, from its routed mask to its accumulation."""
    nz = walk.only(
        _past_casts(walk, mask), f"expert {e}'s routed (token, slot) pairs", ("NonZero",)
    )
    tr = walk.only(nz.output[0], "the routed pairs as rows", ("Transpose",))
    tok, slot = _pairs(walk, tr)
    if slot_major:
        tok, slot = slot, tok
    row = _token_rows(walk, tok, x_root)
    if row is not None:
        walk.take(row)
        walk.back(row.input[0])
        r = row.output[0]
    else:
        r = _probed_rows(walk, tok, x_root, tr)
    rows = [walk.producer(r) or tr]
    projections = [_linear_of(walk, c.output[0], r) for c in walk.consumers(r)]
    if len(projections) not in (1, 2) or any(p is None for p in projections):
        found = ", ".join(c.op_type for c in walk.consumers(r))
        raise walk.fail(
            rows[0],
            f"expected expert {e}'s tokens times one (gate/up or up) or two (gate, up) constant "
            f"weights, found {found}",
        )
    first = [p for p in projections if p is not None]
    if len(first) == 1:
        up = first[0]
        gating = match_gating(walk, up.output, up.w.shape[1])
        w, b = up.w, up.b
    else:
        a, c = first
        g, gating = match_separate_gating(walk, a.output, c.output, walk.view.name(rows[0]))
        gate, up = (a, c) if g == a.output else (c, a)
        w = np.concatenate([gate.w, up.w], axis=1)
        b = None
        if (gate.b is None) != (up.b is None):
            raise walk.fail(
                rows[0], "expected biases on both the gate and up projections or neither"
            )
        if gate.b is not None and up.b is not None:
            b = np.concatenate([gate.b, up.b])
    down_out = [
        c.output[0]
        for c in walk.consumers(walk.forward(gating.output))
        if c.op_type in ("MatMul", "Gemm")
    ]
    down = (
        _linear_of(walk, down_out[0], walk.forward(gating.output)) if len(down_out) == 1 else None
    )
    if down is None:
        raise walk.fail(
            gating.output, f"expected expert {e}'s activation times a constant down weight"
        )
    mm = walk.producer(down.output)
    if mm is None or mm.op_type not in ("MatMul", "Gemm"):
        raise walk.fail(down.output, "expected the down projection as MatMul (without bias)")
    s = _Slot(gating=gating)
    if any(c.op_type == "ScatterND" for c in walk.consumers(walk.forward(_only_use(walk, mm)))):
        s.add, s.acc_in = _weight_and_scatter_nd(walk, mm, routing, slot, tok)
    else:
        s.add, s.acc_in = _weight_and_scatter(walk, mm, routing, slot, tok)
    return _Expert(e, w, b, down.w, down.b, gating, s)


def _only_use(walk: Walk, node: onnx.NodeProto) -> str:
    """The output of the single consumer of ``node``'s output ("" when not exactly one)."""
    cs = walk.consumers(walk.forward(node.output[0]))
    return cs[0].output[0] if len(cs) == 1 else ""


def _pairs(walk: Walk, tr: onnx.NodeProto) -> tuple[str, str]:
    """(token, slot) columns of the routed pairs: a Split in two (TorchScript) or two Slices of
    one column each along axis 1 (dynamo), each optionally squeezed."""
    cs = walk.consumers(tr.output[0])
    if len(cs) == 1 and cs[0].op_type == "Split" and len([o for o in cs[0].output if o]) == 2:
        walk.take(cs[0])
        return _squeezed(walk, cs[0].output[0]), _squeezed(walk, cs[0].output[1])
    cols: dict[int, str] = {}
    for c in cs:
        if c.op_type != "Slice" or len(c.input) < 4:
            break
        start, end, axes = (walk.ints(c.input[i]) for i in (1, 2, 3))
        if axes not in ([1], [-1]) or start is None or end != [start[0] + 1] or start[0] in cols:
            break
        cols[start[0]] = _squeezed(walk, walk.take(c).output[0])
    if sorted(cols) != [0, 1] or len(cs) != 2:
        found = ", ".join(c.op_type for c in cs)
        raise walk.fail(
            tr, f"expected the routed pairs split in token and slot columns, found {found}"
        )
    return cols[0], cols[1]


def _squeezed(walk: Walk, value: str) -> str:
    """``value`` after its Squeeze to one dimension, when that is its only use."""
    cs = walk.consumers(value)
    if len(cs) == 1 and cs[0].op_type == "Squeeze" and cs[0].input[0] == value:
        return str(walk.take(cs[0]).output[0])
    return value


def _token_rows(walk: Walk, tok: str, x_root: str) -> onnx.NodeProto | None:
    """``x[tok]``: Gather(x, tok, axis 0), or GatherND(x, Unsqueeze(tok, -1))."""
    for u in walk.consumers(tok):
        if u.op_type == "Gather" and u.input[1] == tok and walk.attr(u, "axis", 0) == 0:
            if walk.root(u.input[0]) == x_root:
                return u
        if u.op_type == "Unsqueeze" and walk.ints(u.input[1]) in ([1], [-1]):
            for g in walk.consumers(u.output[0]):
                if (
                    g.op_type == "GatherND"
                    and g.input[1] == u.output[0]
                    and walk.attr(g, "batch_dims", 0) == 0
                    and walk.root(g.input[0]) == x_root
                ):
                    walk.take(u)
                    return g
    return None


_INDEX_OPS = frozenset({"Gather", "GatherND", "Unsqueeze", "Squeeze", "Reshape", "Transpose",
                        "Flatten", "Identity"})  # fmt: skip


def _probed_rows(walk: Walk, tok: str, x_root: str, where: onnx.NodeProto) -> str:
    """The expert's token rows reached from ``tok`` by indexing and reshaping ops (e.g.
    ``x[None, tok].reshape(-1, d)``): the value the expert's projections read, checked to be
    ``x[tok]`` by evaluating it in ONNX Runtime on a probe; its nodes recorded."""
    view = walk.view
    frontier, seen, rows = [tok], set(), ""
    while frontier and not rows:
        value = frontier.pop()
        for c in walk.consumers(value):
            if c.op_type in ("MatMul", "Gemm") and walk.const(c.input[1]) is not None:
                rows = value if value != tok else ""
            elif c.op_type in _INDEX_OPS and view.id(c) not in seen:
                seen.add(view.id(c))
                frontier.append(c.output[0])
    if not rows:
        raise walk.fail(where, "expected the expert's tokens gathered from the layer input")
    cone: list[onnx.NodeProto] = []
    todo, visited = [rows], {tok, x_root}
    while todo:
        value = todo.pop()
        if value in visited or not value or view.is_constant(value):
            continue
        visited.add(value)
        p = walk.producer(value)
        if p is None or p.op_type not in _INDEX_OPS:
            raise walk.fail(
                where, f"expected the expert's tokens gathered from the layer input, found "
                f"{p.op_type if p is not None else 'a graph input'} before {rows!r}",
            )  # fmt: skip
        cone.append(p)
        todo.extend(p.input)
    if not _gathers_rows(view, cone, x_root, tok, rows):
        raise walk.fail(where, f"the expert's token rows {rows!r} are not x[tokens] on a probe")
    for p in cone:
        walk.take(p)
    walk.back(x_root)
    return rows


def _gathers_rows(view: GraphView, cone: list[onnx.NodeProto], x: str, tok: str, rows: str) -> bool:
    """Whether ``rows`` computed by ``cone`` from ``x`` and ``tok`` is ``x[tok]`` (probe)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    t = view.tensor_type(x)
    if t is None or not t.shape or not isinstance(t.shape[-1], int):
        return False
    shape = [s if isinstance(s, int) else 1 for s in t.shape]  # a symbolic batch probed as 1
    nodes = sorted(cone, key=view.id)
    consts = {i for n in nodes for i in n.input if i and view.is_constant(i)}
    inits = [numpy_helper.from_array(np.asarray(view.constant(c)), c) for c in sorted(consts)]
    graph = helper.make_graph(
        nodes, "rows_probe",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None),
         helper.make_tensor_value_info(tok, TensorProto.INT64, None)],
        [helper.make_tensor_value_info(rows, TensorProto.FLOAT, None)], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    d = shape[-1]
    n = int(np.prod(shape[:-1]))
    xs = np.arange(n * d, dtype=np.float32).reshape(shape)
    idx = np.array([n - 1, 0, min(2, n - 1)], dtype=np.int64)
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        (got,) = sess.run(None, {x: xs, tok: idx})
    except Exception:  # noqa: BLE001 - ORT raises its own types; not evaluable is not rows
        return False
    return bool(np.array_equal(np.asarray(got), xs.reshape(n, d)[idx]))


def _weight_and_scatter_nd(
    walk: Walk, mm: onnx.NodeProto, routing: Routing, slot: str, tok: str
) -> tuple[str, str]:
    """Dynamo's ``index_add_``: the outputs times ``GatherND(weights[..., None], [tok, slot])``
    then ``ScatterND(acc, tok[:, None], ., reduction=add)``: (accumulator after, before)."""
    mul = walk.only(mm.output[0], "the expert's outputs times their gate weights", ("Mul",))
    gw = walk.other(mul, walk.forward(mm.output[0]))
    g = walk.producer(walk.back(gw))
    if g is None or g.op_type != "GatherND" or walk.root(g.input[0]) != walk.root(routing.weights):
        raise walk.fail(mul, "expected the expert's outputs weighted by its routed gate weights")
    walk.take(g)
    walk.back(g.input[0])
    cat = walk.producer(g.input[1])
    parts = (
        [walk.producer(i) for i in cat.input] if cat is not None and cat.op_type == "Concat" else []
    )
    if (
        len(parts) != 2
        or any(p is None or p.op_type != "Unsqueeze" for p in parts)
        or [p.input[0] for p in parts if p is not None] != [tok, slot]
    ):
        raise walk.fail(g, "expected the gate weights indexed by [token, slot]")
    walk.take(cat)  # type: ignore[arg-type]
    for p in parts:
        walk.take(p)  # type: ignore[arg-type]
    value = walk.forward(mul.output[0])
    scatter = walk.only(value, "the weighted outputs added into token rows", ("ScatterND",))
    if scatter.input[2] != value or walk.attr(scatter, "reduction", "none") not in ("add", b"add"):
        raise walk.fail(scatter, "expected ScatterND(acc, token rows, outputs, reduction=add)")
    index = walk.producer(scatter.input[1])
    if index is None or index.op_type != "Unsqueeze" or index.input[0] != tok:
        raise walk.fail(scatter, "expected the scatter indexed by the expert's tokens")
    walk.take(index)
    return str(scatter.output[0]), str(scatter.input[0])


def _linear_of(walk: Walk, value: str, rows: str) -> Projection | None:
    """``value`` as ``rows @ W (+ b)`` with constant ``W`` ([in, out]), recorded; else None."""
    lin = match_linear(walk, value)
    if lin is None or walk.root(lin.input) != walk.root(rows):
        return None
    if lin.b is not None:  # Gemm with its bias (nn.Linear's default)
        return Projection(lin.w, lin.b.reshape(-1), lin.input, value)
    out = value
    for add in walk.of_type(value, "Add"):
        b = walk.const(walk.other(add, value))
        if b is not None and np.asarray(b).size == lin.w.shape[1]:
            walk.take(add)
            return Projection(
                lin.w, np.asarray(b, dtype=np.float32).reshape(-1), lin.input, add.output[0]
            )
    return Projection(lin.w, None, lin.input, out)


@register("torchscript-loop", anchors=("TopK",))
def recognize(view: GraphView, node: onnx.NodeProto) -> Lifted | Mismatch | None:
    """The TorchScript export of a hand-written per-expert loop MoE block."""
    return lifted_or_mismatch(match_loop, view, node)
