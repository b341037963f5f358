"""Hydra: popularity-aware expert parallelism. EP with experts placed so per-die load balances.

Compile time reads each layer's routed-token count per expert (option ``calibration=FILE``: a
trace of a calibration run, any token count; else the ``--routing`` trace, the routed batch
itself) and places whole experts by greedy longest-processing-time
(:func:`~moec.compiler.lower.placement.lpt_placement`): the hottest expert goes to the
least-loaded die, then the next, with at most ``ceil(E / D)`` experts per die by default so expert
memory stays as even as round-robin EP. Each expert's weights go to a DRAM channel near its die,
spreading the expected bytes per iteration over the channels
(:func:`~moec.compiler.lower.placement.assign_channels`). Without any routing every expert counts
as equally loaded (the placement degenerates to an even spread; ``load_source = "uniform"``).

Option ``split=N`` (default 0) makes a hybrid within the layer: the ``N`` hottest experts by
those loads (ties: lower id; never an expert with no tokens) are cut over all dies TP-style
(policy ``split``, the expanded EP then gives each die slice ``j * D // S`` of them for all their
tokens) and the rest are placed whole by LPT as above; the routed layout is re-cut to a multiple
of the die count so a split expert divides evenly. Hot experts then no longer make their die the
straggler, while cold ones keep EP's point-to-point traffic.

Run time is EP's (``backends/interp/expand/hydra.py`` delegates to the EP expander): tokens travel
to the die of their expert and the results come back.

    runtime moe0 {
      strategy hydra
      param placement = [0, 0, 1, 1]          # die of each expert, from the loads below (2 dies)
      param channels = [0, 0, 1, 1]
      param load = [8, 1, 5, 4]               # routed tokens per expert at compile time
      param load_source = "trace"
      param slice_bytes = [...]
    }
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

from moec.compiler.lower import register
from moec.compiler.lower.common import LayerPlan, Lowering, StrategyError
from moec.compiler.lower.ep import dispatch_params
from moec.compiler.lower.placement import activation_probability, assign_channels, lpt_placement
from moec.compiler.lower.tp import slice_bytes
from moec.ir.routing import RoutingTrace, load_trace, validate
from moec.ir.stream import SliceLayout, TensorDecl


def expected_bytes(
    lw: Lowering, index: int, plan: LayerPlan, load: list[int], source: str
) -> list[float]:
    """Bytes each expert is expected to pull from DRAM per iteration: its size times the chance
    it is routed a token in a batch of the layer's tokens (certain for the routed batch itself,
    estimated from a calibration sample, every expert with uniform loads)."""
    if source == "trace":
        p = [1.0 if v > 0 else 0.0 for v in load]
    elif source == "calibration":
        sample = calibration_trace(lw.raw_options["calibration"], lw).layers[index].tokens
        p = activation_probability(load, sample, plan.decl.tokens)
    else:
        p = [1.0] * len(load)
    return [plan.expert_bytes * x for x in p]


def layer_loads(lw: Lowering, index: int, plan: LayerPlan) -> tuple[list[int], str]:
    """Routed tokens per expert of layer ``index`` and where they come from: the trace named by
    option ``calibration`` (``calibration``), else the compile-time routing (``trace``), else all
    ones (``uniform``)."""
    path = lw.raw_options.get("calibration")
    if path:
        trace = calibration_trace(path, lw)
        return [int(v) for v in trace.layers[index].expert_load()], "calibration"
    if lw.routing is None:
        return [1] * plan.decl.experts, "uniform"
    return [int(v) for v in lw.routing.layers[index].expert_load()], "trace"


def calibration_trace(path: str, lw: Lowering) -> RoutingTrace:
    """The calibration trace at ``path`` (any token count), cut to the program's MoE layers and
    checked against their experts and top-k."""
    try:
        st = os.stat(path)
    except OSError:
        raise StrategyError("option calibration: routing trace not found", path) from None
    shapes = tuple((p.decl.experts, p.decl.top_k) for p in lw.plans)
    return _checked(path, st.st_mtime_ns, st.st_size, shapes)


@functools.lru_cache(maxsize=8)
def _checked(
    path: str, mtime_ns: int, size: int, shapes: tuple[tuple[int, int], ...]
) -> RoutingTrace:
    """The trace cut to ``shapes`` and validated, once per file version and program shape (a
    lowering asks for it twice per layer; validating every layer each time was quadratic)."""
    trace = _load_cached(path, mtime_ns, size)
    if len(trace.layers) < len(shapes):
        raise StrategyError(
            f"option calibration: the trace has {len(trace.layers)} MoE layers, the program "
            f"{len(shapes)}",
            path,
        )
    trace = trace.head(len(shapes))
    validate(trace, list(shapes), where=path)
    return trace


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> RoutingTrace:
    return load_trace(path)


def expert_cap(spec: str, num_experts: int, num_dies: int) -> int | None:
    """The ``cap`` option: ``even`` (``ceil(E / D)`` experts per die), ``none``, or an integer."""
    if spec == "even":
        return math.ceil(num_experts / num_dies)
    if spec == "none":
        return None
    try:
        cap = int(spec)
    except ValueError:
        cap = 0
    if cap < 1:
        raise StrategyError(
            f"option cap: expected even, none or an integer >= 1, found {spec!r}", "--strategy"
        )
    if cap * num_dies < num_experts:
        raise StrategyError(
            f"option cap={cap}: {num_experts} experts do not fit {num_dies} dies", "--strategy"
        )
    return cap


def split_count(spec: str, num_experts: int) -> int:
    """The ``split`` option: how many of the hottest experts to cut over the dies."""
    try:
        n = int(spec)
    except ValueError:
        n = -1
    if not 0 <= n <= num_experts:
        raise StrategyError(
            f"option split: expected an integer in 0..{num_experts} (experts to cut over the "
            f"dies), found {spec!r}",
            "--strategy",
        )
    return n


def hottest(load: list[int], n: int) -> list[int]:
    """The ``n`` experts with the most routed tokens (ties: lower id; none with no token),
    ascending."""
    ranked = sorted(range(len(load)), key=lambda e: (-load[e], e))
    return sorted(e for e in ranked[:n] if load[e] > 0)


def cut_over_dies(lw: Lowering, plan: LayerPlan) -> LayerPlan:
    """``plan`` with its routed layout re-cut to a multiple of the die count (never finer than
    one column), the program's layouts updated to match."""
    D, ffn = lw.target.num_dies, plan.decl.ffn
    count = min(math.ceil(plan.layout.count / D) * D, ffn)
    if count == plan.layout.count:
        return plan
    layout = SliceLayout.even(plan.name, ffn, count)
    lw.program.layouts = [layout if lay == plan.layout else lay for lay in lw.program.layouts]
    return dataclasses.replace(
        plan, layout=layout, slice_bytes=slice_bytes(plan.layer, layout, plan.decl.dtype)
    )


