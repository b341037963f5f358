"""The residual model: the original ONNX graph with each MoE subgraph replaced by one node.

Each lifted layer becomes ``ai.moec.MoE(x) -> y`` (attribute ``layer`` = the layer name), placed
where the layer's last node was; initializers used only by MoE layers are dropped, dense ones
are kept. The interpreter runs the dense islands between MoE layers from this model.

    before: ... -> LayerNorm -> [MatMul -> Softmax -> TopK -> ... -> ReduceSum] -> Add -> ...
    after:  ... -> LayerNorm -> ai.moec.MoE{layer="moe0"} -> Add -> ...
"""

from __future__ import annotations

import onnx
from onnx import helper

from moec.compiler.frontend.patterns import Lifted

MOEC_DOMAIN = "ai.moec"


def residual_model(model: onnx.ModelProto, lifted: list[Lifted]) -> onnx.ModelProto:
    """A copy of ``model`` with every lifted layer replaced by one ``ai.moec.MoE`` node."""
    g = model.graph
    replaced = {i: lf for lf in lifted for i in lf.nodes}
    last = {max(lf.nodes): lf for lf in lifted}
    nodes: list[onnx.NodeProto] = []
    for i, node in enumerate(g.node):
        if i in last:
            lf = last[i]
            nodes.append(
                helper.make_node(
                    "MoE", [lf.input], [lf.output], name=lf.layer.name, domain=MOEC_DOMAIN,
                    layer=lf.layer.name,
                )
            )  # fmt: skip
        elif i not in replaced:
            nodes.append(node)
    used = {n for node in nodes for n in node.input} | {o.name for o in g.output}
    internal = {o for i in replaced for o in g.node[i].output} - used
    out = onnx.ModelProto()
    out.CopyFrom(model)
    og = out.graph
    del og.node[:]
    og.node.extend(nodes)
    kept_init = [t for t in og.initializer if t.name in used]
    del og.initializer[:]
    og.initializer.extend(kept_init)
    kept_vi = [vi for vi in og.value_info if vi.name not in internal]
    del og.value_info[:]
    og.value_info.extend(kept_vi)
    if lifted and not any(op.domain == MOEC_DOMAIN for op in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MOEC_DOMAIN, 1))
    return out
