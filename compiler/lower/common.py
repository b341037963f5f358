"""What every lowering shares: target, MoE layers, micro-slices, SRAM slots, dense islands, sync.

:func:`prepare` turns a graph IR module into a :class:`Lowering`: a stream program with

* the target (``TargetRef``: preset or TOML path plus flat overrides);
* one ``MoEDecl`` per MoE layer, with its tokens per iteration (``--tokens``, else the routing
  trace's, else the layer input's shape with symbolic dimensions set by :func:`resolve_dims`);
* micro-slice layouts sized to the SRAM slots: each die gets ``slots`` slots (default 4) of one
  size, and each layer's experts are cut into the fewest even slices whose largest fits a slot
  in the SRAM the layer's activations leave (``slots x slot bytes + activations <= SRAM``, the
  activations as :func:`predicted_activations` estimates them for the strategy's
  :data:`ACTIVATION_KINDS` entry, see :mod:`moec.ir.activations`); the slot size is the largest
  slice of any layer. When even one-column slices do not fit, :class:`ScheduleError` "does not
  fit SRAM: die d needs X bytes (activations A + slots S), has Y";
* dense islands (the ordinary ops between MoE layers) with estimated FLOPs and DRAM bytes, split
  evenly over the dies (``dense`` per die), separated from the MoE layers by ``signal``/``wait``
  barriers, and one ``moe L`` placeholder per layer in every die's stream.

The strategy then declares where expert weights live (``TensorDecl``) and writes the runtime
policies. With the common option ``resident=F`` (or a ``caee-prune{resident=F}`` annotation),
:func:`~moec.compiler.lower.residency.layer_residency` picks the experts kept in device memory;
:meth:`Lowering.expert_tensor` declares the others on the host tier and :meth:`Lowering.policy`
records ``annotate resident = [1, 0, ...]`` for the interpreter and the CAEE rule. Conventions the expanders rely on: expert ``e`` of layer ``L`` is tensor ``L.e<e>``;
the shared experts have one replica per channel, ``L.shared.ch<c>`` (EP and TP split them over
the dies instead: one shard per die and channel, ``L.shared.d<d>[.ch<c>]``); the policy's
``slice_bytes`` (and ``shared_slice_bytes``) give the bytes of each micro-slice, biases included
(``b_down`` and the shared gate ride with slice 0).

**Dense island estimate** (an estimate, documented so it can be argued with): ``MatMul``/``Gemm``
with a constant weight ``[K, N]``: ``2 * rows * K * N`` FLOPs, the weight's bytes from DRAM;
``MatMul`` of two activations: ``2 * numel(out) * K`` FLOPs, no DRAM; ``Gather`` on a constant
table (embedding): the bytes of the rows read, no FLOPs; shape and data-movement ops (Reshape,
Transpose, Concat, Cast, ...): nothing; every other op (elementwise, normalizations, softmax):
one FLOP per output element (tokens x width) plus the bytes of its constant inputs. Floating-point
weights count at the program's precision. The router of MoE layer ``i`` (``2 * T * d * E`` FLOPs,
its weights' bytes) is counted in the island before it. Values whose size is unknown count zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from moec.compiler.lower.residency import layer_residency
from moec.ir.activations import ACCUM_PRECISION, h_bytes, predicted_activation_bytes
from moec.ir.errors import ModelError, ScheduleError, TraceError
from moec.ir.graph import DTYPE_BYTES, Module, Op, Value, Weight
from moec.ir.moe import MoELayer
from moec.ir.routing import RoutingTrace, validate
from moec.ir.stream import (
    Dense,
    DieStream,
    IslandDecl,
    MoE,
    MoEDecl,
    Program,
    RuntimePolicy,
    Signal,
    SkipRule,
    SliceLayout,
    SlotPool,
    TargetRef,
    TensorDecl,
    Wait,
)
from moec.ir.stream.program import HOST_CHANNEL
from moec.ir.target import PRECISION_BYTES, Target, load_target


class StrategyError(ScheduleError):
    """An unknown strategy, or a strategy option that is malformed or impossible."""


#: Options every strategy accepts, with their meaning.
COMMON_OPTIONS: dict[str, str] = {
    "slots": "SRAM buffer slots per die (integer >= 1, default 4)",
    "slices": "micro-slices per expert: auto (fewest that fit a slot) or an integer",
    "dtype": "weight precision: fp32, fp16, bf16, int8, int4 (default: the weights' own)",
    "resident": "fraction of each layer's experts in device memory, the others offloaded to the "
    "target's host tier (default 1: all resident; see compiler/lower/residency.py)",
}

#: Graph dtype -> program precision.
_PRECISION_OF = {"f64": "fp32", "f32": "fp32", "f16": "fp16", "bf16": "bf16", "i8": "int8",
                 "u8": "int8", "i4": "int4", "u4": "int4"}  # fmt: skip

#: Ops that only move or reshape data: no FLOPs, no DRAM in the island estimate.
_DATA_MOVEMENT = frozenset({
    "Reshape", "Transpose", "Concat", "Split", "Slice", "Squeeze", "Unsqueeze", "Flatten", "Cast",
    "Identity", "Shape", "Size", "Constant", "ConstantOfShape", "Expand", "Range", "Gather",
    "GatherElements", "GatherND", "ScatterND", "ScatterElements", "Tile", "Pad", "NonZero",
    "CastLike", "Trilu", "Where", "Equal", "Less", "Greater", "Not", "And", "Or", "EyeLike",
})  # fmt: skip


def default_dim(name: str) -> int:
    """The size a symbolic dimension gets when nobody says: 2 for a batch, 8 otherwise."""
    return 2 if "batch" in name.lower() else 8


def resolve_dims(module: Module, given: Mapping[str, int] | None = None) -> dict[str, int]:
    """A size for every symbolic dimension of the module's inputs: ``given``, else the default."""
    out: dict[str, int] = {}
    given = dict(given or {})
    for v in module.inputs:
        for d in v.type.shape if v.type is not None else ():
            if isinstance(d, str) and d not in out:
                out[d] = given.get(d, default_dim(d))
    for k, v in given.items():
        if v < 1:
            raise ModelError(f"dimension {k} must be >= 1, found {v}", "--dims")
        out.setdefault(k, v)
    return dict(sorted(out.items()))


