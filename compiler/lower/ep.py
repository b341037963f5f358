"""EP: expert parallelism. Whole experts live on dies; tokens travel to their experts and back.

Compile time decides the placement (the die of every expert) and where each expert's weights sit
in DRAM. The static part is the common one: dense islands split evenly over the dies, barriers,
``moe L`` placeholders. At run time (``backends/interp/expand/ep.py``), for every expert with
routed tokens, its die streams the expert's micro-slices from that channel through its SRAM
slots, the tokens' activations are sent from their home dies (an ``x`` block), computed slice by
slice (gemm, act, accum) and the outputs sent back (a ``y`` block) and summed on the home die.

**Channels** (option ``channels``). A fair EP baseline balances its DRAM traffic over the
channels, as Hydra, EPLB and TP do: with ``balanced`` (default) the expected bytes per iteration
of every expert (its size times the chance a batch of the layer's tokens routes it at least one
token under uniform routing, ``1 - (1 - k/E)**T``: EP knows no popularity) and of every shared
slice (loaded once per iteration, certainly) are spread over the channels in proportion to their
bandwidth, each item on the nearest channel that stays within its share
(:func:`~moec.compiler.lower.placement.assign_channels`; ties: fewer hops, lower id). With
``nearest`` every expert sits on the channel nearest its die (ties: lower id): on ``fsedp-3x3``
(channels on the 4 corner dies only) that puts the weights of 4 of the 9 dies on channel 0.

**Shared experts** (option ``shared``). A GPU EP deployment replicates the shared experts on
every device (data parallel): their weights are resident in HBM, so each device computing them
for its own tokens costs no extra traffic. On a package that streams weights from DRAM every
iteration, data parallelism loads the shared weights D times per iteration. DeepSeek-V3's
decoding deployment instead treats the shared expert as a routed expert that every token selects;
moec does that with the shared experts' columns cut over the dies so no die becomes the straggler:
with ``split`` (default) the shared micro-slices are re-cut into a multiple of the die count (as
TP does), die ``d`` owns a contiguous 1/D of them (``shared_owner``) and computes them for every
token, and the partial sums go home with the routed experts' outputs. Each shared slice is loaded
once per iteration, the same as TP and FSE-DP; the price is that every token's input reaches
every die (an all-gather along the target's route trees) and partial outputs are reduced home.
``replicated`` keeps the data-parallel form (every die loads all shared slices from its nearest
channel for its own tokens) to measure the difference.

Runtime policy::

    runtime moe0 {
      strategy ep
      param placement = [0, 1, 2, 3, 0, 1, 2, 3]    # die of each expert
      param channels = [0, 1, 2, 3, 0, 1, 2, 3]     # DRAM channel of each expert's weights
      param slice_bytes = [24576, 24576]            # bytes of micro-slice j (biases in slice 0)
      param shared_owner = [0, 1, 2, 3]             # with shared experts: die of shared slice j
      param shared_channels = [0, 1, 2, 3]          # and its DRAM channel
      param shared_slice_bytes = [12288, ...]
    }

Option ``placement``: ``round_robin`` (default, expert ``e`` on die ``e % D``), ``blocks``
(contiguous groups, die ``e * D // E``) or an explicit list of dies, ``placement=0/0/1/1/...``.
"""

from __future__ import annotations

import dataclasses

from moec.compiler.lower import register
from moec.compiler.lower.common import LayerPlan, Lowering, StrategyError
from moec.compiler.lower.placement import assign_channels
from moec.compiler.lower.tp import expected_experts, owners, slice_bytes, split_over_dies
from moec.ir.stream import SliceLayout, TensorDecl
from moec.ir.target import Target

PLACEMENTS = ("round_robin", "blocks")
CHANNEL_RULES = ("balanced", "nearest")
SHARED_MODES = ("split", "replicated")


