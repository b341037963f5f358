"""The graph IR of a shape-only preset, built directly: what lifting its ONNX graph gives.

``moec bench --model qwen3-30b-a3b`` needs the preset's graph IR, not its ONNX graph. Building
the ONNX graph (:meth:`~moec.models.presets.Preset.build`) and lifting it through the frontend
imports ``onnx`` (about 0.6 s of CPU, nearly all ``ml_dtypes``) and walks every node of every
decomposed MoE block; a preset has a fixed, known structure, so this module writes the lifted
module straight away: the embedding ``Gather``, per layer a ``LayerNormalization``, a dense
gated FFN or one canonical ``moe`` op, the residual ``Add``, the final norm and the LM head,
named as :class:`~moec.models.builder.OnnxBuilder` names them (one :class:`NameScope`, the same
calls in the same order), every weight declared only, and typed as ONNX shape inference types
them: ``[T, d]`` up to the first MoE block, then, after each block's residual ``Add``, the fresh
symbolic dimension inference gives there (``unk__N``: inside a decomposed block the dispatch's
``ConstantOfShape``, the group mask, the shared experts' sum and Sparsemixer's second pick make
new dimensions; :func:`_fresh_dims` counts them per block).

The lift stays the reference: ``tests/test_preset_graph.py`` checks, for every preset, that
this module equals the lifted one field by field (ops, values, use lists, types, attributes,
every field of every :class:`~moec.ir.moe.MoELayer`, weights and their order, metadata). A
preset with a feature this builder does not write (a router bias, expert biases, a gated shared
expert, a non-gated expert) gets None here, and the caller lifts it.
"""

from __future__ import annotations

import numpy as np

from moec.ir.graph import Module, Op, TensorType, Value, Weight
from moec.ir.moe import LayerAnnotations, MoELayer, MoESpec
from moec.ir.names import NameScope
from moec.models.presets import Preset

#: the opset and metadata key :mod:`moec.models.builder` writes (not imported: it imports onnx)
OPSET = 18
SHAPE_ONLY_KEY = "moec.shape_only"
#: ``layer_norm``'s epsilon as ONNX stores it (a float32 attribute)
EPSILON = float(np.float32(1e-5))
#: Sparsemixer's jitter as the decomposed block stores it (a float32 constant)
SPARSEMIXER_EPS = float(np.float32(0.01))


def _fresh_dims(spec: MoESpec) -> int:
    """Symbolic dimensions ONNX shape inference makes up in one decomposed block and its
    residual ``Add`` (read off ``onnx.shape_inference`` on blocks with each feature alone)."""
    return (
        4
        + (1 if spec.num_shared else 0)
        + (3 if spec.n_group > 1 else 0)
        + (2 if spec.scoring == "sparsemixer" else 0)
    )


def _supported(spec: MoESpec) -> bool:
    return (
        spec.gated
        and spec.activation == "silu"
        and not (spec.router_bias or spec.expert_bias or spec.shared_gate)
        and spec.scoring in ("softmax", "sigmoid", "sparsemixer")
    )


class _Graph:
    """A module under construction, named as the ONNX builder names its nodes and values."""

    def __init__(self, name: str) -> None:
        self.module = Module(name)
        self.names = NameScope()

    def weight(self, base: str, shape: tuple[int, ...]) -> Value:
        w = Weight(self.names.fresh(base), TensorType("f32", shape))
        return Value(w.name, w.type, weight=w)

    def op(
        self, kind: str, inputs: list[Value], name: str, out: TensorType | None, **attrs: object
    ) -> Value:
        node = self.names.fresh(name)
        op = Op(kind, list(inputs), [], dict(attrs), name=node)
        self._add(op, Value(self.names.fresh(node), out, producer=op))
        return op.outputs[0]

    def _add(self, op: Op, out: Value) -> None:
        for v in op.inputs:
            assert v is not None
            if v.weight is not None and v.name not in self.module.weights:
                self.module.weights[v.name] = v.weight
            v.uses.append(op)
        op.outputs.append(out)
        self.module.ops.append(op)


