"""Recognizer for Hugging Face MoE blocks exported by the TorchScript exporter (``dynamo=False``).

Tracing the eager experts loop of transformers 5.x unrolls it once per expert the trace input
reached; each unrolled *slot* picks its expert id at run time from the routing::

    ids -> OneHot(E+1) -> Transpose[2,1,0] = mask -> ReduceSum -> Greater 0 -> NonZero
        -> Transpose -> Split(n slots); per slot s:
    e_s = Gather(Squeeze(slot), 0); (pos, tok) = Split(Transpose(NonZero(Cast(Gather(mask, e_s)))))
    rows = Gather(x, tok) -> MatMul(., Transpose(Gather(gate_up [E,2F,d], e_s))) -> Slice halves
         -> act(gate) * up -> MatMul(., Transpose(Gather(down [E,d,F], e_s)))
      (or separate stacks, DBRX: act(rows @ Gather(w1 [E,F,d], e_s).T) * (rows @ Gather(v1, e_s).T)
         -> MatMul(., Gather(w2 [E,F,d], e_s)))
         -> Mul(., Gather(Flatten(gate weights), tok * k + pos)) -> ScatterElements(zeros, tok, .)
    acc = zeros + scatter_0 + ... + scatter_{n-1} -> [Reshape] -> y (-> + shared MLP)

A trace that did not reach every expert unrolls fewer slots than experts: that graph computes a
different function for other inputs, so it is reported as a mismatch rather than lifted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from moec.compiler.frontend.hf_gating import Gating, eval_ints, match_gating, match_separate_gating
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
    NotThisPattern,
    Routing,
    Walk,
    match_router,
)
from moec.compiler.frontend.patterns import (
    GraphView,
    Lifted,
    Mismatch,
    lifted_or_mismatch,
    register,
)


def match_unrolled(view: GraphView, anchor: onnx.NodeProto) -> Lifted:
    """Match the unrolled per-expert MoE block around ``anchor``."""
    walk = Walk(view)
    routing = match_router(walk, anchor)
    router = routing.router
    E = router.weight.shape[0]
    ids = walk.forward(routing.ids)
    onehots = walk.of_type(ids, "OneHot")
    if len(onehots) != 1:
        raise NotThisPattern
    name = view.name(routing.topk_node or anchor)
    mask = _expert_mask(walk, walk.take(onehots[0]), E)
    slots = _slots(walk, mask)
    if len(slots) != E:
        raise walk.fail(
            name,
            f"expected the per-expert loop unrolled for all {E} experts, found {len(slots)} "
            "(the trace input did not reach every expert; re-export with one that does)",
        )
    x_root = walk.root(router.x)
    found = [_match_slot(walk, s, mask, x_root, routing) for s in slots]
    stacks = {(f.gate_up, f.down, f.gate, f.gate_up_t, f.down_t, f.gate_t) for f in found}
    gatings = {_gating_key(f.gating) for f in found}
    if len(stacks) != 1 or len(gatings) != 1:
        raise walk.fail(name, "expected every unrolled slot to compute the same expert function")
    y = _accumulation(walk, found, name)
    first = found[0]
    y = absorb_scaling(walk, y, routing)
    g = first.gating
    swiglu = (g.alpha, g.beta, g.limit) if g is not None and g.activation == "swiglu" else None
    y, shared = match_shared(walk, y, x_root, gated=g is None or g.gated, swiglu=swiglu)
    gu = _as_in_out(np.asarray(walk.const(first.gate_up), dtype=np.float32), first.gate_up_t)
    if first.gate:
        # Separate gate and up stacks: one [E, d, 2F] projection, gate columns first.
        gate = _as_in_out(np.asarray(walk.const(first.gate), dtype=np.float32), first.gate_t)
        gu = np.concatenate([gate, gu], axis=2)
    dn = np.asarray(walk.const(first.down), dtype=np.float32)
    up = Projection(gu, first.gate_up_b, "", "")
    down = Projection(_as_in_out(dn, first.down_t), first.down_b, "", "")
    layer = build_layer(name, routing, up, down, first.gating, shared)
    layer.annotations.source = "hf.torchscript_unrolled"
    walk.back(router.x)
    y = layer_output(walk, y, x_root)
    return close_from_deepest(walk, router.x, y, layer, name)


def _as_in_out(stack: np.ndarray, transposed: bool) -> np.ndarray:
    """[E, in, out] from a stack used as ``x @ W[e].T`` (transposed) or ``x @ W[e]``."""
    return np.ascontiguousarray(stack.transpose(0, 2, 1) if transposed else stack)


def _expert_mask(walk: Walk, onehot: onnx.NodeProto, E: int) -> str:
    depth = walk.ints(onehot.input[1])
    values = walk.ints(onehot.input[2])
    if depth is None or depth[0] not in (E, E + 1) or values != [0, 1]:
        raise walk.fail(
            onehot, f"expected OneHot(ids, {E} or {E + 1}, [0, 1]), found depth {depth}"
        )
    tr = walk.only(onehot.output[0], "the expert mask as [experts, k, tokens]", ("Transpose",))
    if list(walk.attr(tr, "perm", [])) != [2, 1, 0]:  # type: ignore[call-overload]
        raise walk.fail(tr, "expected Transpose(perm=[2, 1, 0]) of the one-hot expert mask")
    return str(tr.output[0])


def _slots(walk: Walk, mask: str) -> list[str]:
    """The unrolled slots: outputs of the Split of the hit-expert list."""
    reds = walk.of_type(mask, "ReduceSum")
    cs = walk.consumers(mask)
    if (
        not reds
        and cs
        and all(c.op_type == "Gather" and walk.const(c.input[1]) is not None for c in cs)
    ):
        raise NotThisPattern  # indexed by constant expert ids: a hand-written loop (torch_loop)
    if len(reds) != 1:
        raise walk.fail(mask, "expected the per-expert token counts (ReduceSum of the mask)")
    red = walk.take(reds[0])
    gt = walk.only(red.output[0], "the experts with routed tokens", ("Greater",))
    nz = walk.only(gt.output[0], "the ids of the experts with tokens", ("NonZero",))
    tr = walk.only(nz.output[0], "the hit-expert list", ("Transpose",))
    split = walk.only(tr.output[0], "the hit-expert list split per unrolled slot", ("Split",))
    return [o for o in split.output if o]


@dataclass
class _Slot:
    """What one unrolled slot computes: its weight stacks, biases, gating and accumulation."""

    gate_up: str = ""  # the fused gate/up stack, or the up stack when ``gate`` is separate
    down: str = ""
    gate: str = ""  # a separate gate stack (DBRX's w1), "" when fused into gate_up
    gate_t: bool = True
    gate_up_t: bool = True
    down_t: bool = True
    gate_up_b: np.ndarray | None = None
    down_b: np.ndarray | None = None
    gating: Gating | None = None
    add: str = ""  # the accumulator after this slot
    acc_in: str = ""  # the accumulator before it


def _gating_key(g: Gating | None) -> tuple[object, ...]:
    if g is None:
        return ()
    cols = tuple(g.gate_cols.tolist()) if g.gate_cols is not None else ()
    return (g.activation, cols, tuple(g.up_cols.tolist()), g.alpha, g.beta, g.limit)


def _match_slot(walk: Walk, slot: str, mask: str, x_root: str, routing: Routing) -> _Slot:
    out = _Slot()
    pick = walk.only(slot, "the slot's expert id (Gather at 0)", ("Gather",))
    if walk.ints(pick.input[1]) != [0]:
        raise walk.fail(pick, "expected the slot's expert id taken at index 0")
    e = pick.output[0]
    users = walk.consumers(e)
    tok_gather = [u for u in users if u.op_type == "Gather" and u.input[0] == mask]
    w_gathers = [u for u in users if u.op_type == "Gather" and walk.const(u.input[0]) is not None]
    if len(tok_gather) != 1 or len(w_gathers) not in (2, 3) or len(users) != 1 + len(w_gathers):
        found = ", ".join(u.op_type for u in users)
        raise walk.fail(
            pick,
            "expected the slot's expert id to select its tokens and two weight stacks (gate/up "
            f"and down) or three (gate, up, down), found {found}",
        )
    pos, tok = _slot_tokens(walk, walk.take(tok_gather[0]))
    rows = [
        u for u in walk.consumers(tok)
        if u.op_type == "Gather" and u.input[1] == tok and walk.root(u.input[0]) == x_root
    ]  # fmt: skip
    if len(rows) != 1:
        raise walk.fail(tok_gather[0], "expected the slot's tokens gathered from the layer input")
    walk.take(rows[0])
    walk.back(rows[0].input[0])
    mms = {}
    for g in w_gathers:
        walk.take(g)
        value, transposed = walk.forward(g.output[0]), False
        tr = walk.of_type(value, "Transpose")
        if tr and len(walk.consumers(value)) == 1:
            if list(walk.attr(tr[0], "perm", [])) != [1, 0]:  # type: ignore[call-overload]
                raise walk.fail(tr[0], "expected the gathered expert weight transposed [1, 0]")
            value, transposed = walk.take(tr[0]).output[0], True
        mm = walk.only(value, "a MatMul with the slot's expert weight", ("MatMul",))
        if mm.input[1] != value:
            raise walk.fail(mm, "expected the slot's tokens times the expert weight")
        mms[g.input[0]] = (mm, transposed)
    first = [k for k, (mm, _) in mms.items() if mm.input[0] == rows[0].output[0]]
    if len(first) != len(mms) - 1:
        raise walk.fail(
            rows[0],
            f"expected {len(mms) - 1} expert projection(s) of the slot's tokens, found {len(first)}",
        )
    out.down = next(k for k in mms if k not in first)
    mm2, out.down_t = mms[out.down]
    if len(first) == 1:
        out.gate_up = first[0]
        mm1, out.gate_up_t = mms[out.gate_up]
        width = _last_dim(walk, mm1.output[0])
        stack = walk.const(out.gate_up)
        if width is None and stack is not None and np.ndim(stack) == 3:
            # No value_info (TorchScript): the width is the gathered weight's output axis.
            width = int(np.shape(stack)[1 if out.gate_up_t else 2])
        if width is None:
            raise walk.fail(mm1, "expected a static width of the slot's gate/up projection")
        out.gating = match_gating(walk, mm1.output[0], width)
    else:
        ka, kb = sorted(first)
        g, out.gating = match_separate_gating(
            walk, mms[ka][0].output[0], mms[kb][0].output[0], walk.view.name(rows[0])
        )
        out.gate, out.gate_up = (ka, kb) if g == mms[ka][0].output[0] else (kb, ka)
        out.gate_t, out.gate_up_t = mms[out.gate][1], mms[out.gate_up][1]
    if walk.root(mm2.input[0]) != walk.root(out.gating.output):
        raise walk.fail(mm2, "expected the slot's activation to feed its down projection")
    walk.back(mm2.input[0])
    out.add, out.acc_in = _weight_and_scatter(walk, mm2, routing, pos, tok)
    return out


def _slot_tokens(walk: Walk, gather: onnx.NodeProto) -> tuple[str, str]:
    """(top-k position, token index) of the slot's routed pairs."""
    cast = walk.only(gather.output[0], "the slot's mask as booleans", ("Cast",))
    nz = walk.only(cast.output[0], "the slot's routed (position, token) pairs", ("NonZero",))
    tr = walk.only(nz.output[0], "the routed pairs as rows", ("Transpose",))
    split = walk.only(tr.output[0], "the routed pairs split in position and token", ("Split",))
    if len(split.output) != 2:
        raise walk.fail(split, "expected the routed pairs split in two columns")
    return walk.forward(split.output[0]), walk.forward(split.output[1])


