"""TP: tensor parallelism. Every expert is split over all dies; partial sums are reduced.

Each expert's FFN columns are cut into ``m x D`` micro-slices (the fewest that fit a slot, rounded
up to a multiple of the die count ``D``), and die ``d`` owns slices ``d*m .. d*m+m-1``: 1/D of the
columns of W_gate/W_up and the same rows of W_down of *every* expert, and streams only those. Each
slice's weights live on a DRAM channel near its die, with the bytes spread over the channels
(:func:`~moec.compiler.lower.placement.assign_channels`: on the 2x2 package each die's own
channel; on 3x3, where 4 corner channels serve 9 dies, some slices of a die come from a second
channel); tensor ``L.e<e>.d<d>`` (``.ch<c>`` appended when a die's share spans channels).

Run time (``backends/interp/expand/tp.py``): every die needs every token, so each die's tokens
are broadcast (an ``x`` block forwarded along the target's routes); each die computes its slices
of every activated expert for that expert's tokens, accumulating a partial output for all tokens;
the partial outputs are then reduced to each token's home die (``y`` blocks summed along the
reverse routes). With shared experts, their columns are split over the dies the same way.
Option ``window=K`` (and ``chunk=N``) gathers and reduces the tokens one expert at a time, at
most ``K`` experts' tokens on a die at once (``backends/interp/expand/tp_chunked.py``); the
slots are then sized against that window (``slots.window_activations``), not every token.
Option ``order=balanced`` spreads each die's hot slices among its cold ones instead of streaming
them in ascending expert id (``param order``, ``backends/interp/expand/tp_order.py``).

    runtime moe0 {
      strategy tp
      param owner = [0, 1, 2, 3]          # die owning micro-slice j of every expert
      param channels = [0, 1, 2, 3]       # DRAM channel holding micro-slice j
      param slice_bytes = [6144, ...]
    }
"""

from __future__ import annotations

import dataclasses
import math

from moec.compiler.lower import register
from moec.compiler.lower.common import LayerPlan, Lowering
from moec.compiler.lower.options import StrategyError
from moec.compiler.lower.placement import assign_channels
from moec.ir.moe import MoELayer
from moec.ir.stream import MoEDecl, SliceLayout, TensorDecl
from moec.ir.stream.params import TP_ORDERS
from moec.ir.target import PRECISION_BYTES


def slice_bytes(
    layer: MoELayer, layout: SliceLayout, dtype: str, shared: bool = False
) -> list[int]:
    """Bytes of each micro-slice of ``layout`` (biases and the shared gate ride with slice 0)."""
    e = PRECISION_BYTES[dtype]
    if shared:
        col = layer.shared_mats * layer.hidden * e
        extra = layer.weights["sh_router"].type.numel * e if layer.has("sh_router") else 0
    else:
        mats = 3 if layer.gated else 2
        col = mats * layer.hidden * e + e * (layer.has("b_gate") + layer.has("b_up"))
        extra = layer.hidden * e if layer.has("b_down") else 0
    return [
        int(math.ceil(layout.width(j) * col + (extra if j == 0 else 0)))
        for j in range(layout.count)
    ]


def split_over_dies(count: int, columns: int, num_dies: int, channels: int = 1) -> int:
    """Slices per die: the fewest ``m`` with ``m * D >= count`` (each die gets the same number)
    and, when the columns allow, ``m * D`` a multiple of the channel count (so the slices can be
    spread evenly over the channels); never a slice narrower than one column."""
    m = max(1, math.ceil(count / num_dies))
    even = m
    while (even * num_dies) % max(channels, 1):
        even += 1
    if even * num_dies <= columns:
        return even
    while m > 1 and m * num_dies > columns:
        m -= 1
    return m


def _relayout(lw: Lowering, plan: LayerPlan) -> LayerPlan:
    """``plan`` with its layouts cut into a multiple of the die count (program updated too)."""
    D = lw.target.num_dies
    layer, dtype = plan.layer, plan.decl.dtype
    C = len(lw.target.channels)
    m = split_over_dies(plan.layout.count, plan.decl.ffn, D, C)
    count = min(m * D, plan.decl.ffn)
    layout = SliceLayout.even(plan.name, plan.decl.ffn, count)
    new = dataclasses.replace(plan, layout=layout, slice_bytes=slice_bytes(layer, layout, dtype))
    if plan.shared_layout is not None:
        fs = plan.decl.shared_ffn
        ms = split_over_dies(plan.shared_layout.count, fs, D, C)
        shared = SliceLayout.even(plan.name, fs, min(ms * D, fs), shared=True)
        new = dataclasses.replace(
            new, shared_layout=shared,
            shared_slice_bytes=slice_bytes(layer, shared, dtype, shared=True),
        )  # fmt: skip
    lw.program.layouts = [
        new.layout
        if lay == plan.layout
        else new.shared_layout
        if lay == plan.shared_layout
        else lay
        for lay in lw.program.layouts
    ]
    return new


