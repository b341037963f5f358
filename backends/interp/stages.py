"""Dense islands in ONNX Runtime: the residual model cut at its MoE nodes into stages.

The interpreter evaluates a model's MoE layers itself and everything else ("dense islands") with
a library. onnx's reference evaluator knows only standard ONNX; models built by
onnxruntime-genai or exported with ORT fusions hold contrib ops (``GroupQueryAttention``,
``SkipSimplifiedLayerNormalization``, ``MatMulNBits`` ...) that only ONNX Runtime runs. This
module runs those models stage by stage: stage ``s`` is every node whose inputs are available
once the first ``s`` MoE layers have run, compiled into one ONNX Runtime session whose inputs
are the values it reads from earlier stages and whose outputs are the values later stages, the
next MoE layer or the graph outputs read. Nothing is computed twice.

    stage 0: graph inputs -> ... -> x of MoE 0        (ORT)
    MoE 0:   x -> y                                    (the interpreter)
    stage 1: graph inputs, stage-0 values, y -> ...    (ORT)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from moec.ir.errors import ProgramError

RunMoE = Callable[[onnx.NodeProto, np.ndarray], np.ndarray]


def _stages(graph: onnx.GraphProto, is_moe: Callable[[onnx.NodeProto], bool]) -> list[int]:
    """Stage of every node: the number of MoE nodes on its longest path from the inputs."""
    stage_of_value: dict[str, int] = {}
    stages = []
    for node in graph.node:
        s = max((stage_of_value.get(i, 0) for i in node.input if i), default=0)
        stages.append(s)
        out_stage = s + 1 if is_moe(node) else s
        for o in node.output:
            if o:
                stage_of_value[o] = out_stage
    return stages


def _value_infos(graph: onnx.GraphProto) -> dict[str, onnx.ValueInfoProto]:
    return {vi.name: vi for vi in [*graph.input, *graph.value_info, *graph.output]}


def _output(name: str, infos: dict[str, onnx.ValueInfoProto]) -> onnx.ValueInfoProto:
    """A stage output: its element type where the graph declares one, its shape left to ORT."""
    vi = infos.get(name)
    if vi is not None and vi.type.HasField("tensor_type"):
        return onnx.helper.make_tensor_value_info(name, vi.type.tensor_type.elem_type, None)
    return onnx.helper.make_empty_tensor_value_info(name)


def _input(
    name: str, value: np.ndarray, graph_inputs: dict[str, onnx.ValueInfoProto]
) -> onnx.ValueInfoProto:
    """A stage input: a graph input as the graph declares it; a value of an earlier stage
    typed by the array it is fed (its element type and rank, sizes left open), not by the
    graph's value_info: exporters declare values with a wrong rank (onnxruntime-genai's builder
    gives every ``Constant`` a scalar ``shape {}``, also a 1-D reshape target), which the whole
    model survives because inference runs from the node, but a stage reading it trusts it.
    Sizes stay symbolic as in the whole model: concrete ones let ORT fold shape subgraphs and
    place its fp16/float32 casts differently (an fp16 build then differs by fp16 units)."""
    if name in graph_inputs:
        return _copy(graph_inputs[name])
    elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
    return onnx.helper.make_tensor_value_info(name, elem, [None] * value.ndim)


def _copy(vi: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(vi)
    return out


def run_staged(
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    is_moe: Callable[[onnx.NodeProto], bool],
    run_moe: RunMoE,
    where: str = "",
) -> dict[str, np.ndarray]:
    """Graph outputs of ``model``: dense stages in ONNX Runtime, MoE nodes by ``run_moe``."""
    import onnxruntime as ort

    g = model.graph
    stages = _stages(g, is_moe)
    inits = {t.name: t for t in g.initializer}
    infos = _value_infos(g)
    g_infos = {vi.name for vi in g.value_info}
    graph_inputs = {vi.name: vi for vi in g.input}
    later_reads: dict[str, int] = {}  # value -> the last stage (or MoE) that reads it
    for node, s in zip(g.node, stages, strict=True):
        for i in node.input:
            if i:
                later_reads[i] = max(later_reads.get(i, -1), s)
    outputs = {o.name for o in g.output}
    moe_inputs = {n.input[0] for n in g.node if is_moe(n)}
    env: dict[str, np.ndarray] = dict(feeds)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    last = max(stages, default=0)
    for s in range(last + 1):
        nodes = [n for n, t in zip(g.node, stages, strict=True) if t == s and not is_moe(n)]
        produced = {o for n in nodes for o in n.output if o}
        needed = sorted(
            {i for n in nodes for i in n.input if i and i not in produced and i not in inits}
        )
        keep = sorted(
            o for o in produced if o in outputs or o in moe_inputs or later_reads.get(o, -1) > s
        )
        if nodes and keep:
            used_inits = sorted({i for n in nodes for i in n.input if i in inits})
            inner = [infos[v] for v in sorted(produced - set(keep)) if v in g_infos]
            sub = onnx.helper.make_graph(
                nodes, f"stage{s}", [_input(v, env[v], graph_inputs) for v in needed],
                [_output(v, infos) for v in keep], [inits[i] for i in used_inits],
                value_info=inner,
            )  # fmt: skip
            sub_model = onnx.helper.make_model(sub, opset_imports=list(model.opset_import))
            sub_model.ir_version = model.ir_version
            try:
                sess = ort.InferenceSession(
                    sub_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
                )
                results = sess.run(keep, {v: env[v] for v in needed})
            except Exception as err:  # noqa: BLE001 - ORT raises its own types; one line here
                text = " ".join(str(err).split())
                raise ProgramError(
                    f"ONNX Runtime failed on dense stage {s}: {text}", where
                ) from None
            env.update(zip(keep, (np.asarray(r) for r in results), strict=True))
        for node in (n for n, t in zip(g.node, stages, strict=True) if t == s and is_moe(n)):
            env[node.output[0]] = run_moe(node, env[node.input[0]])
    missing = [o.name for o in g.output if o.name not in env]
    if missing:
        raise ProgramError(f"graph output {missing[0]!r} was never computed", where)
    return {o.name: env[o.name] for o in g.output}
