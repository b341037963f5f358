"""``--strategy auto``: search the fixed strategies and their options, keep the fastest.

No fixed strategy wins everywhere (FSE-DP at few tokens, TP or EPLB at many, Hydra where its
calibration matches the batch), so ``auto`` tries them for the model, target and routing at hand:

1. **Candidates** (:func:`candidates`, a fixed order): every registered strategy with its default
   options, then option variants that change the schedule (the fewest slices that fit instead
   of the cost model's cut, Hydra without its per-die cap, EP with block placement, more SRAM
   slots, hence finer micro-slices), TP with chunked token dispatch (``tp{window=K}``, with
   ``chunk=256`` tokens at most per chunk: SRAM-limited batches, :mod:`~moec.backends.interp.
   expand.tp_chunked`), TP's balanced slice order (``tp{order=balanced}``: hot slices spread
   among cold ones, :mod:`~moec.backends.interp.expand.tp_order`) and hybrids within a layer (``hydra{split=N}``: the N
   hottest experts cut over all dies TP-style, the rest whole on dies); with
   :func:`slice_variants`, the slice counts next to each whole-expert strategy's own whose cut
   costs less compute (MAC-array folds filled), and TP's coarse chunked cut (two slots, one
   chunk in flight, the coarsest cut and largest chunk the cost model prefers among those that
   fit: fewer partial sums and folds, :mod:`moec.coarse_tp`). A candidate that does not fit the target (a :class:`~moec.ir.errors.ScheduleError` or ``StrategyError``) is recorded as such.
2. **Predict** each candidate from the cost model: its program is lowered and its runtime part
   expanded for the routing, and the prediction is, per MoE layer, the larger of the busiest
   DRAM channel's occupancy (:func:`~moec.ir.cost.dram_occupancy` of the layer's loads on it)
   and the busiest die's expert compute (gemm, act, accum at the interpreter's own formulas, on
   slices loaded or received there), summed over the layers: a lower bound on the MoE layers'
   span of that candidate's schedule (a channel serves one load at a time, a die runs one
   compute op at a time, layers' spans add up). Without the compute term every candidate of a compute-bound
   point (1024 tokens on 2x2) had nearly the same prediction and the budget ran out in
   candidate order.
3. **Confirm** with the interpreter in ascending prediction (ties: candidate order): each
   candidate is timed (the MoE layers' span, as ``moec bench`` measures it) until the next
   prediction is no better than the best measured latency (it cannot win: pruned) or the budget
   of interpreter runs (``--search-budget``, default :data:`DEFAULT_BUDGET`) is spent. The budget
   counts runs, not seconds, so the same input gives the same choice on any machine.
4. **Refine** (:mod:`moec.auto_refine`, objective ``latency``, with the variants): the fastest
   measured candidate's neighbours, each with one more option changed (slots x slices x load
   order x placement), are bounded and confirmed the same way within what is left of the
   budget, round after round from the fastest measured candidate not yet refined.

The winner is always a measured candidate; its program is written like any other (its runtime
policy records the strategy), and :func:`explain` prints every candidate with its prediction,
measurement or reason it was not run (and how the search came to it), why the winner won, and
why it is still above the any-schedule floor (:func:`moec.auto_bound.floor_gap`).

**Per-layer choice** (a model with several MoE layers, objective ``latency``): each measured
run also gives every layer's span, so each layer gets its fastest measured candidate; where
the layers disagree, their parts are merged into one program (:mod:`moec.per_layer`: one static
part, each ``runtime L`` its own strategy), which the interpreter times like a candidate (one
run beyond the budget) and which wins only if it beats the best single strategy. A candidate is
pruned only if its bound cannot beat the best measured total nor any layer's best span.

**Objectives** (``--objective``): ``latency`` (default), ``energy`` (the MoE layers' joules),
``edp`` (energy x latency) or ``sram`` (the largest per-die SRAM peak, ties by latency); every
measured candidate records all four. The bound pruning above is a latency bound, so it
applies to ``latency`` only; the other objectives measure candidates in prediction order until
the budget is spent. ``--max-sram-mib X`` is a constraint: a candidate whose measured peak SRAM
on some die exceeds X MiB is recorded as such and never chosen.

The search needs a routing: the ``--routing`` trace, else the bench's synthetic default
(:data:`moec.bench.DEFAULT_ROUTING`) for the model's shapes and the token count.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from moec.auto_bound import any_schedule_floor as any_schedule_floor  # re-exported
from moec.auto_bound import floor_gap, predicted_layers
from moec.auto_inherit import lesser_sram, pinnings, same_program
from moec.auto_refine import refine
from moec.backends.interp import simulate
from moec.bench import DEFAULT_ROUTING, moe_metrics
from moec.coarse_tp import coarse_chunked_tp
from moec.compiler.lower import STRATEGIES, lower, parse_strategy
from moec.compiler.lower import _load_strategies as load_strategies
from moec.compiler.lower.options import StrategyError
from moec.fsedp_slices import lower as lower_for_routing
from moec.ir.errors import ScheduleError
from moec.ir.graph import Module
from moec.ir.routing import RoutingTrace
from moec.ir.routing_synth import SynthSpec, parse_routing_spec
from moec.ir.stream import Program, TargetRef
from moec.ir.target import Target, load_target
from moec.per_layer import LayerChoice, LayerMergeError, merge_layers, rank_layers
from moec.slice_variants import slice_variants, spell

#: Interpreter runs the search may spend by default.
DEFAULT_BUDGET = 18
#: What ``auto`` minimizes (``--objective``).
OBJECTIVES = ("latency", "energy", "edp", "sram")
MIB = 1 << 20


def candidates(options: dict[str, str] | None = None) -> list[str]:
    """The candidate strategy specs in search order; ``options`` (e.g. a calibration file) are
    added to every strategy that takes them."""
    load_strategies()
    base = ["ep", "hydra", "eplb", "tp", "fsedp", "fsedp-paired", "fsedp-r5"]
    variants = [
        "ep{slices=fit}", "hydra{slices=fit}", "eplb{slices=fit}", "tp{slices=fit}",
        "hydra{cap=none}", "ep{placement=blocks}", "ep{slots=8}", "hydra{slots=8}",
        "eplb{slots=8}", "tp{slots=8}", "fsedp-paired{slots=8}", "tp{slots=16}",
        "ep{placement=blocks,slots=8}", "hydra{split=2}", "hydra{split=4}",
        "tp{window=1}", "tp{window=2}", "tp{window=1,chunk=256}", "tp{window=2,chunk=256}",
        "tp{order=balanced}",
    ]  # fmt: skip
    out = []
    for spec in base + variants:
        name, opts = parse_strategy(spec)
        if name not in STRATEGIES:
            continue
        known = STRATEGIES[name].options
        opts.update({k: v for k, v in (options or {}).items() if k in known and k not in opts})
        out.append(spell(name, opts))
    return out


@dataclass
class Trial:
    """One candidate: its prediction (seconds), measured latency (None: not run) and status."""

    strategy: str
    predicted_s: float | None = None
    measured_s: float | None = None
    status: str = "not run"
    program: Program | None = field(default=None, repr=False)
    #: the MoE layers' joules and the largest per-die SRAM peak, when measured
    energy_j: float | None = None
    peak_sram_bytes: int | None = None
    #: per MoE layer (program order): the bound and the measured span
    predicted_layers: list[float] | None = field(default=None, repr=False)
    layers_s: list[float] | None = field(default=None, repr=False)
    #: how the search came to it: "" (a listed candidate), "cut" (a slice-count variant),
    #: "coarse" (TP's coarse chunked cut, :mod:`moec.coarse_tp`) or
    #: the option a refinement changed ("slots=6 on tp{slices=32}", :mod:`moec.auto_refine`) or
    #: "inherited: the winner at 16 MiB" (the search with less SRAM, :mod:`moec.auto_inherit`)
    origin: str = ""

    def score(self, objective: str) -> tuple[float, ...]:
        """What ``objective`` minimizes for this measured trial (ties: latency)."""
        assert self.measured_s is not None and self.energy_j is not None
        assert self.peak_sram_bytes is not None
        if objective == "energy":
            return (self.energy_j, self.measured_s)
        if objective == "edp":
            return (self.energy_j * self.measured_s, self.measured_s)
        if objective == "sram":
            return (float(self.peak_sram_bytes), self.measured_s)
        return (self.measured_s,)


@dataclass
class AutoResult:
    """The search: every trial in candidate order, the winner, and the routing it ran on."""

    trials: list[Trial]
    winner: Trial
    routing: str
    budget: int
    objective: str = "latency"
    max_sram_mib: float | None = None
    resamples: int = 0
    #: the per-layer choice (models with several MoE layers, objective latency)
    layers: list[LayerChoice] = field(default_factory=list)
    #: why the winner is above the any-schedule floor (:func:`moec.auto_bound.floor_gap`)
    gap: list[str] = field(default_factory=list)

    @property
    def program(self) -> Program:
        assert self.winner.program is not None
        return self.winner.program


def default_routing(
    module: Module,
    target_ref: TargetRef,
    *,
    tokens: int | None = None,
    dims: Mapping[str, int] | None = None,
    base_dir: str | None = None,
    name: str | None = None,
) -> RoutingTrace:
    """The bench's synthetic routing (:data:`moec.bench.DEFAULT_ROUTING`) for ``module``'s MoE
    layers at the token count the lowering resolves (``tokens``, else the model's dims)."""
    probe = lower(module, target_ref, "ep", {}, None, tokens=tokens, dims=dims,
                  base_dir=base_dir, name=name)  # fmt: skip
    target = load_target(target_ref.spec, dict(target_ref.overrides), base_dir=base_dir)
    spec = parse_routing_spec(DEFAULT_ROUTING)
    assert isinstance(spec, SynthSpec)
    shapes = [(m.experts, m.top_k) for m in probe.layers]
    return spec.make(shapes, probe.layers[0].tokens, target.num_dies, model=probe.name)


def predicted_latency(program: Program, target: Target, routing: RoutingTrace) -> float:
    """A lower bound on the MoE layers' span of ``program`` expanded for ``routing``: the sum
    over the layers of :func:`~moec.auto_bound.predicted_layers`."""
    return sum(predicted_layers(program, target, routing))


def resample(trace: RoutingTrace, seed: int) -> RoutingTrace:
    """Another batch like ``trace``: its tokens' routings drawn with replacement (seeded, the
    same draw for every layer, so a token's routings across layers stay together); each
    position keeps its home die, so the tokens per die do not change."""
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, trace.tokens, trace.tokens)
    layers = [
        dataclasses.replace(lr, ids=lr.ids[pick], gates=lr.gates[pick]) for lr in trace.layers
    ]
    return dataclasses.replace(
        trace, layers=layers, provenance={**trace.provenance, "resampled_seed": seed}
    )