Size = tuple[int, int | None]  # (elements, last dimension or None when unknown)


def _known_size(v: Value, dims: Mapping[str, int]) -> Size | None:
    if v.type is None or (not v.type.shape and v.weight is None):
        return None  # rank 0 from a failed inference is "unknown", not a scalar
    n = 1
    for d in v.type.shape:
        if isinstance(d, str):
            if d not in dims:
                return None
            n *= dims[d]
        else:
            n *= d
    last = v.type.shape[-1] if v.type.shape else 1
    return n, (dims.get(last) if isinstance(last, str) else last)


def value_sizes(module: Module, dims: Mapping[str, int]) -> dict[str, Size]:
    """Elements (and last dimension) of every value, filling gaps ONNX shape inference left.

    Values after an op inference does not know (``com.microsoft.MoE``) or behind a computed
    reshape come out untyped; they are filled along the way: ``moe`` keeps its input's size,
    ``MatMul``/``Gemm`` by a constant ``[K, N]`` gives ``elements / K * N``, ``Reshape`` keeps the
    elements (and takes the last dimension from a constant shape), other data movement is left
    unknown, anything else takes its largest activation input's size (right for elementwise ops and normalizations).
    """
    sizes: dict[str, Size] = {}
    for v in module.inputs:
        s = _known_size(v, dims)
        if s is not None:
            sizes[v.name] = s
    for w in module.weights.values():
        shape = w.type.shape
        sizes[w.name] = (w.type.numel, int(shape[-1]) if shape else 1)
    for op in module.ops:
        ins = [sizes.get(v.name) if v is not None else None for v in op.inputs]
        for k, out in enumerate(op.outputs):
            s = _known_size(out, dims)
            if s is None and k == 0 and ins and ins[0] is not None:
                s = _infer(op, ins)
            if s is not None:
                sizes[out.name] = s
    return sizes


