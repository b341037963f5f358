"""Tiny MoE language models with real seeded weights (hidden 32, experts' FFN 64: committed files stay well under 1 MB).

All share one skeleton: token ids ``[T]`` -> embedding -> a dense gated FFN block -> MoE blocks
(pre-LayerNorm, residual Add) -> LayerNorm -> logits ``[T, vocab]``. They differ in how the MoE
blocks are written (ORT fused ``MoE``/``QMoE`` or moec's decomposed standard ops) and in routing
options, so every frontend path has a small model with real numbers.
"""

from __future__ import annotations

from collections.abc import Callable

import onnx
from onnx import TensorProto

from moec.ir.moe import MoESpec
from moec.models.builder import OnnxBuilder
from moec.models.moe_blocks import decomposed_moe, dense_ffn, fused_moe, fused_qmoe, layer_norm

VOCAB = 128
HIDDEN = 32
FFN = 64
DENSE_FFN = 128

Block = Callable[[OnnxBuilder, str, MoESpec, str], str]


def language_model(
    name: str, spec: MoESpec, block: Block, *, moe_layers: int = 2, dense_layers: int = 1,
    seed: int = 0, shape_only: bool = False, vocab: int = VOCAB, dense_ffn_size: int = DENSE_FFN,
    metadata: dict[str, str] | None = None,
) -> onnx.ModelProto:  # fmt: skip
    """Embedding, ``dense_layers`` dense FFN blocks, ``moe_layers`` MoE blocks, LM head."""
    b = OnnxBuilder(name, seed=seed, shape_only=shape_only)
    d = spec.hidden
    tokens = b.input("tokens", TensorProto.INT64, ["T"])
    emb = b.weight("embed", (vocab, d), scale=1.0)
    h = b.op("Gather", [emb, tokens], name="embed", axis=0)
    for i in range(dense_layers + moe_layers):
        normed = layer_norm(b, h, d, f"layer{i}.norm")
        if i < dense_layers:
            out = dense_ffn(b, normed, d, dense_ffn_size, f"layer{i}.ffn")
        else:
            out = block(b, normed, spec, f"layer{i}.moe")
        h = b.op("Add", [h, out], name=f"layer{i}.residual")
    h = layer_norm(b, h, d, "final_norm")
    logits = b.op("MatMul", [h, b.weight("lm_head", (d, vocab))], name="lm_head")
    b.output(logits, TensorProto.FLOAT, ["T", vocab])
    return b.model(metadata)


def _spec(**kw: object) -> MoESpec:
    base: dict[str, object] = {"experts": 8, "top_k": 2, "hidden": HIDDEN, "ffn": FFN}
    base.update(kw)
    return MoESpec(**base)  # type: ignore[arg-type]


def tiny_moe(seed: int = 0) -> onnx.ModelProto:
    """Two ``com.microsoft.MoE`` layers (SwiGLU alpha=1 beta=0, i.e. gated silu), top-2 of 8."""
    return language_model("tiny_moe", _spec(), fused_moe, seed=seed)


def tiny_moe_decomposed(seed: int = 0) -> onnx.ModelProto:
    """The architecture of ``tiny_moe`` in moec's decomposed standard-op form."""
    return language_model("tiny_moe_decomposed", _spec(), decomposed_moe, seed=seed)


def tiny_moe_shared(seed: int = 0) -> onnx.ModelProto:
    """Qwen2-MoE-like: softmax top-2 without renormalization, one shared expert with sigmoid gate."""
    spec = _spec(normalize_topk=False, num_shared=1, shared_ffn=FFN, shared_gate=True)
    return language_model("tiny_moe_shared", spec, decomposed_moe, seed=seed)


def tiny_deepseek(seed: int = 0) -> onnx.ModelProto:
    """DeepSeek-V3-like: sigmoid scores, correction bias, 4 groups top-2, top-4 of 16, scaling 2.5,
    one shared expert, first layer dense."""
    spec = _spec(
        experts=16, top_k=4, scoring="sigmoid", score_bias=True, n_group=4, topk_group=2,
        group_score="top2_sum", routed_scaling=2.5, num_shared=1, shared_ffn=FFN,
    )  # fmt: skip
    return language_model("tiny_deepseek", spec, decomposed_moe, seed=seed)


def tiny_qmoe(seed: int = 0, bits: int = 4) -> onnx.ModelProto:
    """Two ``com.microsoft.QMoE`` layers with row-wise symmetric ``bits``-bit expert weights."""

    def block(b: OnnxBuilder, x: str, s: MoESpec, name: str) -> str:
        return fused_qmoe(b, x, s, name, bits=bits)

    return language_model(f"tiny_qmoe{bits}", _spec(), block, seed=seed)