def measure(
    program: Program, target: Target, routing: RoutingTrace
) -> tuple[float, float, int, list[float]]:  # fmt: skip
    """Latency, energy, peak SRAM and the MoE layers' spans of one interpreter run (a
    ScheduleError if it overfills)."""
    result = simulate(program, target=target, routings=routing, verify=False)
    metrics = moe_metrics(result.timeline)
    return (
        float(metrics["latency_s"]),
        float(sum(metrics["energy_breakdown_j"].values())),
        int(max(result.report.peak_sram_bytes, default=0)),
        [float(x) for x in metrics["layers_s"]],
    )


def _confirm(
    tr: Trial, target: Target, draws: Sequence[RoutingTrace], max_sram_mib: float | None
) -> bool:
    """Run ``tr`` on every draw and record its worst; True when it may be chosen."""
    assert tr.program is not None
    try:  # SRAM is a hard limit at run time too: a routing may overfill a die
        seen = [measure(tr.program, target, r) for r in draws]
    except ScheduleError as e:
        tr.status = f"does not fit at run time: {e.message}"
        return False
    tr.measured_s = max(r[0] for r in seen)  # the worst draw (the batch itself without R)
    tr.energy_j = max(r[1] for r in seen)
    tr.peak_sram_bytes = max(r[2] for r in seen)
    if all(len(r[3]) == len(tr.program.layers) for r in seen):
        tr.layers_s = [max(spans) for spans in zip(*(r[3] for r in seen), strict=True)]
    tr.status = "measured"
    if max_sram_mib is not None and tr.peak_sram_bytes > max_sram_mib * MIB:
        tr.status = f"measured, over --max-sram-mib {max_sram_mib:g}"
        return False
    return True