def _infer(op: Op, ins: list[Size | None]) -> Size | None:
    first = ins[0]
    assert first is not None
    if op.is_moe:
        return first
    w = op.inputs[1].weight if len(op.inputs) > 1 and op.inputs[1] is not None else None
    if op.kind in ("MatMul", "Gemm") and w is not None and len(w.type.shape) >= 2:
        k, n = int(w.type.shape[-2]), int(w.type.shape[-1])
        if op.kind == "Gemm" and op.attrs.get("transB", 0):
            k, n = n, k
        return first[0] // max(k, 1) * n, n
    if op.kind == "Reshape":
        last = None
        if w is not None and w.present and w.type.numel:
            tail = int(np.asarray(w.array()).reshape(-1)[-1])
            last = tail if tail > 0 else None
        return first[0], last
    if op.kind in ("Cast", "Identity", "CastLike"):
        return first
    if op.kind in _DATA_MOVEMENT:
        return None
    acts = [
        s
        for s, v in zip(ins, op.inputs, strict=True)
        if s is not None and v is not None and v.weight is None
    ]
    return max(acts, key=lambda s: s[0]) if acts else None


def numel(v: Value | None, sizes: Mapping[str, Size]) -> int | None:
    """Elements of ``v`` from :func:`value_sizes`; None when unknown."""
    if v is None or v.name not in sizes:
        return None
    return sizes[v.name][0]


@dataclass(frozen=True)
class LoweringOptions:
    """The options every strategy shares (see :data:`COMMON_OPTIONS`)."""

    slots: int = 4
    slices: int | None = None
    dtype: str | None = None
    resident: float | None = None

    @staticmethod
    def parse(opts: Mapping[str, str]) -> LoweringOptions:
        slots = parse_int(opts, "slots", 4, minimum=1)
        raw = opts.get("slices", "auto")
        slices = None if raw == "auto" else parse_int(opts, "slices", 1, minimum=1)
        dtype = opts.get("dtype")
        if dtype is not None and dtype not in PRECISION_BYTES:
            raise StrategyError(
                f"option dtype: expected one of {', '.join(PRECISION_BYTES)}, found {dtype!r}",
                "--strategy",
            )
        resident = None
        if "resident" in opts:
            try:
                resident = float(opts["resident"])
            except ValueError:
                resident = -1.0
            if not 0.0 <= resident <= 1.0:
                raise StrategyError(
                    f"option resident: expected a fraction in [0, 1], found {opts['resident']!r}",
                    "--strategy",
                )
        return LoweringOptions(slots, slices, dtype, resident)


def parse_int(opts: Mapping[str, str], key: str, default: int, *, minimum: int = 0) -> int:
    """Option ``key`` as an integer >= ``minimum`` (``default`` when absent)."""
    raw = opts.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise StrategyError(
            f"option {key}: expected an integer >= {minimum}, found {raw!r}", "--strategy"
        )
    return value


#: How a strategy's dies hold token activations (what :func:`predicted_activations` charges):
#: ``home`` (tokens stay on their die: FSE-DP), ``routed`` (tokens travel to their experts'
#: dies: EP, Hydra, EPLB) or ``all`` (every die holds every token: TP).
ACTIVATION_KINDS = ("home", "routed", "all")


@dataclass(frozen=True)
class ActivationEstimate:
    """A die's predicted activations for one layer: fixed bytes, and tokens per slice for ``h``."""

    fixed: int
    h_tokens: int


@dataclass
class LayerPlan:
    """One MoE layer as lowered: the canonical layer, its declaration, layouts and slice bytes."""

    layer: MoELayer
    decl: MoEDecl
    layout: SliceLayout
    slice_bytes: list[int]
    shared_layout: SliceLayout | None = None
    shared_slice_bytes: list[int] = field(default_factory=list)
    #: per expert 1 (device memory) or 0 (offloaded to the host tier); None: all resident
    resident: list[int] | None = None
    #: the activations the lowering predicts per die (:func:`predicted_activations`)
    activations: ActivationEstimate | None = None

    def activation_bytes(self) -> int:
        """Predicted activations of a die: the fixed part and ``h`` of the widest slice in
        flight (routed or shared)."""
        est = self.activations
        if est is None:
            return 0
        widest = max(self.layout.width(j) for j in range(self.layout.count))
        h = h_bytes(est.h_tokens, widest, self.decl.gated)
        if self.shared_layout is not None:
            lay = self.shared_layout
            widest = max(lay.width(j) for j in range(lay.count))
            h = max(h, h_bytes(est.h_tokens, widest, True))
        return est.fixed + h

    @property
    def name(self) -> str:
        return self.decl.name

    @property
    def expert_bytes(self) -> int:
        return sum(self.slice_bytes)

    @property
    def shared_bytes(self) -> int:
        return sum(self.shared_slice_bytes)