def placement(spec: str, num_experts: int, num_dies: int) -> list[int]:
    """The die of each expert for a placement option value."""
    if spec == "round_robin":
        return [e % num_dies for e in range(num_experts)]
    if spec == "blocks":
        return [e * num_dies // num_experts for e in range(num_experts)]
    try:
        dies = [int(x) for x in spec.replace(" ", "").split("/")]
    except ValueError:
        raise StrategyError(
            f"option placement: expected {' or '.join(PLACEMENTS)} or a die list like 0/1/2/3, "
            f"found {spec!r}",
            "--strategy",
        ) from None
    if len(dies) != num_experts:
        raise StrategyError(
            f"option placement: {len(dies)} dies listed, the model has {num_experts} experts",
            "--strategy",
        )
    bad = [d for d in dies if not 0 <= d < num_dies]
    if bad:
        raise StrategyError(
            f"option placement: die {bad[0]} out of range, the target has dies 0..{num_dies - 1}",
            "--strategy",
        )
    return dies


def dispatch_params(lw: Lowering) -> dict[str, object]:
    """The policy's ``window`` and ``chunk`` (chunked token dispatch) when the options ask."""
    out: dict[str, object] = {}
    if lw.options.window is not None:
        out["window"] = lw.options.window
    if lw.options.chunk is not None:
        out["chunk"] = lw.options.chunk
    return out


def _choice(lw: Lowering, key: str, default: str, allowed: tuple[str, ...]) -> str:
    value = lw.raw_options.get(key, default)
    if value not in allowed:
        raise StrategyError(
            f"option {key}: expected {' or '.join(allowed)}, found {value!r}", "--strategy"
        )
    return value


def channels_for(rule: str, owners_: list[int], weights: list[float], target: Target) -> list[int]:
    """The DRAM channel of each item read by die ``owners_[i]`` (about ``weights[i]`` bytes per
    iteration): the nearest channel (``nearest``) or the bytes balanced over the channels
    (``balanced``, :func:`~moec.compiler.lower.placement.assign_channels`)."""
    if rule == "nearest":
        return [target.nearest_channel(d).id for d in owners_]
    return assign_channels(owners_, weights, target)


def split_shared(lw: Lowering, plan: LayerPlan) -> LayerPlan:
    """``plan`` with its shared experts re-cut into a multiple of the die count (when the columns
    allow; never finer than one column), the program's layouts updated to match."""
    if plan.shared_layout is None:
        return plan
    t = lw.target
    fs = plan.decl.shared_ffn
    m = split_over_dies(plan.shared_layout.count, fs, t.num_dies, len(t.channels))
    count = max(plan.shared_layout.count, min(m * t.num_dies, fs))
    layout = SliceLayout.even(plan.name, fs, count, shared=True)
    new = dataclasses.replace(
        plan,
        shared_layout=layout,
        shared_slice_bytes=slice_bytes(plan.layer, layout, plan.decl.dtype, shared=True),
    )
    lw.program.layouts = [
        layout if lay == plan.shared_layout else lay for lay in lw.program.layouts
    ]
    return new


def shared_shards(lw: Lowering, plan: LayerPlan, owner: list[int], channels: list[int]) -> None:
    """Declare each (die, channel) share of the shared experts, ``L.shared.d<die>`` (``.ch<c>``
    appended when the shares use more than one channel)."""
    lay, d = plan.shared_layout, plan.decl
    assert lay is not None
    many = len(set(channels)) > 1
    for die in sorted(set(owner)):
        for ch in sorted({channels[j] for j, o in enumerate(owner) if o == die}):
            js = [j for j, o in enumerate(owner) if o == die and channels[j] == ch]
            cols = sum(lay.width(j) for j in js)
            nbytes = sum(plan.shared_slice_bytes[j] for j in js)
            name = f"{d.name}.shared.d{die}" + (f".ch{ch}" if many else "")
            lw.program.tensors.append(
                TensorDecl(name, d.dtype, (3 if d.gated else 2, d.hidden, cols), ch, nbytes)
            )


def place_weights(
    lw: Lowering, plan: LayerPlan, dies: list[int], expected: list[float], *,
    rule: str = "balanced", shared: str = "split",
) -> tuple[LayerPlan, dict[str, object]]:  # fmt: skip
    """Where an EP-style layer's weights live: every expert on die ``dies[e]`` (``expected[e]``
    bytes read per iteration), the shared experts split over the dies (``shared="split"``) or
    replicated; channels by ``rule`` over experts and shared slices together. Declares the
    tensors and returns the (possibly re-cut) plan and the policy's ``placement``, ``channels``
    and shared-expert parameters."""
    t, d = lw.target, plan.decl
    resident = plan.resident or [1] * d.experts
    items = [(dies[e], float(expected[e]) * resident[e]) for e in range(d.experts)]
    shared_owner: list[int] = []
    if plan.shared_layout is not None and shared == "split":
        plan = split_shared(lw, plan)
        assert plan.shared_layout is not None
        shared_owner = owners(plan.shared_layout.count, t.num_dies)
        items += [(o, float(plan.shared_slice_bytes[j])) for j, o in enumerate(shared_owner)]
    flat = channels_for(rule, [o for o, _ in items], [w for _, w in items], t)
    channels, shared_channels = flat[: d.experts], flat[d.experts :]
    lw.expert_tensors(plan, channels)
    params: dict[str, object] = {"placement": list(dies), "channels": list(channels)}
    if shared_owner:
        shared_shards(lw, plan, shared_owner, shared_channels)
        params["shared_owner"] = shared_owner
        params["shared_channels"] = shared_channels
    elif plan.shared_layout is not None:
        lw.shared_tensors(plan)
        params["shared"] = "replicated"
    return plan, params


@register(
    "ep",
    options={
        "placement": "round_robin (default), blocks, or a die list 0/1/...",
        "channels": "DRAM channel of each expert: balanced (default: expected bytes spread over "
        "the channels, nearest first) or nearest (the channel nearest its die)",
        "shared": "shared experts: split (default: columns cut over the dies, loaded once per "
        "iteration) or replicated (every die loads them for its own tokens)",
        "window": "chunked token dispatch: an integer K >= 1, at most K chunks (each die's next "
        "expert) in flight, tokens sent just before and outputs returned right after "
        "(default: all tokens sent before the first expert)",
        "chunk": "with window: at most N tokens per chunk, an expert with more computed in "
        "several chunks (its slices streamed once per chunk)",
    },
)
def lower_ep(lw: Lowering) -> None:
    """Expert parallelism: whole experts on dies, tokens sent to them and results returned."""
    t = lw.target
    spec = lw.raw_options.get("placement", "round_robin")
    rule = _choice(lw, "channels", "balanced", CHANNEL_RULES)
    shared = _choice(lw, "shared", "split", SHARED_MODES)
    plans = []
    for plan in lw.plans:
        d = plan.decl
        dies = placement(spec, d.experts, t.num_dies)
        p_active = expected_experts(d.experts, d.top_k, d.tokens) / d.experts
        expected = [plan.expert_bytes * p_active] * d.experts
        plan, params = place_weights(lw, plan, dies, expected, rule=rule, shared=shared)
        params.update(dispatch_params(lw))
        lw.policy(plan, "ep", params)
        plans.append(plan)
    lw.plans = plans
