"""Routers whose shared expert is scored with the routed ones (Inkling), matched by dataflow.

The router has E + S rows: E routed experts and S shared experts. The choice is the top-k of
the E routed sigmoid scores (plus a correction bias); the weights are a log-sigmoid
normalization over the k chosen logits and the S shared logits, times constant scales::

    x -> Gemm/MatMul = L [T, E+S] -> Sigmoid -> Slice [0:E] (-> Add bias [E]) -> TopK k -> ids
    Concat(GatherElements(Slice(L)[0:E], ids), Slice(L)[E:]) -> Sigmoid -> Log = ls
    Exp(ls - ReduceLogSumExp(ls)) (-> Mul const)* -> Slice [0:k] = routed gate weights
                                                  -> Slice [k:]  = the shared experts' gammas
    shared: Expand(x) -> MatMul [S,d,F] gate and up -> act(gate) * up
            -> Mul(gammas as [S, T, 1]) -> MatMul [S,F,d] -> ReduceSum axis 0 -> + routed output

``exp(ls_i - logsumexp(ls)) = sigmoid(l_i) / (sum_k sigmoid(l_j) + sum_S sigmoid(l_s))``: the
canonical op's sigmoid scoring with top-k renormalization, ``shared_in_norm`` (the shared
scores join the sum) and the shared gates ``sh_router`` = the router's last S rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from moec.compiler.frontend.hf_layer import DenseFFN, SharedExperts, _activation_of
from moec.compiler.frontend.hf_routing import (
    RESHAPES,
    Router,
    Routing,
    Walk,
    _topk_k,
    match_linear,
)

_BIG = 2**62


@dataclass
class JointShared:
    """The shared experts' router rows [d, S] and the value of their normalized gates [T, S]."""

    gate: np.ndarray
    gamma: str

    @property
    def count(self) -> int:
        return int(self.gate.shape[1])


def _slice(walk: Walk, node: onnx.NodeProto, n: int) -> tuple[int, int] | None:
    """(start, end) of a constant Slice along the last axis of a length-``n`` axis, or None."""
    if node.op_type != "Slice" or len(node.input) < 3:
        return None
    starts, ends = walk.ints(node.input[1]), walk.ints(node.input[2])
    axes = walk.ints(node.input[3]) if len(node.input) > 3 and node.input[3] else [-1]
    steps = walk.ints(node.input[4]) if len(node.input) > 4 and node.input[4] else [1]
    if not starts or not ends or len(starts) != 1 or axes not in ([-1], [1]) or steps != [1]:
        return None
    s, e = starts[0], min(ends[0], _BIG)
    s, e = (s + n if s < 0 else s), (e + n if e < 0 else e)
    return max(0, min(s, n)), max(0, min(e, n))


def _slices_of(walk: Walk, value: str, n: int) -> dict[tuple[int, int], onnx.NodeProto]:
    found = {}
    for c in walk.consumers(value):
        r = _slice(walk, c, n) if c.input[0] == value else None
        if r is not None:
            found[r] = c
    return found


