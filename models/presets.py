"""Shape-only presets of real MoE architectures: true dimensions, weights declared not stored.

What a preset contains: token embedding, per layer a LayerNorm and either a dense gated FFN
(the first dense layers of DeepSeek models) or the MoE block in moec's decomposed form (router,
routed experts, shared experts), residual adds, a final LayerNorm and the LM head. Attention is
**not** included (it is not what moec schedules), so ``total_params`` counts embeddings, FFN/MoE
layers and the head: DeepSeek-V3 comes to 659.6B of its 671B (26.1B of 37B active), Mixtral-8x7B
to 45.4B of 46.7B, Qwen3-30B-A3B to 29.6B of 30.5B.

Sources: DESIGN.md for the four paper models, Hugging Face configs for the rest. Phi-3.5-MoE
follows its published config (``microsoft/Phi-3.5-MoE-instruct``: ``intermediate_size`` 6400,
sparsemixer routing with jitter 0.01, two experts, gates not renormalized); the FSE-DP paper
(and DESIGN.md) give it F 3200, which this preset no longer uses. Yuan2.0-M32 routes with an
attention router (approximated by a linear one) and DESIGN's F 4096 is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from moec.ir.moe import MoESpec

if TYPE_CHECKING:  # building the ONNX graph imports onnx; the graph IR does not need it
    import onnx


@dataclass(frozen=True)
class Preset:
    name: str
    spec: MoESpec
    layers: int
    dense_layers: int
    vocab: int
    dense_ffn: int
    description: str

    def build(self, seed: int = 0) -> onnx.ModelProto:
        from moec.models.moe_blocks import decomposed_moe
        from moec.models.tiny import language_model

        return language_model(
            self.name, self.spec, decomposed_moe, moe_layers=self.layers - self.dense_layers,
            dense_layers=self.dense_layers, seed=seed, shape_only=True, vocab=self.vocab,
            dense_ffn_size=self.dense_ffn, metadata={"moec.preset": self.name},
        )  # fmt: skip


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("phi3.5-moe",
               MoESpec(16, 2, 4096, 6400, scoring="sparsemixer", normalize_topk=False),
               32, 0, 32064, 0,
               "Phi-3.5-MoE: d 4096, F 6400, 16 experts top-2 (sparsemixer), 32 layers"),
        Preset("yuan2-m32", MoESpec(32, 2, 2048, 4096), 24, 0, 135040, 0,
               "Yuan2.0-M32: d 2048, F 4096, 32 experts top-2, 24 layers"),
        Preset("deepseek-moe-16b",
               MoESpec(64, 6, 2048, 1408, normalize_topk=False, num_shared=2, shared_ffn=2816),
               28, 1, 102400, 10944,
               "DeepSeek-MoE-16B: d 2048, F 1408, 64 experts top-6 + 2 shared, 28 layers, first dense"),
        Preset("qwen3-30b-a3b", MoESpec(128, 8, 2048, 768), 48, 0, 151936, 0,
               "Qwen3-30B-A3B: d 2048, F 768, 128 experts top-8, 48 layers"),
        Preset("mixtral-8x7b", MoESpec(8, 2, 4096, 14336), 32, 0, 32000, 0,
               "Mixtral-8x7B: d 4096, F 14336, 8 experts top-2, 32 layers"),
        Preset("deepseek-v3",
               MoESpec(256, 8, 7168, 2048, scoring="sigmoid", score_bias=True, n_group=8,
                       topk_group=4, group_score="top2_sum", routed_scaling=2.5,
                       num_shared=1, shared_ffn=2048),
               61, 3, 129280, 18432,
               "DeepSeek-V3: d 7168, F 2048, 256 experts top-8 (sigmoid, bias, 8 groups top-4, "
               "x2.5) + 1 shared, 61 layers, first 3 dense"),
    )
}  # fmt: skip
