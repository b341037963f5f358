"""Routers that choose experts on the router logits and gate with the scores of the chosen ones.

Kolibri-1 (transformers ``Kolibri1TopKRouter``) ranks ``logits + correction bias`` and gates
each chosen expert by the sigmoid of its own (unbiased) logit, matched by dataflow::

    x -> Gemm/MatMul(+bias) = logits -> Add(correction bias [E]) -> TopK k -> ids
    GatherElements(logits, ids) -> Sigmoid (-> ReduceSum, Div) (-> Mul scaling) = gate weights

Sigmoid is monotonic, so the gates equal ``gather(sigmoid(logits), ids)``: the canonical op's
sigmoid scoring with ``bias_on_logits`` (the choice ranks logits, not scores, plus the bias).
"""

from __future__ import annotations

import numpy as np
import onnx

from moec.compiler.frontend.hf_routing import (
    Router,
    Routing,
    Walk,
    _match_gate_postprocess,
    _topk_k,
    match_linear,
)


def match_logit_choice(walk: Walk, anchor: onnx.NodeProto) -> Routing | None:
    """Routing around a TopK of ``logits + correction bias`` (see the module doc), or None
    when the TopK does not read biased router logits whose gathered values feed a Sigmoid."""
    chosen = walk.back(anchor.input[0], ())
    add = walk.producer(chosen)
    if add is None or add.op_type != "Add":
        return None
    for i in (0, 1):
        bias, logits = walk.const(add.input[i]), add.input[1 - i]
        lin = match_linear(Walk(walk.view), logits) if bias is not None else None
        if lin is None or bias is None or bias.size != lin.w.shape[1] or lin.w.shape[1] < 2:
            continue
        gathers = [
            c for c in walk.consumers(logits)
            if c.op_type == "GatherElements" and c.input[0] == logits
            and walk.root(c.input[1]) == anchor.output[1]
        ]  # fmt: skip
        if len(gathers) != 1:
            continue
        gate = walk.forward(gathers[0].output[0])
        sig = walk.of_type(gate, "Sigmoid")
        if len(sig) != 1:
            found = ", ".join(c.op_type for c in walk.consumers(gate)) or "nothing"
            raise walk.fail(
                gathers[0], f"expected a Sigmoid of the chosen router logits, found {found}"
            )
        match_linear(walk, logits)
        for node in (add, gathers[0], sig[0], anchor):
            walk.take(node)
        weight = np.ascontiguousarray(lin.w.T)
        router = Router(lin.input, weight, lin.b, "sigmoid", sig[0].output[0], sig[0])
        k = _topk_k(walk, anchor)
        score_bias = np.asarray(bias, dtype=np.float32).reshape(-1)
        r = Routing(router, k, anchor.output[1], sig[0].output[0], score_bias, topk_node=anchor)
        r.bias_on_logits = True
        _match_gate_postprocess(walk, r)
        return r
    return None