def match_joint_router(walk: Walk, anchor: onnx.NodeProto) -> tuple[Routing, JointShared] | None:
    """Routing around a TopK of the routed part of an E+S-row sigmoid router, or None."""
    chosen = walk.back(anchor.input[0], ())
    add, bias = walk.producer(chosen), None
    if add is not None and add.op_type == "Add":
        for i in (0, 1):
            if walk.const(add.input[i]) is not None:
                bias, chosen = walk.const(add.input[i]), add.input[1 - i]
    sl = walk.producer(chosen)
    sig = walk.producer(sl.input[0]) if sl is not None and sl.op_type == "Slice" else None
    if sl is None or sig is None or sig.op_type != "Sigmoid":
        return None
    lin = match_linear(Walk(walk.view), sig.input[0])
    rows = lin.w.shape[1] if lin is not None else 0
    part = _slice(walk, sl, rows) if lin is not None else None
    if part is None or part[0] != 0 or not 2 <= part[1] < rows:
        return None
    E, logits = part[1], sig.input[0]
    if bias is not None and np.asarray(bias).size != E:
        return None
    parts = _slices_of(walk, logits, rows)
    routed, shared = parts.get((0, E)), parts.get((E, rows))
    if routed is None or shared is None:
        raise walk.fail(anchor, "expected the router logits sliced into routed and shared parts")
    gathers = [
        c for c in walk.consumers(routed.output[0])
        if c.op_type == "GatherElements" and walk.root(c.input[1]) == anchor.output[1]
    ]  # fmt: skip
    cat = walk.only(gathers[0].output[0], "the chosen and shared logits joined", ("Concat",)) \
        if len(gathers) == 1 else None  # fmt: skip
    if cat is None or list(cat.input) != [gathers[0].output[0], shared.output[0]]:
        raise walk.fail(anchor, "expected Concat(chosen routed logits, shared logit)")
    if lin.b is not None:
        raise walk.fail(lin.output, "expected a router without bias (the shared gate has none)")
    k = _topk_k(walk, anchor)
    weights, scaling = _log_sigmoid_weights(walk, cat.output[0])
    n = k + rows - E
    out = _slices_of(walk, weights, n)
    if set(out) != {(0, k), (k, n)}:
        raise walk.fail(cat, f"expected the {n} joint weights sliced into [0:{k}] and [{k}:]")
    match_linear(walk, logits)
    for node in (sig, sl, anchor, routed, shared, gathers[0], cat, out[(0, k)], out[(k, n)]):
        walk.take(node)
    if bias is not None and add is not None:
        walk.take(add)
    w = np.ascontiguousarray(lin.w.T)
    router = Router(lin.input, w[:E], None, "sigmoid", sig.output[0], sig)
    score_bias = None if bias is None else np.asarray(bias, dtype=np.float32).reshape(E)
    r = Routing(router, k, anchor.output[1], out[(0, k)].output[0], score_bias, topk_node=anchor)
    r.normalize, r.scaling, r.shared_in_norm = True, scaling, True
    return r, JointShared(np.ascontiguousarray(w[E:].T), out[(k, n)].output[0])


def _log_sigmoid_weights(walk: Walk, joined: str) -> tuple[str, float]:
    """``exp(ls - logsumexp(ls))`` of ``ls = log(sigmoid(joined))`` then constant Muls."""
    sig = walk.only(joined, "the sigmoid of the joint logits", ("Sigmoid",))
    log = walk.only(sig.output[0], "the log-sigmoid of the joint logits", ("Log",))
    ls = log.output[0]
    lse = [c for c in walk.consumers(ls) if c.op_type == "ReduceLogSumExp"]
    subs = [c for c in walk.consumers(ls) if c.op_type == "Sub" and c.input[0] == ls]
    if len(lse) != 1 or len(subs) != 1 or subs[0].input[1] != lse[0].output[0]:
        raise walk.fail(log, "expected log-sigmoid minus its ReduceLogSumExp")
    axes = walk.ints(lse[0].input[1]) if len(lse[0].input) > 1 else None
    if axes not in ([-1], [1]) or not walk.attr(lse[0], "keepdims", 1):
        raise walk.fail(lse[0], f"expected ReduceLogSumExp over the last axis, found {axes}")
    exp = walk.only(subs[0].output[0], "the joint weights", ("Exp",))
    for node in (sig, log, lse[0], subs[0], exp):
        walk.take(node)
    value, scaling = exp.output[0], 1.0
    while True:
        cs = walk.consumers(value)
        scale = walk.scalar(walk.other(cs[0], value)) if len(cs) == 1 and cs[0].op_type == "Mul" \
            else None  # fmt: skip
        if scale is None:
            return value, scaling
        scaling *= scale
        value = walk.take(cs[0]).output[0]


def _stacked_linear(walk: Walk, value: str, S: int) -> tuple[str, np.ndarray] | None:
    """``value = MatMul(a, W)`` with a constant W [S, in, out] (or [in, out] when S is 1):
    (a, W as [S, in, out])."""
    p = walk.producer(value)
    w = walk.const(p.input[1]) if p is not None and p.op_type == "MatMul" else None
    if (
        p is None
        or w is None
        or not ((w.ndim == 2 and S == 1) or (w.ndim == 3 and w.shape[0] == S))
    ):
        return None
    walk.take(p)
    return p.input[0], np.asarray(w, dtype=np.float32).reshape(S, *w.shape[-2:])