def search(
    module: Module,
    target_ref: TargetRef,
    routing: RoutingTrace,
    *,
    routing_name: str = "--routing",
    budget: int = DEFAULT_BUDGET,
    specs: Sequence[str] | None = None,
    tokens: int | None = None,
    dims: Mapping[str, int] | None = None,
    base_dir: str | None = None,
    name: str | None = None,
    objective: str = "latency",
    max_sram_mib: float | None = None,
    resamples: int = 0,
    variants: bool | None = None,
) -> AutoResult:
    """Lower, predict and confirm every candidate (module docstring); ``specs`` replaces
    :func:`candidates`; ``variants`` (default: when ``specs`` is None) adds
    :func:`slice_variants` of the lowered candidates. With ``resamples`` R > 0 each confirmed candidate also runs on R
    :func:`resample` draws of ``routing`` (seeds 1..R) and is scored by its worst run: a
    schedule that overfills a die or slows down on a batch like the given one loses."""
    if budget < 1:
        raise StrategyError(f"--search-budget: expected an integer >= 1, found {budget}")
    if objective not in OBJECTIVES:
        raise StrategyError(
            f"--objective: expected one of {', '.join(OBJECTIVES)}, found {objective!r}"
        )
    if max_sram_mib is not None and not (max_sram_mib > 0 and math.isfinite(max_sram_mib)):
        raise StrategyError(f"--max-sram-mib: expected a number > 0, found {max_sram_mib!r}")
    if resamples < 0:
        raise StrategyError(f"--search-resamples: expected an integer >= 0, found {resamples}")
    target = load_target(target_ref.spec, dict(target_ref.overrides), base_dir=base_dir)
    draws = [routing] + [resample(routing, k) for k in range(1, resamples + 1)]
    trials = [Trial(s) for s in (candidates() if specs is None else specs)]

    def predict(tr: Trial) -> None:
        strategy, opts = parse_strategy(tr.strategy)
        try:
            # FSE-DP candidates get the slice count a fixed FSE-DP strategy gets for this
            # routing (moec.fsedp_slices), so auto never trails the fixed column it contains
            tr.program = lower_for_routing(
                module, target_ref, strategy, opts, routing, tokens=tokens, dims=dims,
                base_dir=base_dir, name=name,
            )  # fmt: skip
            tr.predicted_layers = predicted_layers(tr.program, target, routing)
            tr.predicted_s = sum(tr.predicted_layers)
            tr.status = "predicted"
        except (ScheduleError, StrategyError) as e:
            tr.status = f"not lowered: {e.message}"

    for tr in trials:
        predict(tr)
    refining = specs is None if variants is None else variants
    if refining:
        for spec in slice_variants(trials, target, routing):
            trials.append(Trial(spec, origin="cut"))
            predict(trials[-1])
        coarse = coarse_chunked_tp(
            module, target_ref, target, routing, tokens=tokens, dims=dims, base_dir=base_dir,
            name=name,
        )  # fmt: skip
        if coarse is not None and coarse not in {t.strategy for t in trials}:
            trials.append(Trial(coarse, origin="coarse"))
            predict(trials[-1])
    ranked = sorted(
        (i for i, tr in enumerate(trials) if tr.predicted_s is not None),
        key=lambda i: (trials[i].predicted_s, i),
    )
    best: Trial | None = None
    best_layers: list[float] | None = None  # per layer, the shortest measured span
    runs = 0
    for i in ranked:
        tr = trials[i]
        assert tr.predicted_s is not None and tr.program is not None
        if (
            objective == "latency" and best is not None and best.measured_s is not None
            and tr.predicted_s >= best.measured_s
            and not _may_win_a_layer(tr.predicted_layers, best_layers)
        ):  # fmt: skip
            tr.status = "pruned: its bound is no better than the best measured latency"
            continue
        if runs >= budget:
            tr.status = "not run: search budget spent"
            continue
        runs += 1
        if not _confirm(tr, target, draws, max_sram_mib):
            continue
        if tr.layers_s is not None and len(tr.layers_s) > 1:
            best_layers = (
                list(tr.layers_s) if best_layers is None
                else [min(a, b) for a, b in zip(best_layers, tr.layers_s, strict=True)]
            )  # fmt: skip
        if best is None or tr.score(objective) < best.score(objective):
            best = tr
    if refining and objective == "latency" and best is not None and best.measured_s is not None:

        def make(spec: str) -> Trial:
            tr = Trial(spec)
            predict(tr)
            return tr

        confirm = lambda tr: _confirm(tr, target, draws, max_sram_mib)  # noqa: E731
        best, used = refine(trials, best, make, confirm, budget - runs, target, routing)
        runs += used
    below = lesser_sram(target_ref, base_dir) if objective == "latency" else None
    if below is not None:  # more SRAM never slower (moec.auto_inherit)
        try:
            less = search(
                module, below[0], routing, budget=budget, specs=specs, tokens=tokens, dims=dims,
                base_dir=base_dir, name=name, max_sram_mib=max_sram_mib, resamples=resamples,
                variants=variants,
            )  # fmt: skip
            seed = _inherit(less.winner, below[1], trials, predict, target_ref, target, routing)
        except (ScheduleError, StrategyError):
            seed = None
        if (
            seed is not None and seed.status == "predicted"
            and _confirm(seed, target, draws, max_sram_mib)
            and (best is None or seed.score(objective) < best.score(objective))
        ):  # fmt: skip
            best = seed
    layers: list[LayerChoice] = []
    if objective == "latency" and best is not None and best_layers is not None:
        mixed, layers = _per_layer(trials, target, draws, max_sram_mib)
        if mixed is not None:
            trials.append(mixed)
            if mixed.status == "measured" and mixed.score(objective) < best.score(objective):
                best = mixed
    if best is None:
        raise ScheduleError(
            "--strategy auto: no candidate fits the target"
            + (f" within --max-sram-mib {max_sram_mib:g}" if max_sram_mib is not None else "")
            + ": " + "; ".join(f"{t.strategy}: {t.status}" for t in trials[:3]),
            target.name,
        )  # fmt: skip
    assert best.program is not None and best.measured_s is not None
    gap = floor_gap(best.program, target, routing, best.measured_s)
    for tr in trials:
        if tr is not best:
            tr.program = None
    return AutoResult(
        trials, best, routing_name, budget, objective, max_sram_mib, resamples, layers, gap
    )