def _weight_and_scatter(
    walk: Walk, mm: onnx.NodeProto, routing: Routing, pos: str, tok: str
) -> tuple[str, str]:
    """Gate weighting and scatter of the slot's outputs: (accumulator after, before)."""
    mul = walk.only(mm.output[0], "the slot's outputs times their gate weights", ("Mul",))
    gw = walk.other(mul, walk.forward(mm.output[0]))
    g = walk.producer(walk.back(gw))
    if g is None or g.op_type != "Gather" or walk.root(g.input[0]) != walk.root(routing.weights):
        raise walk.fail(mul, "expected the slot's outputs weighted by its routed gate weights")
    walk.take(g)
    walk.back(g.input[0])
    idx = walk.producer(g.input[1])
    if idx is None or idx.op_type != "Add" or pos not in idx.input:
        raise walk.fail(g, "expected the gate weights indexed by token * k + position")
    prod = walk.producer(walk.other(idx, pos))
    if prod is None or prod.op_type != "Mul" or tok not in prod.input:
        raise walk.fail(idx, "expected the gate weights indexed by token * k + position")
    known: dict[str, tuple[int | None, ...]] = {routing.weights: (None, routing.top_k)}
    if eval_ints(walk, walk.other(prod, tok), known=known) != [routing.top_k]:
        raise walk.fail(prod, f"expected the token index scaled by k={routing.top_k}")
    walk.take(idx)
    walk.take(prod)
    value = walk.forward(mul.output[0])
    expand = walk.of_type(value, "Expand")
    if expand:  # a broadcast to the rows' own shape (index_add_ of TorchScript)
        value = walk.take(expand[0]).output[0]
    scatters = [
        c for c in walk.consumers(value) if c.op_type == "ScatterElements" and c.input[2] == value
    ]
    if len(scatters) != 1 or any(
        c.op_type not in ("Shape", "ScatterElements") for c in walk.consumers(value)
    ):
        found = ", ".join(c.op_type for c in walk.consumers(value))
        raise walk.fail(
            mul, f"expected the weighted outputs scattered into token rows, found {found}"
        )
    scatter = walk.take(scatters[0])
    zeros = walk.const(scatter.input[0])
    if zeros is None or np.any(zeros) or walk.attr(scatter, "axis", 0) != 0:
        raise walk.fail(scatter, "expected ScatterElements(zeros, token rows, outputs, axis=0)")
    if walk.attr(scatter, "reduction", "none") not in ("none", "add"):
        raise walk.fail(scatter, "expected a scatter without max/min/mul reduction")
    index = scatter.input[1]
    while (
        index != tok
        and (p := walk.producer(index)) is not None
        and p.op_type in (*RESHAPES, "Expand")
    ):
        walk.take(p)
        index = p.input[0]
    if index != tok:
        raise walk.fail(
            scatter, f"expected the scatter indexed by the slot's tokens, found {index!r}"
        )
    add = walk.only(scatter.output[0], "the accumulation of the slot's outputs", ("Add",))
    return str(add.output[0]), walk.other(add, scatter.output[0])


