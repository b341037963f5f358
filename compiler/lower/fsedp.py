"""FSE-DP, expert streaming (arXiv 2603.27624): tokens stay home, expert micro-slices travel.

Compile time decides what does not depend on routing:

* the **trajectory**: a Hamiltonian cycle of the dies (:mod:`.trajectory`, ``cycle=spiral``
  by default or ``rowmajor``) along which every micro-slice moves; a mesh without one (3x3) gets
  a Hamiltonian path that slices walk there and back, which needs ``slots >= 3``;
* the **micro-slice count** (``slices=auto``): the finest cut whose one-hop transfer is hidden
  by the slice's compute on a die holding an average share of an expert's tokens (at most
  :data:`MAX_AUTO_SLICES`), but never fewer slices than SRAM demands (``slots`` slots of one
  slice per die); slot size then shrinks to the largest slice, which is where FSE-DP's on-chip
  memory saving comes from;
* **where weights live**: expert ``e``'s tensor ``L.e<e>`` on channel ``e % C``; its slice j
  is read from channel ``(e + j) % C``, interleaved so every expert streams from all channels;
* the **rules** and their options, into the layer's runtime policy.

The runtime half (``backends/interp/expand/fsedp.py``) plays the rules once routing is known.

Runtime policy (2x2 package)::

    runtime moe0 {
      strategy fsedp
      param slice_bytes = [49152, 49152]
      param trajectory = [0, 1, 3, 2]
      param closed = true
      param cycle = "spiral"
      param channels = [0, 1, 2, 3, 0, 1, 2, 3]
      param rules = "r1-r4"
      param order = "natural"
      param r5 = false
      param slack = 0.0
    }

Named variants (the paper's ablation ladder, each adding one step to the one before):
``fsedp-naive`` (no streaming: every die loads what it needs), ``fsedp`` (rules R1-R4, natural
order), ``fsedp-paired`` (+ paired load order), ``fsedp-r5`` (+ R5), ``fsedp-buf`` (+ 20% token
buffering). Every option can still be given explicitly: ``fsedp-paired{slack=0.1}``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from moec.compiler.lower import register
from moec.compiler.lower.common import LayerPlan, Lowering, StrategyError
from moec.compiler.lower.slots import plan_layers, shared_slice_bytes, slice_bytes
from moec.compiler.lower.trajectory import CYCLE_KINDS, Cycle, trajectory_cycle
from moec.ir.cost import GB, bytes_per_element, slice_compute_time, transfer_time
from moec.ir.errors import ScheduleError
from moec.ir.stream import SliceLayout, SlotPool
from moec.ir.stream.params import FSEDP_ORDERS, FSEDP_RULES
from moec.ir.target import PRECISION_BYTES, Target

#: Upper bound of the automatic slice count: finer slices hide hops no better once compute
#: already covers them, and every slice is one more trip (instructions, events) per die.
MAX_AUTO_SLICES = 32
#: Narrowest automatic slice, in FFN columns: below this the per-slice DRAM and link latencies
#: and the MAC array's fill stop being negligible against the slice's transfer and compute.
MIN_AUTO_WIDTH = 64
RULES = FSEDP_RULES  # the runtime policy's values (moec.ir.stream.params)
ORDERS = FSEDP_ORDERS

OPTIONS: dict[str, str] = {
    "cycle": "trajectory order: spiral (default) or rowmajor",
    "rules": "r1-r4 (default) or naive (no streaming: every die loads what it needs)",
    "order": "central load order: natural (default), paired (hottest, coldest, ...) or balanced",
    "r5": "on/off: DRAM pushes each slice to the needed die with most free slots",
    "slack": "token buffering: defer the coldest experts' pairs, up to slack x tokens (0..1)",
}

#: Named variants: defaults each one sets (explicit options override them).
VARIANTS: dict[str, dict[str, str]] = {
    "fsedp-naive": {"rules": "naive"},
    "fsedp": {},
    "fsedp-paired": {"order": "paired"},
    "fsedp-r5": {"order": "paired", "r5": "on"},
    "fsedp-buf": {"order": "paired", "r5": "on", "slack": "0.2"},
}


def _flag(raw: str, key: str) -> bool:
    v = raw.strip().lower()
    if v in ("on", "true", "1", "yes"):
        return True
    if v in ("off", "false", "0", "no"):
        return False
    raise StrategyError(f"option {key}: expected on or off, found {raw!r}", "--strategy")


def _pick(opts: Mapping[str, str], key: str, allowed: tuple[str, ...]) -> str:
    v = opts[key]
    if v not in allowed:
        raise StrategyError(
            f"option {key}: expected one of {', '.join(allowed)}, found {v!r}", "--strategy"
        )
    return v


def _slack(raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise StrategyError(f"option slack: expected a number in 0..1, found {raw!r}", "--strategy")
    return v


def expected_tokens_per_die(tokens: int, top_k: int, experts: int, dies: int) -> float:
    """Tokens an activated expert has on each die it visits, on average, for uniform routing.

    An expert gets ``tokens x top_k / experts`` pairs; spread over the ``dies`` at random they
    touch ``dies x (1 - (1 - 1/dies) ** pairs)`` dies.

    >>> round(expected_tokens_per_die(64, 2, 16, 4), 3)
    2.223
    """
    pairs = tokens * top_k / experts
    touched = dies * (1.0 - (1.0 - 1.0 / dies) ** pairs) if dies > 1 else 1.0
    return max(1.0, pairs / max(touched, 1e-12))


def auto_slices(
    target: Target, cycle: Cycle, *, hidden: int, ffn: int, mats: int, precision: str,
    tokens_per_die: float, minimum: int,
) -> int:  # fmt: skip
    """The slice count for ``slices=auto`` (see the module docstring).

    Per FFN column a slice costs ``2 n mats d / F`` seconds of compute (n tokens, d hidden, F
    FLOP/s of a die) and ``mats d b / B`` seconds of one hop (b bytes per element, B link GB/s),
    plus the link latency per hop. When compute per column exceeds the hop per column, slices of
    ``w >= latency / (compute - hop)`` columns hide the hop; otherwise no width hides it (the
    layer is bound by DRAM or links, not by the hop latency) and any width serves. The count is
    the finest such cut, with slices of at least :data:`MIN_AUTO_WIDTH` columns and at most
    :data:`MAX_AUTO_SLICES` of them: finer slices fill and drain the pipeline sooner and need
    smaller SRAM slots. Never below ``minimum`` (the fewest that fit a slot) nor above ``ffn``.
    """
    d0 = cycle.order[0]
    d1 = cycle.order[1] if len(cycle.order) > 1 else d0
    if not target.ideal:
        return _calibrated_slices(
            target, d0, d1, hidden=hidden, ffn=ffn, mats=mats, precision=precision,
            tokens=max(1, math.ceil(tokens_per_die)), minimum=minimum,
        )  # fmt: skip
    flops = target.die(d0).flops_per_s(precision)
    per_col_compute = 2.0 * tokens_per_die * mats * hidden / flops
    if d0 != d1:
        lk = target.link(d0, d1)
        per_col_hop, lat = mats * hidden * PRECISION_BYTES[precision] / (lk.gbps * GB), lk.latency_s
    else:
        per_col_hop, lat = 0.0, 0.0
    width = MIN_AUTO_WIDTH
    if per_col_compute > per_col_hop and lat > 0:
        width = max(width, math.ceil(lat / (per_col_compute - per_col_hop)))
    count = max(1, min(MAX_AUTO_SLICES, ffn // width))
    return max(minimum, min(count, ffn))


def _calibrated_slices(
    target: Target, d0: int, d1: int, *, hidden: int, ffn: int, mats: int, precision: str,
    tokens: int, minimum: int,
) -> int:  # fmt: skip
    """:func:`auto_slices` on the calibrated model: the most slices (at most
    :data:`MAX_AUTO_SLICES`, at least :data:`MIN_AUTO_WIDTH` columns each) whose compute on a
    die (:func:`moec.ir.cost.slice_compute_time`: GEMM folds, vector unit, issue) covers one hop
    of the next slice (:func:`moec.ir.cost.transfer_time`: DMA setup, framing, latency); when
    no cut hides the hop, the coarsest the ideal rule would give (:data:`MIN_AUTO_WIDTH`)."""
    most = max(1, min(MAX_AUTO_SLICES, ffn // MIN_AUTO_WIDTH))
    gated = mats == 3
    elem = bytes_per_element(precision)
    for count in range(most, 0, -1):
        w = math.ceil(ffn / count)
        comp = slice_compute_time(target, d0, tokens, hidden, w, gated, precision)
        hop = transfer_time(target, d0, d1, mats * hidden * w * elem) if d0 != d1 else 0.0
        if comp >= hop:
            return max(minimum, min(count, ffn))
    return max(minimum, min(most, ffn))


def _relayout(lw: Lowering, plan: LayerPlan, count: int) -> LayerPlan:
    layer, dtype = plan.layer, plan.decl.dtype
    layout = SliceLayout.even(plan.name, layer.ffn, count)
    return dataclasses.replace(plan, layout=layout, slice_bytes=slice_bytes(layer, layout, dtype))


def _shared_relayout(plan: LayerPlan, count: int) -> LayerPlan:
    if plan.shared_layout is None:
        return plan
    fs = plan.layer.shared_ffn
    count = max(plan.shared_layout.count, min(count, fs))
    lay = SliceLayout.even(plan.name, fs, count, shared=True)
    return dataclasses.replace(
        plan,
        shared_layout=lay,
        shared_slice_bytes=shared_slice_bytes(plan.layer, lay, plan.decl.dtype),
    )


def _shared_exactly(plan: LayerPlan, count: int) -> LayerPlan:
    """``slices=N``: the shared experts in ``N`` slices too (one per column when they have fewer
    columns), whatever the SRAM, or a "does not fit" error: a count then names one schedule on
    every SRAM size (``moec/fsedp_slices.py`` compares counts across SRAM sizes)."""
    if plan.shared_layout is None:
        return plan
    want = min(count, plan.layer.shared_ffn)
    if plan.shared_layout.count > want:
        raise ScheduleError(
            f"does not fit SRAM: option slices={count} cuts the shared experts of {plan.name} "
            f"into slices too large for the slots (needs >= {plan.shared_layout.count})",
            "--strategy",
        )
    return _shared_relayout(plan, want)


def reserve_carried(lw: Lowering, slack: float) -> None:
    """Re-plan ``lw``'s layers for token buffering's carried tokens.

    A deferred pair keeps its token's ``x`` and ``y`` on the home die into the next iteration,
    whose slices compute it beside that iteration's own tokens: a die holds up to
    ``home + min(home, floor(slack x tokens))`` tokens (at most ``slack x tokens`` pairs are
    deferred per layer, each of a token of that die) and a gemm has as many. The slots are
    sized for that many home tokens instead of ``home``, so a serving run fits by construction;
    a die that cannot hold them is the located "does not fit SRAM" error."""
    tokens = lw.plans[0].decl.tokens
    home = max(p.activations.h_tokens for p in lw.plans if p.activations is not None)
    carried = min(home, int(math.floor(slack * tokens)))
    if carried == 0:
        return
    ops = lw.module.moe_ops()
    wider, _ = plan_layers(
        ops, lw.target, lw.options, tokens, lw.program.name, "home", home + carried, lw.routing
    )
    for old, new in zip(lw.plans, wider, strict=True):
        new.resident = old.resident
    lw.plans[:] = wider


def lower_variant(lw: Lowering, defaults: Mapping[str, str]) -> None:
    """Lower every MoE layer of ``lw`` for FSE-DP with ``defaults`` under the explicit options."""
    opts = {"cycle": "spiral", "rules": "r1-r4", "order": "natural", "r5": "off", "slack": "0"}
    opts.update(defaults)
    opts.update({k: v for k, v in lw.raw_options.items() if k in OPTIONS})
    cycle = trajectory_cycle(lw.target, _pick(opts, "cycle", CYCLE_KINDS))
    rules = _pick(opts, "rules", RULES)
    order = _pick(opts, "order", ORDERS)
    r5 = _flag(opts["r5"], "r5")
    slack = _slack(opts["slack"])
    reserve_carried(lw, slack)
    t = lw.target
    if not cycle.closed and rules != "naive" and lw.options.slots < 3:
        raise StrategyError(
            f"option slots={lw.options.slots}: the open trajectory of {t.name} (no Hamiltonian "
            "cycle) needs at least 3 slots per die, slices travel it there and back",
            "--strategy",
        )
    C = len(t.channels)
    if C == 0:
        raise StrategyError(f"strategy fsedp needs DRAM channels, target {t.name} has none")
    plans = []
    for plan in lw.plans:
        d = plan.decl
        if lw.options.slices is None and not lw.options.fit_slices:
            count = auto_slices(
                t, cycle, hidden=d.hidden, ffn=d.ffn, mats=3 if d.gated else 2,
                precision=d.dtype, minimum=plan.layout.count,
                tokens_per_die=expected_tokens_per_die(d.tokens, d.top_k, d.experts, t.num_dies),
            )  # fmt: skip
            plan = _shared_relayout(_relayout(lw, plan, count), count)
        elif lw.options.slices is not None:
            plan = _shared_exactly(plan, plan.layout.count)
        plans.append(plan)
    lw.plans[:] = plans
    prog = lw.program
    prog.layouts = [lay for p in plans for lay in (p.layout, p.shared_layout) if lay is not None]
    slot = max(max(p.slice_bytes + p.shared_slice_bytes) for p in plans)
    prog.slots = [SlotPool(s.die, s.count, slot) for s in prog.slots]
    for plan in plans:
        channels = [e % C for e in range(plan.decl.experts)]
        lw.expert_tensors(plan, channels)
        lw.shared_tensors(plan)
        lw.policy(
            plan, "fsedp",
            {
                "trajectory": list(cycle.order), "closed": cycle.closed, "cycle": cycle.kind,
                "channels": channels, "rules": rules, "order": order, "r5": r5, "slack": slack,
            },
        )  # fmt: skip


def _make(name: str, defaults: dict[str, str]) -> None:
    def lower_fsedp(lw: Lowering) -> None:
        lower_variant(lw, defaults)

    preset = ", ".join(f"{k}={v}" for k, v in defaults.items()) or "rules r1-r4, natural order"
    lower_fsedp.__doc__ = f"FSE-DP expert streaming ({preset})."
    register(name, options=OPTIONS, activations="home")(lower_fsedp)


for _name, _defaults in VARIANTS.items():
    _make(_name, _defaults)
