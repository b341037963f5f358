"""Every model ``moec models build`` knows: tiny seeded models and shape-only presets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from moec.models import tiny
from moec.models.presets import PRESETS


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "tiny" (real seeded weights) or "preset" (shape-only)
    description: str
    build: Callable[[int], onnx.ModelProto]


def _tiny(fn: Callable[[int], onnx.ModelProto]) -> Callable[[int], onnx.ModelProto]:
    return fn


def catalog() -> dict[str, Entry]:
    entries = [
        Entry("tiny_moe", "tiny", "2 com.microsoft.MoE layers, d 32, F 64, 8 experts top-2", tiny.tiny_moe),
        Entry("tiny_moe_decomposed", "tiny", "tiny_moe in moec's decomposed standard ops", tiny.tiny_moe_decomposed),
        Entry("tiny_moe_shared", "tiny", "decomposed, shared expert with sigmoid gate, no renorm", tiny.tiny_moe_shared),
        Entry("tiny_deepseek", "tiny", "decomposed DeepSeek-V3-like routing (sigmoid, bias, groups, scaling)", tiny.tiny_deepseek),
        Entry("tiny_qmoe4", "tiny", "2 com.microsoft.QMoE layers, 4-bit experts", lambda s: tiny.tiny_qmoe(s, 4)),
        Entry("tiny_qmoe8", "tiny", "2 com.microsoft.QMoE layers, 8-bit experts", lambda s: tiny.tiny_qmoe(s, 8)),
    ]  # fmt: skip
    for p in PRESETS.values():
        entries.append(Entry(p.name, "preset", p.description + " (shape-only)", p.build))
    return {e.name: e for e in entries}