@dataclass
class Lowering:
    """The program under construction, what it was built from, and the per-layer plans."""

    module: Module
    target: Target
    program: Program
    plans: list[LayerPlan]
    options: LoweringOptions
    raw_options: dict[str, str]
    routing: RoutingTrace | None = None
    dims: dict[str, int] = field(default_factory=dict)

    def expert_tensor(self, plan: LayerPlan, e: int, channel: int) -> TensorDecl:
        """Declare expert ``e`` of ``plan`` (gate/up/down stacked) on DRAM ``channel``, or on the
        host when the plan offloads it."""
        d = plan.decl
        if plan.resident is not None and not plan.resident[e]:
            channel = HOST_CHANNEL
        t = TensorDecl(
            f"{d.name}.e{e}", d.dtype, (3 if d.gated else 2, d.hidden, d.ffn), channel,
            plan.expert_bytes,
        )  # fmt: skip
        self.program.tensors.append(t)
        return t

    def shared_tensors(self, plan: LayerPlan) -> None:
        """Declare one replica of the shared experts per DRAM channel (every die uses them)."""
        d = plan.decl
        if not d.shared_ffn:
            return
        for ch in self.target.channels:
            self.program.tensors.append(
                TensorDecl(
                    f"{d.name}.shared.ch{ch.id}",
                    d.dtype,
                    (3, d.hidden, d.shared_ffn),
                    ch.id,
                    plan.shared_bytes,
                )  # fmt: skip
            )

    def policy(self, plan: LayerPlan, strategy: str, params: dict[str, object]) -> RuntimePolicy:
        """Add the runtime policy of ``plan``'s layer, with the slice sizes every expander needs."""
        full: dict = {"slice_bytes": list(plan.slice_bytes), **params}
        if plan.shared_layout is not None:
            full["shared_slice_bytes"] = list(plan.shared_slice_bytes)
        r = RuntimePolicy(plan.name, strategy, full)
        carry_pass_annotations(plan.layer, r)
        if plan.resident is not None:
            r.annotations["resident"] = list(plan.resident)
        self.program.runtime.append(r)
        return r

    def finish(self) -> None:
        """Check that the strategy gave every layer a policy."""
        have = {r.layer for r in self.program.runtime}
        for plan in self.plans:
            if plan.name not in have:
                raise StrategyError(f"strategy wrote no runtime policy for {plan.name}")


#: Per-expert annotations of the cost-aware passes that the runtime part carries.
RUNTIME_ANNOTATIONS = (
    "importance", "gate_mass", "routed_frac", "contribution", "quant_error", "resident",
)  # fmt: skip


def carry_pass_annotations(layer: MoELayer, r: RuntimePolicy) -> None:
    """Copy what passes decided into the runtime policy: the per-expert precision table
    (``assign-precision``), the skip rule (``skip-second``, ``caee-prune``: ``(rule, threshold)``)
    and the per-expert annotations of :data:`RUNTIME_ANNOTATIONS`."""
    E = layer.num_experts
    precision = layer.annotations.get("precision")
    if isinstance(precision, list) and len(precision) == E:
        r.precision = tuple(str(p) for p in precision)
    rule = layer.annotations.get("skip_rule")
    if rule is not None:
        r.skip = SkipRule(str(rule[0]), float(rule[1]))
    for key in RUNTIME_ANNOTATIONS:
        values = layer.annotations.get(key)
        if isinstance(values, list) and len(values) == E:
            r.annotations[key] = list(values)


# --- tokens and precision ----------------------------------------------------------------------
def _layer_tokens(op: Op, sizes: Mapping[str, Size]) -> int | None:
    x = op.inputs[0]
    n = numel(x, sizes)
    hidden = op.attrs["layer"].hidden
    return n // hidden if n is not None and n % hidden == 0 and n > 0 else None


def layer_precision(layer: MoELayer, override: str | None) -> str:
    """The program precision of a layer: the option, else its weights' dtype, else fp16."""
    if override is not None:
        return override
    w = layer.weights.get("w_up")
    if w is None or not w.present:
        return "fp16"  # shape-only: the deployment precision, not the file's container type
    return _PRECISION_OF.get(w.type.dtype, "fp32")


