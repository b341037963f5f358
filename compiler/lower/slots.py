"""Slot planning: each MoE layer's precision, micro-slices and the SRAM slot size.

Each die gets ``slots`` slots (default 4) of one size, and each layer's experts are cut into the
fewest even slices whose largest fits a slot in the room the layer's activations leave
(``slots x slot bytes + reserve <= SRAM``); the slot size is the largest slice of any layer.
The reserve (:func:`plan_layers`) lies between two estimates of the activations, see
:mod:`moec.ir.activations`: :func:`predicted_activations`, the most any routing can put on a
die for the strategy's :data:`ACTIVATION_KINDS` entry (a program sized beside it fits whatever
routing it runs), and :func:`expected_activations`, uniform routing's (the run-time limit then
decides). The slots get the room the cut the lowering wants anyway needs (the options' count,
else the cost model's), as far as the expectation leaves it; SRAM beyond that goes to the
reserve, up to the any-routing bound, and beyond that to the slots again:
``room = max(SRAM - any-routing, min(SRAM - expectation, wanted))``, which never shrinks as
SRAM grows (switching to the any-routing reserve wherever it first left room for slots made
more SRAM force finer cuts: Phi-3.5-MoE, 1024 tokens on fsedp-3x3, the fewest slices that fit
went from 39 at 24 MiB to 800 at 32 MiB, and EP from 78.8 to 309.2 ms). Whole-expert strategies (EP, Hydra, EPLB, TP)
cut no coarser than the count :func:`~moec.compiler.lower.slicing.preferred_slices` estimates
fastest, which does not depend on SRAM (so more SRAM never coarsens a cut past it). When even one-column slices do not fit,
:class:`ScheduleError` "does not fit SRAM: die d needs X bytes (activations A + slots S), has Y".
A layer's ``slice_bytes`` include its biases (``b_down`` and the shared gate ride with slice 0).
With chunked token dispatch (option ``window``) the activations are the window's instead
(:func:`window_activations`: home tokens plus the ``window`` largest chunks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from moec.compiler.lower.options import LoweringOptions, StrategyError
from moec.compiler.lower.slicing import expected_expert_tokens, preferred_slices
from moec.ir.activations import ACCUM_PRECISION, h_bytes, home_bytes, predicted_activation_bytes
from moec.ir.errors import ScheduleError
from moec.ir.graph import Op
from moec.ir.moe import MoELayer
from moec.ir.routing import LayerRouting, RoutingTrace
from moec.ir.stream import MoEDecl, SliceLayout
from moec.ir.target import PRECISION_BYTES, Target

#: Graph dtype -> program precision.
_PRECISION_OF = {"f64": "fp32", "f32": "fp32", "f16": "fp16", "bf16": "bf16", "i8": "int8",
                 "u8": "int8", "i4": "int4", "u4": "int4"}  # fmt: skip


def layer_precision(layer: MoELayer, override: str | None) -> str:
    """The program precision of a layer: the option, else its weights' dtype, else fp16."""
    if override is not None:
        return override
    w = layer.weights.get("w_up")
    if w is None or not w.present:
        return "fp16"  # shape-only: the deployment precision, not the file's container type
    return _PRECISION_OF.get(w.type.dtype, "fp32")


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


def _elem(dtype: str) -> float:
    return PRECISION_BYTES[dtype]


def slice_bytes(layer: MoELayer, layout: SliceLayout, dtype: str) -> list[int]:
    """Bytes of each routed-expert micro-slice of ``layout`` at ``dtype`` (``b_down`` in slice 0)."""
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