def owners(count: int, num_dies: int) -> list[int]:
    """Die owning each of ``count`` slices: contiguous, as even as possible (die ``j*D//count``)."""
    return [j * num_dies // count for j in range(count)]


def _shares(
    owner: list[int], channels: list[int], layout: SliceLayout, nbytes: list[int], num_dies: int
) -> list[tuple[int, int, int, int]]:
    """Each (die, channel) share of an expert's slices, die by die and channel by channel:
    ``(die, channel, columns, bytes)`` (the same for every expert of a layer)."""
    out = []
    for die in range(num_dies):
        for ch in sorted({channels[j] for j, o in enumerate(owner) if o == die}):
            js = [j for j, o in enumerate(owner) if o == die and channels[j] == ch]
            cols = sum(layout.width(j) for j in js)
            out.append((die, ch, cols, sum(nbytes[j] for j in js)))
    return out


def _shards(
    lw: Lowering, d: MoEDecl, prefix: str, shares: list[tuple[int, int, int, int]],
    spread: bool, mats: int,
) -> None:  # fmt: skip
    """Declare each (die, channel) share (:func:`_shares`) of one expert (or of the shared
    experts); ``spread``: the slices use more than one channel (the names carry it)."""
    for die, ch, cols, total in shares:
        name = f"{prefix}.d{die}" + (f".ch{ch}" if spread else "")
        lw.program.tensors.append(TensorDecl(name, d.dtype, (mats, d.hidden, cols), ch, total))


def expected_experts(experts: int, top_k: int, tokens: int) -> float:
    """Experts a batch of ``tokens`` activates on average under uniform routing."""
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


@register(
    "tp",
    options={
        "window": "chunked token dispatch: an integer K >= 1, at most K experts' tokens on a die "
        "at once, each expert's tokens gathered just before its slices and reduced right after "
        "(default: every token on every die for the whole layer)",
        "chunk": "with window: at most N tokens per chunk, an expert with more computed in "
        "several chunks (its slices streamed once per chunk; default: one chunk per expert)",
        "order": "the order a die streams its slices in: natural (ascending expert id, default) "
        "or balanced (hot slices spread among cold ones against the die's compute backlog)",
    },
    activations="all",
)
def lower_tp(lw: Lowering) -> None:
    """Tensor parallelism: each die holds 1/D of every expert's columns; partial sums reduced."""
    t = lw.target
    order = lw.raw_options.get("order", "natural")
    if order not in TP_ORDERS:
        raise StrategyError(
            f"option order: expected one of {', '.join(TP_ORDERS)}, found {order!r}", "--strategy"
        )
    lw.plans = [_relayout(lw, plan) for plan in lw.plans]
    for plan in lw.plans:
        d = plan.decl
        owner = owners(plan.layout.count, t.num_dies)
        active = expected_experts(d.experts, d.top_k, d.tokens)
        items = [(o, plan.slice_bytes[j] * active) for j, o in enumerate(owner)]
        shared_owner: list[int] = []
        if plan.shared_layout is not None:
            shared_owner = owners(plan.shared_layout.count, t.num_dies)
            items += [(o, float(plan.shared_slice_bytes[j])) for j, o in enumerate(shared_owner)]
        flat = assign_channels([o for o, _ in items], [w for _, w in items], t)
        channels, shared_channels = flat[: len(owner)], flat[len(owner) :]
        mats = 3 if d.gated else 2
        shares = _shares(owner, channels, plan.layout, plan.slice_bytes, t.num_dies)
        spread = len(set(channels)) > 1
        for e in range(d.experts):
            _shards(lw, d, f"{d.name}.e{e}", shares, spread, mats)
        params: dict[str, object] = {"owner": owner, "channels": channels}
        if lw.options.window is not None:
            params["window"] = lw.options.window
        if lw.options.chunk is not None:
            params["chunk"] = lw.options.chunk
        if "order" in lw.raw_options:
            params["order"] = order
        if plan.shared_layout is not None:
            params["shared_owner"] = shared_owner
            params["shared_channels"] = shared_channels
            shared_shares = _shares(
                shared_owner, shared_channels, plan.shared_layout, plan.shared_slice_bytes,
                t.num_dies,
            )  # fmt: skip
            _shards(lw, d, f"{d.name}.shared", shared_shares, len(set(shared_channels)) > 1, mats)
        lw.policy(plan, "tp", params)