def _inherit(
    less: Trial, mib: float, trials: list[Trial], predict: Callable[[Trial], None],
    target_ref: TargetRef, target: Target, routing: RoutingTrace,
) -> Trial | None:  # fmt: skip
    """The winner ``less`` of the search at ``mib`` MiB of SRAM as a trial here, lowered and
    bounded (:mod:`moec.auto_inherit`): the first of its
    :func:`~moec.auto_inherit.pinnings` that lowers to the same program (the listed trial of
    that spec if the search has one, else a new one appended to ``trials``), else its program
    itself on this target, named ``spec@<MiB>MiB`` after the SRAM it was lowered with (no spec
    lowers to it here). Its status is
    "predicted" when it still needs its run (pruned or not run, and no measured trial has the
    same program)."""
    assert less.program is not None
    origin = f"inherited: the winner at {mib:g} MiB"
    pick: Trial | None = None
    for spec in pinnings(less):
        tr = next((t for t in trials if t.strategy == spec), None) or Trial(spec, origin=origin)
        if tr.program is None and tr.status == "not run":
            predict(tr)
        if tr.program is not None and same_program(tr.program, less.program):
            pick = tr
            break
    if pick is None:
        program = dataclasses.replace(less.program, target=target_ref)
        named = less.strategy if "@" in less.strategy else f"{less.strategy}@{mib:g}MiB"
        pick = Trial(named, program=program, origin=origin)
        pick.predicted_layers = predicted_layers(program, target, routing)
        pick.predicted_s = sum(pick.predicted_layers)
        pick.status = "predicted"
    if not any(t is pick for t in trials):
        trials.append(pick)
    elif pick.status.startswith(("pruned", "not run")):
        pick.status = "predicted"
    if pick.status == "predicted":
        twin = next(
            (t for t in trials if t.status == "measured" and t.program == pick.program), None
        )
        if twin is not None:
            pick.status = f"the same program as {twin.strategy}"
    return pick