def shared_slice_bytes(layer: MoELayer, layout: SliceLayout, dtype: str) -> list[int]:
    """Bytes of each shared-expert micro-slice (the shared gate rides with slice 0)."""
    e = _elem(dtype)
    extra = layer.weights["sh_router"].type.numel * e if layer.has("sh_router") else 0
    return [
        int(
            math.ceil(
                layout.width(j) * layer.shared_mats * layer.hidden * e + (extra if j == 0 else 0)
            )
        )
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
    shared: bool, links_in: int | None = None,
) -> ActivationEstimate:  # fmt: skip
    """The most activations a die can hold besides slots, whatever the routing (the rules of
    :mod:`moec.ir.activations`): the program runs any routing of its ``tokens`` (a serving run
    routes every iteration differently), so slots are sized for the most loaded die.

    ``home``: tokens stay on their die, which holds its ``home`` tokens' ``x`` and ``y`` (the
    most any die has). ``routed`` and ``all``: a die holds each token of the batch at most once,
    as its own (``x`` and ``y``) or another die's (received ``x`` and partial ``y``), and every
    token can be on one die (all routed to its experts; under ``all`` every die holds every
    token); besides, ``recv y`` blocks land while they cross a link: a token's partial outputs
    reach a die from at most ``min(top_k, dies - 1)`` expert dies, or ``dies - 1`` when partial
    sums are reduced over the dies (``all``, or shared experts split over them), and, with
    ``links_in`` (the most links into a die), at most two blocks per link land at once (a link
    carries one block at a time; the previous one may still be in its latency), each of at most
    ``home`` rows (a ``y`` block carries tokens of one home die). ``h`` is bounded
    by the most tokens one slice's gemm can have: ``home`` under ``home``, every token otherwise
    (an expert chosen by the whole batch).
    """
    if kind not in ACTIVATION_KINDS:
        raise StrategyError(f"activation kind {kind!r}, expected one of {ACTIVATION_KINDS}")
    if kind == "home" or dies <= 1:
        fixed = predicted_activation_bytes(home=home, remote=0, hidden=hidden, dtype=dtype)
        return ActivationEstimate(fixed, home if kind == "home" else tokens)
    sources = dies - 1 if kind == "all" or shared else min(top_k, dies - 1)
    landing = tokens * sources
    if links_in is not None:
        landing = min(landing, 2 * links_in * home)
    fixed = predicted_activation_bytes(
        home=home, remote=tokens - home, hidden=hidden, dtype=dtype, landing=landing
    )
    return ActivationEstimate(fixed, tokens)


def expected_activations(
    kind: str, *, tokens: int, home: int, dies: int, top_k: int, hidden: int, dtype: str,
    shared: bool,
) -> ActivationEstimate:  # fmt: skip
    """The activations a die holds under uniform routing: ``home`` tokens plus the other dies'
    tokens it expects, ``(T - home) x (1 - (1 - 1/D) ** top_k)`` (all of them under ``all`` or
    with split shared experts). The least reserve :func:`plan_layers` takes, where the
    any-routing bound leaves the wanted cut no room: the program then fits the routings near
    uniform, and the interpreter's hard limit refuses a run that holds more
    (``--allow-overflow`` runs it)."""
    others = tokens - home
    if kind == "home":
        remote = 0.0
    elif kind == "all" or shared or dies <= 1:
        remote = float(others)
    else:
        remote = others * (1.0 - (1.0 - 1.0 / dies) ** top_k)
    fixed = predicted_activation_bytes(home=home, remote=remote, hidden=hidden, dtype=dtype)
    return ActivationEstimate(fixed, home if kind == "home" else tokens)