def _side_by_side(w: np.ndarray) -> np.ndarray:
    """[S, d, F] stacked projections as one [d, S*F] (expert s in columns s*F:(s+1)*F)."""
    return np.ascontiguousarray(w.transpose(1, 0, 2).reshape(w.shape[1], -1))


def match_gamma_shared(
    walk: Walk, routed: str, x_root: str, joint: JointShared
) -> tuple[str, SharedExperts]:
    """``routed + sum_s down_s(gamma_s * act(x @ gate_s) * (x @ up_s))``: the sum and the
    shared part (the S experts side by side along Fs, each gated by its own gamma)."""
    S = joint.count
    out = walk.forward(routed)
    add = walk.only(out, "the routed output plus the shared expert", ("Add",))
    value = walk.back(walk.other(add, out))
    red = walk.producer(value)
    if red is not None and red.op_type == "ReduceSum":
        axes = walk.ints(red.input[1]) if len(red.input) > 1 else None
        if axes != [0] or walk.attr(red, "keepdims", 1):
            raise walk.fail(red, f"expected the sum over the shared experts (axis 0), {axes}")
        walk.take(red)
        value = red.input[0]
    elif S > 1:
        raise walk.fail(add, f"expected the sum of the {S} shared experts' outputs (ReduceSum)")
    down = _stacked_linear(walk, value, S)
    mul = walk.producer(down[0]) if down is not None else None
    if down is None or mul is None or mul.op_type != "Mul":
        raise walk.fail(add, "expected the shared expert's down projection of a gamma product")
    walk.take(mul)
    for gi in (0, 1):
        if _gamma_stack(walk, mul.input[gi], joint.gamma, S):
            gated = walk.producer(mul.input[1 - gi])
            break
    else:
        raise walk.fail(mul, "expected the shared experts scaled by their joint gates")
    ffn = _gated(walk, gated, x_root, S) if gated is not None else None
    if ffn is None:
        raise walk.fail(mul, "expected a gated MLP of the layer input as the shared expert")
    walk.take(add)
    w_down = np.ascontiguousarray(down[1].reshape(-1, down[1].shape[-1]))
    ffn_s = DenseFFN(ffn[0], _side_by_side(ffn[1]), _side_by_side(ffn[2]), w_down, ffn[3], value)
    return add.output[0], SharedExperts(ffn_s, joint.gate, S)


def _gamma_stack(walk: Walk, value: str, gamma: str, S: int) -> bool:
    """``value`` is the gammas [T, S] laid out as [S, T, 1] (Reshape, Transpose [1, 0, 2]) or,
    for one shared expert, any reshape of them; the nodes recorded."""
    trial = Walk(walk.view)
    if trial.back(value, (*RESHAPES, "Transpose")) != gamma:
        return False
    perms = [walk.attr(walk.view.nodes[i], "perm") for i in trial.nodes
             if walk.view.nodes[i].op_type == "Transpose"]  # fmt: skip
    if S > 1 and [list(p) for p in perms] != [[1, 0, 2]]:  # type: ignore[call-overload]
        return False
    walk.nodes |= trial.nodes
    return True


def _gated(
    walk: Walk, mul: onnx.NodeProto, x_root: str, S: int
) -> tuple[str, np.ndarray, np.ndarray, str] | None:
    """``act(x @ gate) * (x @ up)`` of the layer input: (x, W_gate, W_up, activation)."""
    if mul.op_type != "Mul":
        return None
    for gi in (0, 1):
        trial = Walk(walk.view)
        act = _activation_of(trial, mul.input[gi])
        gate = _stacked_linear(trial, act[1], S) if act is not None else None
        up = _stacked_linear(trial, mul.input[1 - gi], S)
        if act is None or gate is None or up is None or gate[0] != up[0]:
            continue
        x = trial.back(gate[0], (*RESHAPES, "Expand"))
        if trial.root(x) != x_root:
            continue
        walk.nodes |= trial.nodes
        walk.take(mul)
        return x, gate[1], up[1], act[0]
    return None
