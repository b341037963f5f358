"""One MoE layer of an ONNX model as a model of its own, found by dataflow (``moec check``'s
per-layer fallback when ONNX Runtime cannot run the whole model).

A lifted layer knows the nodes it replaced, its input and its output. The subgraph's inputs are
the values those nodes read from outside (not constants: initializers and what is computed from
them alone), less those computable from the others: a Gemma-4 build's experts read both the
residual and its router norm's output, so the layer alone starts at the residual. The subgraph is
every node between those inputs and the layer's output; one that also reads another value from
outside the layer (a shape taken from a graph input, say) is refused with what it reads.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

import onnx
from onnx.utils import Extractor

from moec.ir.errors import ModelError


class LayerExtractor:
    """Subgraphs of one model (shape inference runs once, at construction)."""

    def __init__(self, model: onnx.ModelProto, layers: Sequence[tuple[str, str]] = ()) -> None:
        """``layers``: every lifted layer's (input, output), to type outputs inference cannot."""
        self.model = model
        self.layers = list(layers)
        g = model.graph
        self._producer: dict[str, onnx.NodeProto] = {o: n for n in g.node for o in n.output if o}
        self._const = {t.name for t in g.initializer}
        for node in g.node:  # graph order is topological
            if all(not i or i in self._const for i in node.input):
                self._const.update(o for o in node.output if o)
        self._extractor: Extractor | None = None

    def _typed(self) -> Extractor:
        """An extractor of the model with inferred types (the model's own value_info when
        inference fails, e.g. on a model over 2 GB). Inference stops at an MoE op it does not
        know (a contrib op): an MoE layer's output has its input's type, so each round types the
        layers' outputs it can and infers again, until a round adds none."""
        if self._extractor is not None:
            return self._extractor
        typed = self.model
        for _ in range(len(self.layers) + 1):
            try:
                typed = onnx.shape_inference.infer_shapes(typed)
            except Exception:  # noqa: BLE001 - onnx raises several unrelated types
                break
            known = {vi.name: vi for vi in [*typed.graph.value_info, *typed.graph.input]}
            added = [
                onnx.ValueInfoProto(name=y, type=known[x].type)
                for x, y in self.layers
                if y not in known and x in known and _has_shape(known[x])
            ]
            if not added:
                break
            typed.graph.value_info.extend(added)
        self._extractor = Extractor(typed)
        return self._extractor

    def _leaves(self, outputs: Iterable[str], stop: Collection[str]) -> set[str]:
        """The non-constant values the producers of ``outputs`` read, walking back to ``stop``:
        graph inputs and values no node produces."""
        leaves: set[str] = set()
        seen: set[str] = set()
        frontier = list(outputs)
        while frontier:
            name = frontier.pop()
            if not name or name in seen or name in self._const:
                continue
            seen.add(name)
            node = self._producer.get(name)
            if name in stop or node is None:
                leaves.add(name)
            else:
                frontier.extend(node.input)
        return leaves

    def layer_inputs(self, nodes: Collection[int], x: str) -> list[str]:
        """The values a layer's ``nodes`` read from outside, less those computable from the
        others (sorted, ``x`` first when it stays)."""
        g = self.model.graph
        inside = [g.node[i] for i in sorted(nodes)]
        made = {o for n in inside for o in n.output}
        read = {i for n in inside for i in n.input if i and i not in made and i not in self._const}
        read.add(x)
        inputs = sorted(read, key=lambda v: (v != x, v))
        for name in list(inputs):
            others = [v for v in inputs if v != name]
            if others and name in self._producer and self._leaves([name], others) <= set(others):
                inputs.remove(name)
        return inputs

    def subgraph(self, nodes: Collection[int], x: str, y: str) -> tuple[onnx.ModelProto, list[str]]:
        """The model from the layer's inputs (:meth:`layer_inputs`) to its output ``y``."""
        inputs = self.layer_inputs(nodes, x)
        outside = sorted(self._leaves([y], inputs) - set(inputs))
        if outside:
            raise ModelError(f"its subgraph also reads {', '.join(outside)} from outside the layer")
        extractor = self._typed()
        known = extractor.value_infos
        untyped = [v for v in inputs if v not in known or not _has_shape(known[v])]
        if untyped:
            raise ModelError(f"cannot extract its subgraph: no shape for its input {untyped[0]}")
        if y not in known and x in known:  # an MoE layer's output has its input's type
            known[y] = onnx.ValueInfoProto(name=y, type=known[x].type)
        if y not in known:
            raise ModelError(f"cannot extract its subgraph: no type for its output {y}")
        sub = extractor.extract_model(inputs, [y])
        sub.ir_version = min(self.model.ir_version or 10, 10)
        return sub, inputs


def _has_shape(vi: onnx.ValueInfoProto) -> bool:
    return vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")