def chunk_sizes(tokens: int, cap: int) -> list[int]:
    """The token counts of the chunks an expert's ``tokens`` are cut into, at most ``cap`` each
    (as even as possible, the larger first: :func:`numpy.array_split`'s cut)."""
    n = max(1, -(-tokens // cap))
    return [tokens // n + (1 if i < tokens % n else 0) for i in range(n)]


def window_chunks(
    ops: list[Op], routing: RoutingTrace | None, tokens: int, cap: int | None
) -> list[int]:
    """The chunk sizes (tokens, largest first) chunked dispatch sizes every layer's slots for:
    per layer, its experts' tokens (the routing's, else the uniform expectation), the shared
    experts as one chunk of every token, each cut at ``cap``; elementwise the most over the
    layers, so one slot size fits every layer."""
    worst: list[int] = []
    for i, op in enumerate(ops):
        layer: MoELayer = op.layer
        if routing is not None and i < len(routing.layers):
            chunks = [int(n) for n in routing.layers[i].expert_load()]
        else:
            chunks = expected_expert_tokens(tokens, layer.top_k, layer.num_experts)
        chunks += [tokens] if layer.has_shared else []
        if cap is not None:
            chunks = [p for n in chunks for p in chunk_sizes(n, cap)]
        chunks.sort(reverse=True)
        worst = [max(a, b) for a, b in zip(worst, chunks, strict=False)] + (
            worst[len(chunks) :] or chunks[len(worst) :]
        )
    return worst


def window_activations(
    *, tokens: int, home: int, chunks: list[int], window: int, hidden: int, dtype: str,
    links_in: int | None = None, relays: bool = False,
) -> ActivationEstimate:  # fmt: skip
    """A die's activations under chunked dispatch (TP's ``window``): its ``home`` tokens' ``x``
    and ``y``, plus the tokens of at most ``window`` chunks in flight (a chunk is one expert's
    tokens, ``chunks`` their counts; the shared experts are one chunk of every token), each
    with its ``x`` and partial ``y``, charged at the ``window`` largest chunks; ``recv y``
    blocks land as :func:`predicted_activations` bounds them, at most the window's rows. The
    expander holds a die to ``window`` chunks (a ``wait`` on its own chunk ``c - window``).
    With ``relays`` (EP, Hydra: tokens cross other dies on their way to an expert's die) a die
    may also hold as many rows it relays for other dies' chunks in flight: an estimate, the
    interpreter's hard limit decides."""
    biggest = sorted(chunks, reverse=True)[:window]
    remote = min(sum(biggest) * (2 if relays else 1), tokens * window)
    landing = remote if links_in is None else min(remote, 2 * links_in * home)
    fixed = predicted_activation_bytes(
        home=home, remote=remote, hidden=hidden, dtype=dtype, landing=landing
    )
    return ActivationEstimate(fixed, max(biggest, default=0))


def home_tokens(tokens: int, dies: int, routing: RoutingTrace | None) -> int:
    """The most tokens any die is home to: from the routing trace, else contiguous blocks."""
    if routing is not None and routing.layers:
        return max(
            int(np.bincount(np.asarray(lr.home_die), minlength=dies).max()) for lr in routing.layers
        )
    return -(-tokens // max(dies, 1))


def fit_error(die: int, acts: int, slots: int, sram: int, what: str, where: str) -> ScheduleError:
    """The "does not fit SRAM" error of ``die``: activations plus slots against its SRAM."""
    return ScheduleError(
        f"does not fit SRAM: die {die} needs {acts + slots} bytes (activations {acts} + slots "
        f"{slots}{what}), has {sram}",
        where,
    )


def check_tokens_fit(layers: list[MoELayer], target: Target, tokens: int, where: str) -> None:
    """Reject, in microseconds, a token count no strategy can fit, before anything the size of
    the batch (a routing trace, a program) is made: some die is home to at least
    ``ceil(tokens / dies)`` tokens and holds their ``x`` and ``y`` (at the narrowest activation
    precision, fp16) besides its slots, whatever the strategy. :func:`plan_layers` makes the
    exact check later; this one only catches what it would reject anyway."""
    D = max(target.num_dies, 1)
    home = -(-tokens // D)
    sram = min(d.sram_bytes for d in target.dies)
    die = min(target.dies, key=lambda d: (d.sram_bytes, d.id)).id
    for layer in layers:
        need = home_bytes(home, layer.hidden, "fp16")
        if need > sram:
            raise ScheduleError(
                f"does not fit SRAM: die {die} needs at least {need} bytes for the activations "
                f"of its {home} home tokens of {tokens} in {layer.name}, has {sram}",
                where,
            )


def preferred_count(
    layer: MoELayer, target: Target, tokens: int, dtype: str, routing: LayerRouting | None
) -> int:  # fmt: skip
    """The cost model's slice count of a whole-expert strategy's ``layer`` at ``dtype``
    (:func:`~moec.compiler.lower.slicing.preferred_slices`), for the expert loads of
    ``routing`` (None: uniform routing of ``tokens``). It does not depend on SRAM: the lowering
    cuts no coarser than it, and finer only when SRAM forces it."""
    e = _elem(dtype)
    mats = 3 if layer.gated else 2
    col = mats * layer.hidden * e + e * (layer.has("b_gate") + layer.has("b_up"))
    if routing is not None:
        loads = [int(n) for n in routing.expert_load()]
    else:
        loads = expected_expert_tokens(tokens, layer.top_k, layer.num_experts)
    sh = (
        (tokens, layer.shared_ffn, layer.shared_mats * layer.hidden * e)
        if layer.has_shared
        else None
    )
    return preferred_slices(
        target, hidden=layer.hidden, ffn=layer.ffn, gated=layer.gated, precision=dtype,
        col_bytes=col, expert_tokens=loads, shared=sh,
    )  # fmt: skip


def shared_preferred_count(layer: MoELayer, target: Target, tokens: int, dtype: str) -> int:
    """The cost model's count of a whole-expert strategy's shared experts: each die computes
    its share of their columns for every token, so a multiple of the dies unless that exceeds
    their columns (independent of SRAM)."""
    D = max(target.num_dies, 1)
    fs = layer.shared_ffn
    per_die = preferred_slices(
        target, hidden=layer.hidden, ffn=-(-fs // D), gated=layer.shared_mats == 3,
        precision=dtype, col_bytes=layer.shared_mats * layer.hidden * _elem(dtype),
        expert_tokens=[tokens] * D,
    )  # fmt: skip
    return min(fs, per_die * D)


def _unforced_counts(
    layer: MoELayer, target: Target, opts: LoweringOptions, kind: str, tokens: int, dtype: str,
    routing: LayerRouting | None,
) -> tuple[int, int]:  # fmt: skip
    """The (routed, shared) slice counts the lowering takes when SRAM forces nothing: the
    options' counts, else the cost model's for a whole-expert strategy, else one slice (the
    fewest that fit: ``slices=fit``, FSE-DP before its own refinement). None depends on SRAM."""
    if opts.slices is not None:
        routed = opts.slices
    elif kind != "home" and not opts.fit_slices:
        routed = preferred_count(layer, target, tokens, dtype, routing)
    else:
        routed = 1
    if opts.shared_slices is not None:
        shared = opts.shared_slices
    elif kind != "home" and not opts.fit_slices and layer.has_shared:
        shared = shared_preferred_count(layer, target, tokens, dtype)
    else:
        shared = 1
    return routed, shared


def _room_for(
    ffn: int, count: int, col: float, extra: float, h_tokens: int, gated: bool,
    opts: LoweringOptions,
) -> int:  # fmt: skip
    """The bytes ``opts.slots`` slots of ``count`` even slices of ``ffn`` columns (``col``
    bytes per column, ``extra`` with the slice) and the widest slice's ``h`` need."""
    w = -(-ffn // max(1, min(count, ffn)))
    h_col = h_tokens * (2 if gated else 1) * _elem(ACCUM_PRECISION)
    return int(math.ceil(opts.slots * (w * col + extra) + w * h_col))


def plan_layers(
    ops: list[Op], target: Target, opts: LoweringOptions, tokens: int, where: str,
    kind: str = "routed", home: int | None = None, routing: RoutingTrace | None = None,
) -> tuple[list[LayerPlan], int]:  # fmt: skip
    """One :class:`LayerPlan` per MoE op (precision, slices, activations) and the slot bytes:
    the largest slice of any layer. ``kind`` is the strategy's :data:`ACTIVATION_KINDS` entry.
    A layer's reserve is the SRAM its slots' room leaves (module docstring): the any-routing
    bound where that leaves room for the cut :func:`_unforced_counts` names, else as much of
    it as does, no less than the uniform expectation (chunked dispatch: the window's)."""
    sram = min(d.sram_bytes for d in target.dies)
    small_die = min(target.dies, key=lambda d: (d.sram_bytes, d.id)).id
    D = target.num_dies
    home = -(-tokens // D) if home is None else home
    acc = _elem(ACCUM_PRECISION)
    links_in = max(len([lk for lk in target.links if lk.dst == d.id]) for d in target.dies)
    plans: list[LayerPlan] = []
    chunks = window_chunks(ops, routing, tokens, opts.chunk) if opts.window is not None else None
    for i, op in enumerate(ops):
        layer: MoELayer = op.layer
        dtype = layer_precision(layer, opts.dtype)
        table = layer.annotations.precision
        widest = [p for p in table if p in PRECISION_BYTES] if isinstance(table, list) else []
        if widest and max(_elem(p) for p in widest) > _elem(dtype):
            dtype = max(widest, key=_elem)  # slices fit the widest precision any expert streams at
        sizes = dict(
            tokens=tokens, home=home, dies=D, top_k=layer.top_k, hidden=layer.hidden,
            dtype=dtype, shared=layer.has_shared,
        )  # fmt: skip
        e = _elem(dtype)
        mats = 3 if layer.gated else 2
        col = mats * layer.hidden * e + e * (layer.has("b_gate") + layer.has("b_up"))
        extra = layer.hidden * e if layer.has("b_down") else 0
        fs = layer.shared_ffn if layer.has_shared else 0
        s_col = layer.shared_mats * layer.hidden * e
        s_extra = layer.weights["sh_router"].type.numel * e if layer.has("sh_router") else 0
        lr = routing.layers[i] if routing is not None and i < len(routing.layers) else None
        if chunks is not None:
            est = window_activations(
                tokens=tokens, home=home, chunks=chunks, window=opts.window,
                hidden=layer.hidden, dtype=dtype, links_in=links_in, relays=kind == "routed",
            )  # fmt: skip
        else:
            worst = predicted_activations(kind, links_in=links_in, **sizes)  # type: ignore[arg-type]
            expected = expected_activations(kind, **sizes)  # type: ignore[arg-type]
            wanted, s_wanted = _unforced_counts(layer, target, opts, kind, tokens, dtype, lr)
            need = _room_for(layer.ffn, wanted, col, extra, worst.h_tokens, layer.gated, opts)
            if fs:
                s_need = _room_for(fs, s_wanted, s_col, s_extra, worst.h_tokens, True, opts)
                need = max(need, s_need)
            room = max(sram - worst.fixed, min(sram - int(expected.fixed), need))
            est = ActivationEstimate(sram - room, worst.h_tokens)
        h_col = est.h_tokens * (2 if layer.gated else 1) * acc  # h per FFN column in flight
        count = _fewest_slices_in(layer.ffn, col, extra, h_col, sram - est.fixed, opts.slots)
        if count is None:
            one = opts.slots * int(math.ceil(col + extra))
            raise fit_error(
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
        elif kind != "home" and not opts.fit_slices:  # FSE-DP: its own (fsedp.auto_slices)
            count = max(count, preferred_count(layer, target, tokens, dtype, lr))
        layout = SliceLayout.even(layer.name, layer.ffn, count)
        shared_layout, shared_bytes = None, []
        if fs:
            s_h_col = est.h_tokens * 2 * acc
            s_count = _fewest_slices_in(fs, s_col, s_extra, s_h_col, sram - est.fixed, opts.slots)
            if s_count is None:
                one = opts.slots * int(math.ceil(s_col + s_extra))
                raise fit_error(
                    small_die, est.fixed + int(math.ceil(s_h_col)), one, sram,
                    f": {opts.slots} of one shared-expert column of {layer.name}", where,
                )  # fmt: skip
            if kind != "home" and not opts.fit_slices:  # per die share, also beside slices=N
                s_count = max(s_count, shared_preferred_count(layer, target, tokens, dtype))
            if opts.shared_slices is not None:
                if opts.shared_slices > fs:
                    raise StrategyError(
                        f"option shared_slices={opts.shared_slices}: the shared experts of "
                        f"{layer.name} have only {fs} FFN columns",
                        "--strategy",
                    )
                if opts.shared_slices < s_count:
                    raise ScheduleError(
                        f"does not fit SRAM: option shared_slices={opts.shared_slices} makes "
                        f"shared-expert slices of {layer.name} too large (needs >= {s_count})",
                        where,
                    )
                s_count = opts.shared_slices
            shared_layout = SliceLayout.even(layer.name, fs, s_count, shared=True)
            shared_bytes = shared_slice_bytes(layer, shared_layout, dtype)
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
                slice_bytes(layer, layout, dtype),
                shared_layout,
                shared_bytes,
                activations=est,
            )  # fmt: skip
        )
    slot = max(max(p.slice_bytes + p.shared_slice_bytes) for p in plans) if plans else 1
    return plans, slot