def _accumulation(walk: Walk, slots: list[_Slot], name: str) -> str:
    """The slots' Adds must form one chain starting from zeros; returns its end."""
    outputs = {f.add for f in slots}
    starts = [f for f in slots if f.acc_in not in outputs]
    for f in starts:
        zero = walk.const(f.acc_in)
        if zero is None or np.any(zero):
            raise walk.fail(name, f"expected the first slot added to zeros, found {f.acc_in!r}")
    used = [f.acc_in for f in slots if f.acc_in in outputs]
    ends = [f.add for f in slots if f.add not in used]
    if len(starts) != 1 or len(ends) != 1 or len(set(used)) != len(used):
        raise walk.fail(name, "expected the unrolled slots accumulated in one chain of Adds")
    return ends[0]


def _last_dim(walk: Walk, value: str) -> int | None:
    t = walk.view.tensor_type(value)
    if t is None or not t.shape or not isinstance(t.shape[-1], int):
        return None
    return int(t.shape[-1])


@register("hf-unrolled", anchors=("TopK",))
def recognize(view: GraphView, node: onnx.NodeProto) -> Lifted | Mismatch | None:
    """The TorchScript export of a Hugging Face MoE block's per-expert loop."""
    return lifted_or_mismatch(match_unrolled, view, node)
