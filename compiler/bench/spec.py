"""What a bench run is: models, token counts, strategies, the paper's grid, the lower bound.

Models are given by name (``moec models``: tiny models with weights and the shape-only presets of
real architectures, with the paper's spellings accepted as aliases) or as an ``.onnx`` file; each
is read through the frontend once per process (:func:`load_bench_model` caches it), so a grid
compiles from the same graph IR every time.

The analytic lower bound of one iteration (:func:`iteration_bound`) is the one of
:mod:`moec.ir.cost`, summed over the simulated MoE layers: per layer the larger of the weight bytes
of the activated experts over the total DRAM bandwidth and the FLOPs over the total compute.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np

from moec.ir.cost import layer_bound
from moec.ir.errors import ModelError, MoecError
from moec.ir.graph import Module
from moec.ir.moe import MoELayer
from moec.ir.routing import RoutingTrace
from moec.ir.target import Target


class BenchError(MoecError):
    """A bench request that cannot run: bad token list, unknown strategy, layer count."""


#: The four models of the FSE-DP paper (arXiv 2603.27624), as ``moec models`` names them.
PAPER_MODELS: tuple[str, ...] = ("phi3.5-moe", "yuan2-m32", "deepseek-moe-16b", "qwen3-30b-a3b")
PAPER_TOKENS: tuple[int, ...] = (16, 64, 256, 1024)
PAPER_STRATEGIES: tuple[str, ...] = ("ep", "hydra", "fsedp", "fsedp-paired")
PAPER_TARGETS: tuple[str, ...] = ("fsedp-2x2", "fsedp-3x3", "fsedp-4x4")
#: The paper's spellings of the preset names.
MODEL_ALIASES: dict[str, str] = {
    "phi-3.5-moe": "phi3.5-moe",
    "yuan2.0-m32": "yuan2-m32",
    "yuan-2.0-m32": "yuan2-m32",
    "deepseek-moe-16b-base": "deepseek-moe-16b",
}
#: The paper's ablation, step by step (label, strategy name): each step adds one mechanism.
ABLATION_STEPS: tuple[tuple[str, str], ...] = (
    ("naive FSE-DP", "fsedp-naive"),
    ("+ R1-R4", "fsedp"),
    ("+ paired load", "fsedp-paired"),
    ("+ R5", "fsedp-r5"),
    ("+ 20% token buffering", "fsedp-buf"),
)


@dataclass(frozen=True, eq=False)
class BenchModel:
    """A model read once through the frontend: its name, graph IR and MoE layers."""

    name: str
    source: str
    module: Module

    @property
    def layers(self) -> list[MoELayer]:
        return [op.attrs["layer"] for op in self.module.moe_ops()]

    def layer_shapes(self) -> list[tuple[int, int]]:
        """``[(num_experts, top_k)]`` per MoE layer, as routing traces need."""
        return [(ly.num_experts, ly.top_k) for ly in self.layers]


def canonical_model(spec: str) -> str:
    """The ``moec models`` name of ``spec`` (aliases resolved), or ``spec`` unchanged."""
    return MODEL_ALIASES.get(spec.lower(), spec)


@functools.lru_cache(maxsize=16)
def load_bench_model(spec: str) -> BenchModel:
    """Read a model by name or ``.onnx`` path through the frontend (cached per process: passes
    that rewrite the graph IR must start from :func:`read_bench_model` instead)."""
    return read_bench_model(spec)


def read_bench_model(spec: str) -> BenchModel:
    """Read a model by name or ``.onnx`` path through the frontend (no cache)."""
    from moec.compiler.frontend import lift_model, load_module

    if spec.endswith(".onnx"):
        loaded = load_module(spec, load_weights=False)
        module = loaded[0] if isinstance(loaded, tuple) else loaded
        name = spec.rsplit("/", 1)[-1].removesuffix(".onnx")
    else:
        from moec.models.catalog import catalog

        key = canonical_model(spec)
        entries = catalog()
        if key not in entries:
            raise ModelError(
                f"unknown model {spec!r}, expected a .onnx file or one of: {', '.join(entries)}"
            )
        module, _ = lift_model(entries[key].build(0), where=key)
        name = key
    if not module.moe_ops():
        raise ModelError("model has no MoE layer to bench", spec)
    return BenchModel(name, spec, module)


def truncate(module: Module, layers: int) -> Module:
    """The module up to and including its ``layers``-th MoE layer, whose output becomes the
    module's output (what ``--layers N`` simulates: dense islands after it are dropped)."""
    ops = []
    seen = 0
    for op in module.ops:
        ops.append(op)
        if op.is_moe:
            seen += 1
            if seen == layers:
                break
    if seen < layers:
        raise BenchError(f"--layers: the model has {seen} MoE layers, found {layers}")
    return dataclasses.replace(module, ops=ops, outputs=[ops[-1].outputs[0]])