def _may_win_a_layer(bounds: list[float] | None, best: list[float] | None) -> bool:
    """True when some layer's bound is below the shortest span measured there (a candidate that
    loses overall may still be some layer's choice)."""
    if bounds is None or best is None or len(bounds) != len(best):
        return False
    return any(b < m for b, m in zip(bounds, best, strict=True))


def _per_layer(
    trials: Sequence[Trial], target: Target, draws: Sequence[RoutingTrace],
    max_sram_mib: float | None,
) -> tuple[Trial | None, list[LayerChoice]]:  # fmt: skip
    """Each layer's fastest measured candidate (:mod:`moec.per_layer`), and, when the layers
    disagree, their merged program confirmed by the interpreter (a :class:`Trial` named
    ``per-layer[L=strategy,...]``; not counted against the budget)."""
    eligible = [t for t in trials if t.status == "measured" and t.layers_s is not None]
    if not eligible or eligible[0].program is None:
        return None, []
    names = [m.name for m in eligible[0].program.layers]
    spans = [t.layers_s for t in eligible if t.layers_s is not None]
    ranks = rank_layers(spans)
    layers = [
        LayerChoice(name, [(eligible[i].strategy, spans[i][k]) for i in order])
        for k, (name, order) in enumerate(zip(names, ranks, strict=True))
    ]
    picks = [eligible[order[0]] for order in ranks]
    if len({id(t) for t in picks}) == 1:
        return None, layers
    mixed = Trial(
        "per-layer["
        + ",".join(f"{n}={t.strategy}" for n, t in zip(names, picks, strict=True))
        + "]"
    )
    try:
        mixed.program = merge_layers([t.program for t in picks if t.program is not None], target)
    except LayerMergeError as e:
        mixed.status = f"not merged: {e.message}"
        return mixed, layers
    mixed.predicted_layers = [
        t.predicted_layers[k] for k, t in enumerate(picks) if t.predicted_layers is not None
    ]
    mixed.predicted_s = sum(mixed.predicted_layers)
    _confirm(mixed, target, draws, max_sram_mib)
    return mixed, layers


