"""What a bench run is: models, token counts, strategies, the paper's grid, the lower bound.

Models are given by name (``moec models``: tiny models with weights and the shape-only presets of
real architectures, with the paper's spellings accepted as aliases) or as an ``.onnx`` file; each
is read through the frontend once per process (:func:`load_bench_model` caches it), so a grid
compiles from the same graph IR every time.

The analytic lower bound of one iteration (:func:`iteration_bound`) is the one of
:mod:`moec.ir.cost`, summed over the simulated MoE layers: per layer the larger of the weight bytes
of the activated experts over the total DRAM bandwidth and the FLOPs over the total compute,
counting only the work the iteration does: pairs dropped by runtime rules and pairs deferred by
token buffering (the next iteration's work) are left out, and with a per-expert precision plan
each expert's bytes and FLOPs count at its own precision.

:func:`accuracy_dims` sizes a model's symbolic inputs for a row's token count (bench accuracy).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from moec.ir.cost import GB, LayerBound, bytes_per_element, layer_bound
from moec.ir.errors import ModelError, MoecError
from moec.ir.graph import Module
from moec.ir.moe import MoELayer
from moec.ir.routing import LayerRouting, RoutingTrace
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
        return [op.layer for op in self.module.moe_ops()]

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
    """Read a model by name or ``.onnx`` path through the frontend (no cache). A shape-only
    preset's graph IR is built directly (:func:`~moec.models.preset_graph.preset_module`, equal
    to its lifted ONNX graph), so benching a preset does not import ``onnx``."""
    from moec.models.preset_graph import preset_module
    from moec.models.presets import PRESETS

    key = canonical_model(spec)
    direct = preset_module(PRESETS[key]) if key in PRESETS else None
    if direct is not None:
        module, name = direct, key
    elif spec.endswith(".onnx"):
        from moec.compiler.frontend import load_module

        loaded = load_module(spec, load_weights=False)
        module = loaded[0] if isinstance(loaded, tuple) else loaded
        name = spec.rsplit("/", 1)[-1].removesuffix(".onnx")
    else:
        from moec.compiler.frontend import lift_model
        from moec.models.catalog import catalog

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
    target: Target,
    layers: Sequence[MoELayer],
    routings: RoutingTrace | Sequence[LayerRouting],
    precision: str = "fp16",
    deferred: Sequence[Collection[int]] = (),
    plans: Sequence[Sequence[str]] = (),
) -> IterationBound:
    """Sum over the routed layers of :func:`moec.ir.cost.layer_bound`.

    ``deferred[i]`` are the experts of layer ``i`` whose pairs token buffering moves to the next
    iteration: their pairs are not this iteration's work, so they count neither bytes nor FLOPs
    (a deferred expert is deferred whole, so it is not loaded either). Dropped pairs (id -1, from
    runtime rules) never count. ``plans[i]``, when not empty, is layer ``i``'s per-expert
    precision (``assign-precision``): each expert's bytes and FLOPs count at its own precision
    (:func:`mixed_layer_bound`), the shared experts at ``precision``.
    """
    per_layer = routings.layers if isinstance(routings, RoutingTrace) else list(routings)
    bound = dram = compute = 0.0
    for i, (layer, routing) in enumerate(zip(layers, per_layer, strict=False)):
        ids = np.asarray(routing.ids)
        gone = sorted(deferred[i]) if i < len(deferred) else []
        if gone:
            ids = np.where(np.isin(ids, gone), -1, ids)
        plan = list(plans[i]) if i < len(plans) else []
        b = (
            mixed_layer_bound(target, layer, ids, plan, precision) if plan
            else layer_bound(target, layer, ids, precision)
        )  # fmt: skip
        bound, dram, compute = bound + b.bound_s, dram + b.dram_s, compute + b.compute_s
    return IterationBound(bound, dram, compute)


def mixed_layer_bound(
    target: Target, layer: MoELayer, ids: np.ndarray, plan: Sequence[str], precision: str
) -> LayerBound:
    """:func:`moec.ir.cost.layer_bound` with a precision per expert: weight bytes of each
    activated expert at its precision; compute time of each precision's FLOPs at that
    precision's throughput. The shared experts run at ``precision``."""
    if len(plan) != layer.num_experts:
        raise BenchError(
            f"precision plan of {len(plan)} experts for a layer of {layer.num_experts}",
            layer.name,
        )
    expert_params = (3 if layer.gated else 2) * layer.hidden * layer.ffn
    shared_params = layer.shared_mats * layer.hidden * layer.shared_ffn if layer.has_shared else 0
    valid = ids[ids >= 0]
    weight_bytes = shared_params * bytes_per_element(precision)
    weight_bytes += sum(
        expert_params * bytes_per_element(plan[e]) for e in np.unique(valid).tolist()
    )
    pairs = np.bincount(valid, minlength=layer.num_experts)
    flops: dict[str, float] = {precision: 2.0 * int(ids.shape[0]) * shared_params}
    for e in np.flatnonzero(pairs).tolist():
        flops[plan[e]] = flops.get(plan[e], 0.0) + 2.0 * int(pairs[e]) * expert_params
    compute_s = sum(f / target.total_flops_per_s(p) for p, f in sorted(flops.items()))
    dram_bw = target.total_dram_gbps() * GB
    dram_s = weight_bytes / dram_bw if dram_bw > 0 else float("inf")
    return LayerBound(dram_s, compute_s, float(weight_bytes), float(sum(flops.values())))


def accuracy_dims(module: Module, tokens: int, where: str) -> dict[str, int]:
    """Sizes of the module's symbolic input dimensions that give ``tokens`` tokens per MoE
    layer, for the accuracy inputs of a bench row.

    One symbolic dimension (``tokens: [T]``) is set to ``tokens``. With several (``input_ids:
    [batch, seq]``), every non-batch dimension keeps its default (8: short sequences, within any
    context window) and the batch dimension takes the rest, so ``tokens`` must be a multiple of
    their product; anything else is a :class:`BenchError`.
    """
    from moec.compiler.lower.common import default_dim

    names = list(
        dict.fromkeys(
            d
            for v in module.inputs
            if v.type is not None
            for d in v.type.shape
            if isinstance(d, str)
        )
    )
    if not names:
        return {}  # static shapes: the caller checks the token count the program gets
    if len(names) == 1:
        return {names[0]: tokens}
    batch = [d for d in names if "batch" in d.lower()]
    if len(batch) == 1:
        rest = {d: default_dim(d) for d in names if d != batch[0]}
        per_row = int(np.prod(list(rest.values()), dtype=np.int64))
        if tokens % per_row == 0:
            return {batch[0]: tokens // per_row, **rest}
        raise BenchError(
            f"accuracy inputs: {tokens} tokens is not a multiple of "
            f"{' x '.join(f'{k}={v}' for k, v in rest.items())} = {per_row} (use --no-accuracy)",
            where,
        )
    raise BenchError(
        f"accuracy inputs: cannot choose sizes for the symbolic dimensions "
        f"{', '.join(names) or '(none)'} to give {tokens} tokens, expected one dimension or "
        "one batch dimension (use --no-accuracy)",
        where,
    )