def split_tensors(lw: Lowering, plan: LayerPlan, e: int, channels: list[int]) -> None:
    """Declare split expert ``e`` as one share per DRAM channel (``L.e<e>.ch<c>``: the
    micro-slices ``channels`` puts there)."""
    d = plan.decl
    for ch in sorted(set(channels)):
        js = [j for j, c in enumerate(channels) if c == ch]
        cols = sum(plan.layout.width(j) for j in js)
        lw.program.tensors.append(
            TensorDecl(
                f"{d.name}.e{e}.ch{ch}",
                d.dtype,
                (3 if d.gated else 2, d.hidden, cols),
                ch,
                sum(plan.slice_bytes[j] for j in js),
            )  # fmt: skip
        )


@register(
    "hydra",
    options={
        "cap": "experts per die at most: even (default, ceil(E/D)), none, or an integer",
        "calibration": "routing trace file whose expert loads decide the placement "
        "(default: the --routing trace)",
        "split": "the N hottest experts cut over all dies, TP-style (default 0: none)",
        "window": "chunked token dispatch: an integer K >= 1, at most K chunks (each die's next "
        "expert) in flight, tokens sent just before and outputs returned right after "
        "(default: all tokens sent before the first expert)",
        "chunk": "with window: at most N tokens per chunk, an expert with more computed in "
        "several chunks (its slices streamed once per chunk)",
    },
)
def lower_hydra(lw: Lowering) -> None:
    """Popularity-aware EP: whole experts placed by routed-token counts (greedy LPT), the
    ``split`` hottest cut over the dies."""
    t = lw.target
    spec = lw.raw_options.get("cap", "even")
    plans = []
    for i, plan in enumerate(lw.plans):
        load, source = layer_loads(lw, i, plan)
        split = hottest(load, split_count(lw.raw_options.get("split", "0"), plan.decl.experts))
        if plan.resident is not None:  # an offloaded expert streams from the host: keep it whole
            split = [e for e in split if plan.resident[e]]
        if split and lw.options.window is not None:
            raise StrategyError(
                "option window (chunked dispatch) does not combine with split experts",
                "--strategy",
            )
        if split:
            plan = cut_over_dies(lw, plan)
        cap = expert_cap(spec, plan.decl.experts, t.num_dies)
        whole = [0 if e in split else v for e, v in enumerate(load)]
        dies = lpt_placement(whole, t.num_dies, max_per_die=cap)
        expected = expected_bytes(lw, i, plan, load, source)
        owner = [j * t.num_dies // plan.layout.count for j in range(plan.layout.count)]
        hot = sum(expected[e] for e in split) / plan.expert_bytes if split else 0.0
        weights = [0.0 if e in split else w for e, w in enumerate(expected)]
        weights += [b * hot for b in plan.slice_bytes] if split else []
        flat = assign_channels(dies + (owner if split else []), weights, t)
        channels, split_channels = flat[: plan.decl.experts], flat[plan.decl.experts :]
        for e, ch in enumerate(channels):
            if e in split:
                split_tensors(lw, plan, e, split_channels)
            else:
                lw.expert_tensor(plan, e, ch)
        lw.shared_tensors(plan)
        params: dict[str, object] = {"placement": dies, "channels": channels}
        if split:
            params["split"] = split
            params["split_channels"] = split_channels
        params.update({"load": load, "load_source": source})
        params.update(dispatch_params(lw))
        lw.policy(plan, "hydra", params)
        plans.append(plan)
    lw.plans = plans