def split_spellings(text: str) -> list[str]:
    """Split ``"ep,fsedp{slots=4,r5=true},hydra"`` at the commas outside braces."""
    out: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise BenchError(f"--strategies: unbalanced '}}' in {text!r}")
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if depth:
        raise BenchError(f"--strategies: unbalanced '{{' in {text!r}")
    out.append("".join(cur).strip())
    return out


def _positive_ints(flag: str, text: str) -> list[int]:
    out: list[int] = []
    for item in text.split(","):
        item = item.strip()
        try:
            value = int(item)
        except ValueError:
            raise BenchError(
                f"{flag}: expected integers >= 1 separated by commas, found {item!r}"
            ) from None
        if value < 1:
            raise BenchError(f"{flag}: expected integers >= 1, found {value}")
        if value not in out:
            out.append(value)
    return out


def parse_tokens(text: str) -> list[int]:
    """``"16,64,256"`` -> ``[16, 64, 256]`` (order kept, duplicates dropped)."""
    return _positive_ints("--tokens", text)


def parse_strategies(text: str, known: list[str] | None = None) -> list[str]:
    """``"ep,hydra{cap=none}"`` -> ``["ep", "hydra{cap=none}"]``, each name checked against
    ``known`` when given."""
    out: list[str] = []
    for item in split_spellings(text):
        if not item:
            raise BenchError(f"--strategies: empty name in {text!r}")
        name = item.split("{", 1)[0].strip()
        if known is not None and name not in known:
            raise BenchError(
                f"--strategies: unknown strategy {name!r}, expected one of: {', '.join(known)}"
            )
        if item not in out:
            out.append(item)
    return out


def parse_layers(text: str | int | None, available: int) -> int:
    """The number of MoE layers to simulate: ``N`` (1..available) or ``all``; default 1."""
    if text is None:
        return 1
    if isinstance(text, str) and text.strip().lower() == "all":
        return available
    try:
        n = int(text)
    except ValueError:
        raise BenchError(f"--layers: expected an integer or 'all', found {text!r}") from None
    if not 1 <= n <= available:
        raise BenchError(f"--layers: the model has {available} MoE layers, found {n}")
    return n


@dataclass(frozen=True)
class IterationBound:
    """The lower bound of one iteration over the simulated layers and its two terms (summed
    over layers: ``bound_s`` is the sum of each layer's larger term)."""

    bound_s: float
    dram_s: float
    compute_s: float


def iteration_bound(
    target: Target, layers: list[MoELayer], trace: RoutingTrace, precision: str = "fp16"
) -> IterationBound:
    """Sum over the traced layers of :func:`moec.ir.cost.layer_bound`."""
    bound = dram = compute = 0.0
    for layer, routing in zip(layers, trace.layers, strict=False):
        b = layer_bound(target, layer, np.asarray(routing.ids), precision)
        bound, dram, compute = bound + b.bound_s, dram + b.dram_s, compute + b.compute_s
    return IterationBound(bound, dram, compute)