def _layer(index: int, spec: MoESpec, block: str) -> MoELayer:
    """Layer ``index``'s canonical form as the frontend lifts the decomposed block ``block``."""
    E, d, F, name = spec.experts, spec.hidden, spec.ffn, f"moe{index}"
    shapes: dict[str, tuple[int, ...]] = {
        "router_w": (E, d), "w_down": (E, F, d), "w_gate": (E, d, F), "w_up": (E, d, F),
    }  # fmt: skip
    if spec.score_bias:
        shapes["score_bias"] = (E,)
    if spec.num_shared:
        Fs = spec.shared_ffn
        shapes.update(sh_down=(Fs, d), sh_gate=(d, Fs), sh_up=(d, Fs))
    weights = {
        k: Weight(f"{name}.{k}", TensorType("f32", shapes[k])) for k in sorted(shapes)
    }  # the frontend's order
    sparsemixer = spec.scoring == "sparsemixer"
    return MoELayer(
        name, E, spec.top_k, d, F, weights, scoring=spec.scoring,
        normalize_topk=spec.normalize_topk, routed_scaling=spec.routed_scaling,
        n_group=spec.n_group, topk_group=spec.topk_group, group_score=spec.group_score,
        sparsemixer_eps=SPARSEMIXER_EPS if sparsemixer else 0.01,
        num_shared=spec.num_shared, shared_ffn=spec.shared_ffn,
        annotations=LayerAnnotations(
            source="moec.decomposed", onnx_node=f"{block}.sm1.pick" if sparsemixer else f"{block}.topk"
        ),
    )  # fmt: skip


def preset_module(preset: Preset) -> Module | None:
    """The module lifting ``preset.build()`` gives, or None when the preset has a feature this
    builder does not write (then lift it)."""
    spec = preset.spec
    if not _supported(spec):
        return None
    g = _Graph(preset.name)
    d, T = spec.hidden, "T"
    hidden = TensorType("f32", (T, d))
    tokens = Value(g.names.fresh("tokens"), TensorType("i64", (T,)))
    g.module.inputs.append(tokens)
    h = g.op("Gather", [g.weight("embed", (preset.vocab, d)), tokens], "embed", hidden, axis=0)
    moe = unknown = 0
    for i in range(preset.layers):
        scale = g.weight(f"layer{i}.norm.scale", (d,))
        norm = f"layer{i}.norm"
        normed = g.op("LayerNormalization", [h, scale], norm, h.type, axis=-1, epsilon=EPSILON)
        if i < preset.dense_layers:
            out = _dense_ffn(g, normed, d, preset.dense_ffn, f"layer{i}.ffn")
        else:
            block = f"layer{i}.moe"
            last = "add_shared" if spec.num_shared else "combine"
            node = g.names.fresh(f"{block}.{last}")
            op = Op("moe", [normed], [], {"layer": _layer(moe, spec, block)}, name=f"moe{moe}")
            g._add(op, Value(g.names.fresh(node), normed.type, producer=op))
            out = op.outputs[0]
            moe += 1
            unknown += _fresh_dims(spec)
            hidden = TensorType("f32", (f"unk__{unknown - 1}", d))
        h = g.op("Add", [h, out], f"layer{i}.residual", hidden)
    scale = g.weight("final_norm.scale", (d,))
    h = g.op("LayerNormalization", [h, scale], "final_norm", h.type, axis=-1, epsilon=EPSILON)
    head = g.weight("lm_head", (d, preset.vocab))
    g.module.outputs.append(
        g.op("MatMul", [h, head], "lm_head", TensorType("f32", (T, preset.vocab)))
    )
    g.module.opset = {"ai.onnx": OPSET}
    g.module.metadata = {"moec.preset": preset.name, SHAPE_ONLY_KEY: "1"}
    g.module.verify()
    return g.module


def _dense_ffn(g: _Graph, x: Value, d: int, F: int, name: str) -> Value:
    """``moe_blocks.dense_ffn``: silu(x @ w_gate) * (x @ w_up) @ w_down."""
    wide = TensorType("f32", ("T", F))
    gate = g.op("MatMul", [x, g.weight(f"{name}.w_gate", (d, F))], f"{name}.gate", wide)
    up = g.op("MatMul", [x, g.weight(f"{name}.w_up", (d, F))], f"{name}.up", wide)
    sig = g.op("Sigmoid", [gate], f"{name}.sigmoid", wide)
    silu = g.op("Mul", [gate, sig], f"{name}.silu", wide)
    h = g.op("Mul", [silu, up], f"{name}.mul", wide)
    return g.op("MatMul", [h, g.weight(f"{name}.w_down", (F, d))], f"{name}.down", x.type)