def _shape_tokens(module: Module, ops: list[Op], dims: Mapping[str, int]) -> set[int]:
    sizes = value_sizes(module, dims)
    return {n for n in (_layer_tokens(op, sizes) for op in ops) if n is not None}


def _tokens(
    module: Module,
    ops: list[Op],
    given: Mapping[str, int] | None,
    tokens: int | None,
    routing: RoutingTrace | None,
    where: str,
) -> tuple[int, dict[str, int]]:
    """Tokens per iteration and the symbolic dimension sizes that go with them.

    With ``--tokens`` or a trace, symbolic dimensions nobody set become 1 except the last one,
    which takes the token count (``[batch, seq]`` -> batch 1, seq T), so the dense islands are
    estimated for the same tokens. A model whose shapes fix the tokens (static shapes) must
    agree, unless it is shape-only (timing runs at any token count).
    """
    if tokens is not None and tokens < 1:
        raise ModelError(f"--tokens must be >= 1, found {tokens}", where)
    want = tokens if tokens is not None else (routing.tokens if routing is not None else None)
    dims = resolve_dims(module, given)
    if want is None:
        # Every layer sees the same tokens; layers after ops without shape inference say nothing.
        known = _shape_tokens(module, ops, dims)
        if len(known) != 1:
            raise ModelError(
                "cannot tell the tokens per iteration from the MoE layers' input shapes "
                f"(found {sorted(known) or 'none'}); give --tokens N",
                where,
            )
        return known.pop(), dims
    static = _shape_tokens(module, ops, {})
    if static and want not in static and _has_weights(ops):
        src = "--tokens" if tokens is not None else "the routing trace"
        raise (TraceError if tokens is None else ModelError)(
            f"{src} gives {want} tokens, but the model's MoE layers have {min(static)} "
            "(static shapes)",
            where,
        )
    free = [d for d in dims if d not in (given or {})]
    if free:
        trial = {**dims, **{d: 1 for d in free}}
        trial[free[-1]] = want
        if _shape_tokens(module, ops, trial) <= {want}:
            dims = trial
    return want, dims


def _has_weights(ops: list[Op]) -> bool:
    return all(op.attrs["layer"].weights_present for op in ops)


# --- slices and slots --------------------------------------------------------------------------
def _elem(dtype: str) -> float:
    return PRECISION_BYTES[dtype]


def _slice_bytes(layer: MoELayer, layout: SliceLayout, dtype: str) -> list[int]:
    e = _elem(dtype)
    mats = 3 if layer.gated else 2
    col = (
        mats * layer.hidden * e
        + (e if layer.has("b_gate") else 0)
        + (e if layer.has("b_up") else 0)
    )
    extra = layer.hidden * e if layer.has("b_down") else 0
    return [
        int(math.ceil(layout.width(j) * col + (extra if j == 0 else 0)))
        for j in range(layout.count)
    ]


def _shared_slice_bytes(layer: MoELayer, layout: SliceLayout, dtype: str) -> list[int]:
    e = _elem(dtype)
    extra = layer.hidden * e if layer.has("sh_router") else 0
    return [
        int(math.ceil(layout.width(j) * 3 * layer.hidden * e + (extra if j == 0 else 0)))
        for j in range(layout.count)
    ]


