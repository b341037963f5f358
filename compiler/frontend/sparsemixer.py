"""Sparsemixer routing (Phi-3.5-MoE) in an exported graph: two masked arg-max picks, no TopK.

transformers' ``sparsemixer`` at inference exports as (``L`` the router logits)::

    ArgMax(L) -> i1;  ReduceMax(L) -> m1;  mask1 = (m1 - L) / Max(|L|, m1) > 2 eps
    g1 = GatherElements(Softmax(Where(mask1, -inf, L)), i1)
    L2 = ScatterElements(L, i1, -inf);  ArgMax(L2) -> i2;  ... the same -> g2
    ids = Concat(i1, i2);  gates = Concat(g1, g2)

The match follows dataflow from the anchor ``ArgMax`` over a router projection to two
``Concat`` nodes (the ids and the gates), takes every node between the logits and them, reads
``eps`` from the threshold constant, and then *evaluates that subgraph* on seeded probe logits
(ONNX Runtime, on the subgraph alone) against :func:`moec.ir.moe.sparsemixer`: a graph that looks like
this but computes something else is a located mismatch, not a silent approximation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from moec.compiler.frontend.hf_layer import _is_constant_subgraph
from moec.compiler.frontend.hf_routing import (
    NoMatch,
    NotThisPattern,
    Router,
    Routing,
    Walk,
    _match_gate_postprocess,
    match_linear,
)
from moec.ir.moe import sparsemixer

PROBE_SEED = 20240917


def _concat_of(walk: Walk, value: str, other_op: str) -> onnx.NodeProto | None:
    """The 2-input last-axis Concat consuming ``value`` whose other input comes from ``other_op``."""
    for c in walk.consumers(value):
        if c.op_type != "Concat" or len(c.input) != 2 or walk.attr(c, "axis", 0) not in (-1, 1):
            continue
        p = walk.producer(walk.other(c, value))
        if p is not None and p.op_type == other_op:
            return c
    return None


def _between(walk: Walk, start: str, ends: list[str]) -> set[int]:
    """Nodes on a path from value ``start`` to the values ``ends`` (constants aside); raises
    NoMatch if such a path reads another non-constant value."""
    view = walk.view
    found: set[int] = set()
    todo = list(ends)
    seen: set[str] = set()
    while todo:
        value = todo.pop()
        if value in seen or value == start or not value:
            continue
        seen.add(value)
        p = view.producer(value)
        if p is None:
            if view.is_constant(value):
                continue
            raise walk.fail(
                value, f"expected the sparsemixer to read only the router logits {start!r}"
            )
        if view.id(p) in found:
            continue
        found.add(view.id(p))
        todo.extend(i for i in p.input if i)
    return found


def _probe_model(walk: Walk, nodes: set[int], logits: str, ids: str, gates: str) -> onnx.ModelProto:
    view = walk.view
    g_nodes = [view.nodes[i] for i in sorted(nodes)]
    produced = {o for n in g_nodes for o in n.output}
    inits: list[onnx.TensorProto] = []
    for n in g_nodes:
        for name in n.input:
            if name and name != logits and name not in produced and view.is_constant(name):
                arr = view.constant(name)
                if arr is not None and name not in {t.name for t in inits}:
                    inits.append(onnx.numpy_helper.from_array(np.asarray(arr), name))
    graph = helper.make_graph(
        g_nodes, "sparsemixer_probe",
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(ids, TensorProto.INT64, None),
         helper.make_tensor_value_info(gates, TensorProto.FLOAT, None)],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _probes(T: int, E: int) -> list[np.ndarray]:
    """Seeded probe logits [T, E] at three scales, some rows with a second expert inside (or
    just outside) the first one's jitter band."""
    rng = np.random.default_rng(PROBE_SEED)
    out = []
    for scale in (0.01, 1.0, 10.0):
        for _ in range(4):
            L = (rng.standard_normal((T, E)) * scale).astype(np.float32)
            L[: T // 3, 1] = L[: T // 3, 0] * np.float32(0.999)
            L[T // 3 : 2 * T // 3, 2] = L[T // 3 : 2 * T // 3, 0] * np.float32(0.97)
            out.append(L)
    return out


@dataclass(frozen=True)
class SparsemixerPicks:
    """The matched sparsemixer: logits in, ``ids``/``gates`` [T, 2] out, the nodes between
    (constant feeders excluded) and the jitter epsilon."""

    logits: str
    ids: str
    gates: str
    nodes: frozenset[int]
    eps: float


def match_picks(walk: Walk, anchor: onnx.NodeProto, experts: int) -> SparsemixerPicks:
    """The sparsemixer from its first ``ArgMax`` over router logits of ``experts`` experts to the
    ids and gates, checked on probe logits (raises NotThisPattern/NoMatch); records nothing."""
    if walk.attr(anchor, "axis", 0) not in (-1, 1) or walk.attr(anchor, "select_last_index", 0):
        raise NotThisPattern
    logits = anchor.input[0]
    ids_cat = _concat_of(walk, anchor.output[0], "ArgMax")
    if ids_cat is None:
        raise NotThisPattern
    first_gate = [
        c for c in walk.consumers(anchor.output[0])
        if c.op_type == "GatherElements" and c.input[1] == anchor.output[0]
    ]  # fmt: skip
    if len(first_gate) != 1:
        raise walk.fail(anchor, "expected the first pick's gate gathered by its arg-max")
    gates_cat = _concat_of(walk, first_gate[0].output[0], "GatherElements")
    if gates_cat is None:
        raise walk.fail(first_gate[0], "expected the two picks' gates concatenated")
    ids, gates = ids_cat.output[0], gates_cat.output[0]
    nodes = _between(walk, logits, [ids, gates])
    view = walk.view
    thresholds = {
        float(c)
        for i in nodes
        if view.nodes[i].op_type == "Greater"
        and (c := walk.scalar(view.nodes[i].input[1])) is not None
    }
    if len(thresholds) != 1:
        raise walk.fail(
            anchor, f"expected one jitter threshold (Greater by 2 eps), found {sorted(thresholds)}"
        )
    eps = thresholds.pop() / 2
    t = view.tensor_type(logits)
    # The exporter may bake the token count into constants (the -inf fill's shape): probe at it.
    T = t.shape[0] if t is not None and len(t.shape) == 2 and isinstance(t.shape[0], int) else 16
    _check_on_probes(walk, anchor, _probe_model(walk, nodes, logits, ids, gates), T, experts, eps)
    # Constant feeders (the -inf fill, shared by every layer) stay for the closure to place.
    taken = frozenset(i for i in nodes if not _is_constant_subgraph(view, view.nodes[i]))
    return SparsemixerPicks(logits, ids, gates, taken, eps)


def _check_on_probes(
    walk: Walk, anchor: onnx.NodeProto, probe: onnx.ModelProto, T: int, E: int, eps: float
) -> None:
    import onnxruntime as ort

    logits = probe.graph.input[0].name
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(
            probe.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        for L in _probes(T, E):
            got_ids, got_gates = sess.run(None, {logits: L})
            want_ids, want_gates = sparsemixer(L, eps)
            if not np.array_equal(np.asarray(got_ids).reshape(-1, 2), want_ids) or not np.allclose(
                np.asarray(got_gates).reshape(-1, 2), want_gates, rtol=1e-5, atol=1e-6
            ):
                raise walk.fail(
                    anchor,
                    f"the masked arg-max router does not compute sparsemixer(eps={eps:g}) on "
                    "probe logits",
                )
    except NoMatch:
        raise
    except Exception as err:  # noqa: BLE001 - ORT raises its own types for a bad subgraph
        first = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise walk.fail(anchor, f"cannot evaluate the masked arg-max router ({first})") from None


def match_sparsemixer(walk: Walk, anchor: onnx.NodeProto) -> Routing:
    """The sparsemixer routing around its first ``ArgMax`` (raises NotThisPattern/NoMatch)."""
    logits = anchor.input[0]
    lin = match_linear(Walk(walk.view), walk.root(logits))
    if lin is None or lin.w.shape[1] < 2:
        raise NotThisPattern
    picks = match_picks(walk, anchor, lin.w.shape[1])
    walk.nodes |= picks.nodes
    ids, gates, eps = picks.ids, picks.gates, picks.eps
    match_linear(walk, walk.back(logits))
    weight = np.ascontiguousarray(lin.w.T)
    router = Router(lin.input, weight, lin.b, "sparsemixer", logits, anchor)
    r = Routing(router, 2, ids, gates, topk_node=anchor, sparsemixer_eps=eps)
    _match_gate_postprocess(walk, r)
    return r