_UNITS = {
    "latency": ("ms", 1e3),
    "energy": ("mJ", 1e3),
    "edp": ("mJ*ms", 1e6),
    "sram": ("MiB", 1 / MIB),
}


def explain(result: AutoResult) -> str:
    """The search as text: every candidate, its prediction and measurements, and the winner."""

    def col(v: float | None, scale: float) -> str:
        return f"{v * scale:9.3f}" if v is not None else f"{'-':>9}"

    width = max(len(t.strategy) for t in result.trials)
    limit = f", at most {result.max_sram_mib:g} MiB SRAM per die" if result.max_sram_mib else ""
    if result.resamples:
        limit += f", each scored by its worst of the batch and {result.resamples} resamples"
    lines = [
        f"strategy auto: {len(result.trials)} candidates on routing {result.routing}, "
        f"budget {result.budget} interpreter runs, objective {result.objective}{limit}",
        f"  {'candidate':<{width}}  predicted ms  measured ms  energy mJ  peak SRAM MiB  status",
    ]
    for t in result.trials:
        mark = "*" if t is result.winner else " "
        sram = t.peak_sram_bytes
        lines.append(
            f"{mark} {t.strategy:<{width}}  {col(t.predicted_s, 1e3)}     {col(t.measured_s, 1e3)}"
            f"  {col(t.energy_j, 1e3)}  {col(sram / MIB if sram is not None else None, 1.0)}"
            f"      {t.status}{_origin(t)}"
        )
    if result.layers:
        lines.append("per MoE layer (its span in each measured candidate's run, fastest first):")
        lw = max(len(c.layer) for c in result.layers)
        for c in result.layers:
            first, *rest = c.ranked
            row = f"  {c.layer:<{lw}}  {first[0]} {first[1] * 1e3:.4g} ms"
            if rest:
                row += f"; runner-up {rest[0][0]} {rest[0][1] * 1e3:.4g} ms"
            lines.append(row)
        if len({c.strategy for c in result.layers}) == 1:
            lines.append("  every layer prefers the same candidate: one strategy for the program")
    w, obj = result.winner, result.objective
    unit, scale = _UNITS[obj]
    value = lambda t: t.score(obj)[0] * scale  # noqa: E731
    measured = sorted(
        (t for t in result.trials if t.status == "measured" and t is not w),
        key=lambda t: (t.score(obj), t.strategy),
    )
    assert w.measured_s is not None
    why = f"winner {w.strategy}: {obj} {value(w):.3f} {unit}"
    if obj != "latency":
        why += f" ({w.measured_s * 1e3:.3f} ms)"
    if measured:
        r = measured[0]
        if value(w) > 0:
            better = "faster" if obj == "latency" else "less"
            why += f", {value(r) / value(w):.3f}x {better} than the runner-up {r.strategy}"
        else:
            why += f", the runner-up {r.strategy}"
        why += f" ({value(r):.3f} {unit})"
    pruned = sum(t.status.startswith("pruned") for t in result.trials)
    if pruned:
        why += f"; {pruned} candidates pruned, their bound already exceeds it"
    over = sum("over --max-sram-mib" in t.status for t in result.trials)
    if over:
        why += f"; {over} measured over the SRAM limit"
    if w.origin.startswith("inherited"):
        why += f"; {w.origin.removeprefix('inherited: ')}, pinned (moec.auto_inherit)"
    elif w.origin and w.origin not in _LISTED:
        why += f"; found by refining ({w.origin})"
    lines.append(why)
    lines += result.gap
    return "\n".join(lines)


#: Origins of candidates added before the refinement, as :func:`explain` names them.
_LISTED = {
    "cut": " [slice-count variant]",
    "coarse": " [coarse chunked TP cut]",  # moec.coarse_tp
}


def _origin(t: Trial) -> str:
    """How the search came to ``t``, for :func:`explain`."""
    if t.origin in _LISTED:
        return _LISTED[t.origin]
    if t.origin.startswith("inherited"):
        return f" [{t.origin}]"
    return f" [refined: {t.origin}]" if t.origin else ""