def _fewest_slices_in(
    ffn: int, col: float, extra: float, h_col: float, room: int, slots: int
) -> int | None:  # fmt: skip
    """The fewest even slices of ``ffn`` columns such that ``slots`` slots of the largest plus
    its ``h`` (``h_col`` bytes per column) fit ``room`` bytes: width ``w`` needs
    ``slots x (w col + extra) + w h_col``."""
    width = int((room - slots * extra) // (slots * col + h_col)) if room > slots * extra else 0
    if width < 1:
        return None
    return -(-ffn // min(width, ffn))


def predicted_activations(
    kind: str, *, tokens: int, home: int, dies: int, top_k: int, hidden: int, dtype: str,
    shared: bool,
) -> ActivationEstimate:  # fmt: skip
    """What the lowering expects a die to hold besides slots (see :mod:`moec.ir.activations`).

    Every die holds ``home`` tokens' ``x`` and ``y`` (the most any die has). ``routed`` adds other
    dies' tokens with their ``x`` and partial ``y``: the expected number for uniform routing,
    ``(tokens - home) x (1 - (1 - 1/dies) ** top_k)`` (each token's ``top_k`` experts land on a
    given die with that probability), or all of them when the layer's shared experts are split
    over the dies (every die computes them for every token); ``all`` adds all of them. A skewed
    batch can hold more at run time: the interpreter charges what the run really holds and
    reports an excess. ``h`` is bounded by the most tokens one slice's gemm can have: ``home``
    under ``home``, every token otherwise (an expert chosen by the whole batch).
    """
    if kind not in ACTIVATION_KINDS:
        raise StrategyError(f"activation kind {kind!r}, expected one of {ACTIVATION_KINDS}")
    others = tokens - home
    if kind == "home":
        remote = 0.0
    elif kind == "all" or shared or dies <= 1:
        remote = float(others)
    else:
        remote = others * (1.0 - (1.0 - 1.0 / dies) ** top_k)
    fixed = predicted_activation_bytes(home=home, remote=remote, hidden=hidden, dtype=dtype)
    return ActivationEstimate(fixed, home if kind == "home" else tokens)


def home_tokens(tokens: int, dies: int, routing: RoutingTrace | None) -> int:
    """The most tokens any die is home to: from the routing trace, else contiguous blocks."""
    if routing is not None and routing.layers:
        return max(
            int(np.bincount(np.asarray(lr.home_die), minlength=dies).max()) for lr in routing.layers
        )
    return -(-tokens // max(dies, 1))


def _fit_error(die: int, acts: int, slots: int, sram: int, what: str, where: str) -> ScheduleError:
    return ScheduleError(
        f"does not fit SRAM: die {die} needs {acts + slots} bytes (activations {acts} + slots "
        f"{slots}{what}), has {sram}",
        where,
    )


def _plan_layers(
    ops: list[Op], target: Target, opts: LoweringOptions, tokens: int, where: str,
    kind: str = "routed", home: int | None = None,
) -> tuple[list[LayerPlan], int]:  # fmt: skip
    sram = min(d.sram_bytes for d in target.dies)
    small_die = min(target.dies, key=lambda d: (d.sram_bytes, d.id)).id
    D = target.num_dies
    home = -(-tokens // D) if home is None else home
    acc = _elem(ACCUM_PRECISION)
    plans: list[LayerPlan] = []
    for op in ops:
        layer: MoELayer = op.attrs["layer"]
        dtype = layer_precision(layer, opts.dtype)
        table = layer.annotations.get("precision")
        widest = [p for p in table if p in PRECISION_BYTES] if isinstance(table, list) else []
        if widest and max(_elem(p) for p in widest) > _elem(dtype):
            dtype = max(widest, key=_elem)  # slices fit the widest precision any expert streams at
        est = predicted_activations(
            kind, tokens=tokens, home=home, dies=D, top_k=layer.top_k, hidden=layer.hidden,
            dtype=dtype, shared=layer.has_shared,
        )  # fmt: skip
        e = _elem(dtype)
        mats = 3 if layer.gated else 2
        col = mats * layer.hidden * e + e * (layer.has("b_gate") + layer.has("b_up"))
        extra = layer.hidden * e if layer.has("b_down") else 0
        h_col = est.h_tokens * (2 if layer.gated else 1) * acc  # h per FFN column in flight
        count = _fewest_slices_in(layer.ffn, col, extra, h_col, sram - est.fixed, opts.slots)
        if count is None:
            one = opts.slots * int(math.ceil(col + extra))
            raise _fit_error(
                small_die, est.fixed + int(math.ceil(h_col)), one, sram,
                f": {opts.slots} of one FFN column of {layer.name}", where,
            )  # fmt: skip
        if opts.slices is not None:
            if opts.slices > layer.ffn:
                raise StrategyError(
                    f"option slices={opts.slices}: {layer.name} has only {layer.ffn} FFN columns",
                    "--strategy",
                )
            if opts.slices < count:
                raise ScheduleError(
                    f"does not fit SRAM: option slices={opts.slices} makes slices of {layer.name} "
                    f"too large for {opts.slots} slots in the {sram - est.fixed} of {sram} bytes "
                    f"activations leave (needs >= {count})",
                    where,
                )
            count = opts.slices
        layout = SliceLayout.even(layer.name, layer.ffn, count)
        shared_layout, shared_bytes = None, []
        fs = layer.shared_ffn if layer.has_shared else 0
        if fs:
            s_col = 3 * layer.hidden * e
            s_extra = layer.hidden * e if layer.has("sh_router") else 0
            s_h_col = est.h_tokens * 2 * acc
            s_count = _fewest_slices_in(fs, s_col, s_extra, s_h_col, sram - est.fixed, opts.slots)
            if s_count is None:
                one = opts.slots * int(math.ceil(s_col + s_extra))
                raise _fit_error(
                    small_die, est.fixed + int(math.ceil(s_h_col)), one, sram,
                    f": {opts.slots} of one shared-expert column of {layer.name}", where,
                )  # fmt: skip
            shared_layout = SliceLayout.even(layer.name, fs, s_count, shared=True)
            shared_bytes = _shared_slice_bytes(layer, shared_layout, dtype)
        decl = MoEDecl(
            layer.name, layer.num_experts, layer.top_k, layer.hidden, layer.ffn, tokens,
            op.inputs[0].name if op.inputs[0] is not None else "", op.outputs[0].name,
            shared_ffn=fs, gated=layer.gated, dtype=dtype,
        )  # fmt: skip
        plans.append(
            LayerPlan(
                layer,
                decl,
                layout,
                _slice_bytes(layer, layout, dtype),
                shared_layout,
                shared_bytes,
                activations=est,
            )  # fmt: skip
        )
    slot = max(max(p.slice_bytes + p.shared_slice_bytes) for p in plans) if plans else 1
    return plans, slot


# --- dense islands -----------------------------------------------------------------------------
def _weight_bytes(w: Weight, dtype: str) -> int:
    if w.type.dtype in ("f64", "f32", "f16", "bf16"):
        return int(math.ceil(w.type.numel * _elem(dtype)))
    return int(math.ceil(w.type.numel * DTYPE_BYTES[w.type.dtype]))


def op_cost(op: Op, shapes: Mapping[str, Size], dtype: str) -> tuple[int, int]:
    """Estimated (FLOPs, DRAM bytes) of one dense op (see the module docstring)."""
    ins = op.inputs
    if (
        op.kind in ("MatMul", "Gemm")
        and len(ins) >= 2
        and ins[0] is not None
        and ins[1] is not None
    ):
        a, b = ins[0], ins[1]
        if b.weight is not None and len(b.weight.type.shape) >= 2:
            shape = b.weight.type.shape
            k, n = int(shape[-2]), int(shape[-1])
            if op.kind == "Gemm" and op.attrs.get("transB", 0):
                k, n = n, k
            rows = (numel(a, shapes) or 0) // max(k, 1)
            nbytes = sum(
                _weight_bytes(v.weight, dtype) for v in ins[1:] if v is not None and v.weight
            )
            return 2 * rows * k * n, nbytes
        a_size = shapes.get(a.name)
        if a_size is not None and a_size[1]:
            out = numel(op.outputs[0], shapes) or 0
            return 2 * out * a_size[1], 0
        return 0, 0
    if op.kind == "Gather" and ins and ins[0] is not None and ins[0].weight is not None:
        table = ins[0].weight
        if int(op.attrs.get("axis", 0)) == 0 and table.type.shape and len(ins) > 1:
            rows = numel(ins[1], shapes) or 0
            row_bytes = _weight_bytes(table, dtype) // max(int(table.type.shape[0]), 1)
            return 0, rows * row_bytes
        return 0, 0
    if op.kind in _DATA_MOVEMENT:
        return 0, 0
    flops = sum(numel(v, shapes) or 0 for v in op.outputs)
    nbytes = sum(_weight_bytes(v.weight, dtype) for v in ins if v is not None and v.weight)
    return flops, nbytes


def _islands(
    module: Module, plans: list[LayerPlan], dims: Mapping[str, int], tokens: int, dtype: str
) -> list[IslandDecl]:
    segments: list[list[Op]] = [[]]
    for op in module.ops:
        if op.is_moe:
            segments.append([])
        else:
            segments[-1].append(op)
    shapes = value_sizes(module, dims)
    out = []
    for i, ops in enumerate(segments):
        flops = nbytes = 0
        for op in ops:
            f, b = op_cost(op, shapes, dtype)
            flops, nbytes = flops + f, nbytes + b
        if i < len(plans):  # the router of the layer this island feeds
            layer = plans[i].layer
            flops += 2 * tokens * layer.hidden * layer.num_experts
            router = [layer.weights[k] for k in ("router_w", "router_b") if layer.has(k)]
            nbytes += sum(_weight_bytes(w, plans[i].decl.dtype) for w in router)
        out.append(IslandDecl(f"island{i}", flops, nbytes))
    return out


def _share(total: int, n: int, i: int) -> int:
    base, extra = divmod(total, n)
    return base + (1 if i < extra else 0)


def _streams(target: Target, plans: list[LayerPlan], islands: list[IslandDecl]) -> list[DieStream]:
    n = target.num_dies
    events = 0
    body: list[tuple[str, object]] = []

    def barrier() -> None:
        nonlocal events
        if body and body[-1][0] == "barrier":
            return
        body.append(("barrier", f"sync{events}"))
        events += 1

    for i, isl in enumerate(islands):
        if isl.flops or isl.nbytes:
            body.append(("dense", isl))
        if i < len(plans):
            barrier()
            body.append(("moe", plans[i].name))
            barrier()
    streams = []
    for d in range(n):
        instrs: list = []
        for kind, item in body:
            if kind == "dense":
                assert isinstance(item, IslandDecl)
                instrs.append(Dense(item.name, _share(item.flops, n, d), _share(item.nbytes, n, d)))
            elif kind == "barrier":
                instrs += [Signal(str(item)), Wait(str(item), n)]
            else:
                instrs.append(MoE(str(item)))
        streams.append(DieStream(d, instrs))
    return streams


# --- the common part ---------------------------------------------------------------------------
def prepare(
    module: Module,
    target_ref: TargetRef,
    opts: LoweringOptions,
    raw_options: Mapping[str, str],
    *,
    routing: RoutingTrace | None = None,
    tokens: int | None = None,
    dims: Mapping[str, int] | None = None,
    base_dir: str | None = None,
    name: str | None = None,
    activations: str = "routed",
) -> Lowering:
    """Declarations, layouts, slots, islands and streams of ``module`` on the target;
    ``activations`` is the strategy's entry of :data:`ACTIVATION_KINDS`."""
    where = name or module.name
    target = load_target(target_ref.spec, dict(target_ref.overrides), base_dir=base_dir)
    ops = module.moe_ops()
    if not ops:
        raise ModelError("model has no MoE layer to lower", where)
    n_tokens, resolved = _tokens(module, ops, dims, tokens, routing, where)
    if routing is not None:
        layers = [(op.attrs["layer"].num_experts, op.attrs["layer"].top_k) for op in ops]
        validate(routing, layers, n_tokens, num_dies=target.num_dies, where="--routing")
    home = home_tokens(n_tokens, target.num_dies, routing)
    plans, slot_bytes = _plan_layers(ops, target, opts, n_tokens, where, activations, home)
    acts = max(p.activation_bytes() for p in plans)
    for die in target.dies:
        if opts.slots * slot_bytes + acts > die.sram_bytes:
            raise _fit_error(die.id, acts, opts.slots * slot_bytes, die.sram_bytes, "", where)
    for i, plan in enumerate(plans):
        layer_routing = routing.layers[i] if routing is not None else None
        plan.resident = layer_residency(plan.layer, opts.resident, layer_routing)
        if plan.resident is not None and target.host is None:
            raise StrategyError(
                f"{plan.name} offloads {plan.resident.count(0)} experts to host memory, but "
                f"target {target.name} has no host tier (add one with --set host_gbps=...)",
                "--strategy",
            )
    islands = _islands(module, plans, resolved, n_tokens, plans[0].decl.dtype)
    program = Program(
        name=where,
        target=target_ref,
        layers=[p.decl for p in plans],
        layouts=[lay for p in plans for lay in (p.layout, p.shared_layout) if lay is not None],
        slots=[SlotPool(d.id, opts.slots, slot_bytes) for d in target.dies],
        islands=islands,
        streams=_streams(target, plans, islands),
    )
    return Lowering(module, target, program, plans, opts, dict(raw_options), routing, resolved)
