"""``--strategy auto --alternatives N``: pre-compiled alternatives and a rule that picks one
per batch from its routing (issue 18, item 3).

Where the best strategy depends on the batch's routing, known only at run time, a program may
hold 2-4 alternatives sharing one static part and a decision list over routing statistics
(``strategy online``; ``docs/isa.md``, "Online choice"). :func:`online_search` builds one:

1. **Candidates**: the search of :mod:`moec.auto` on the given routing. Of its candidates that
   lowered, with the winner's slot count (and again with the default count; the better online
   program on the draws is kept), the pool (at most :data:`POOL`) takes the measured ones
   (fastest first), then each strategy's best by bound (so it is not one family's variants),
   then the rest by bound. The search prunes most candidates; the draws measure every member.
2. **One static part**: every pool member is lowered again with one slice count, the largest
   any of them has (its own cut, or the one a slice variant of the search such as
   ``tp{slices=64}`` names; ``shared_slices`` likewise for shared experts), so
   layouts and slot pools agree; a member whose static part still differs (declarations,
   slots, die streams) is dropped and says so (:func:`merge` refuses such a set with the
   first difference). This is the price of one static part: a strategy that would cut its
   experts coarser alone runs with the finer cut here.
3. **Calibration draws**: each member runs on every draw (default :data:`DEFAULT_DRAWS`:
   synthetic batches of different Zipf skew); each MoE layer of each draw is one sample: its
   routing statistics and each member's span of that layer (infinite where the member
   overfills a die on that draw: it stays a member, the rule keeps it off such batches).
4. **Alternatives**: the N members whose per-sample best is lowest in total (every
   combination; ties: the earlier members). Totals are compared as (samples that do not fit,
   seconds of the rest).
5. **Rule** (:func:`fit_rule`): start from ``otherwise use`` the alternative best in total;
   then, while it lowers the total, put in front the one line ``when STAT OP T use A`` (every
   statistic, both directions, thresholds half-way between neighbouring sample values) that
   lowers it most, at most N - 1 lines. Deterministic: fixed loop order, strict improvement.

Every layer's policy gets the same rule (each layer evaluates it on its own routing).
:func:`explain_online` prints the pool, the per-draw latencies, the alternatives and the rule.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from moec.auto import DEFAULT_BUDGET, AutoResult, Trial, search
from moec.backends.interp import simulate
from moec.compiler.lower import lower, parse_strategy
from moec.compiler.lower.options import StrategyError
from moec.ir.errors import ScheduleError
from moec.ir.graph import Module
from moec.ir.routing import RoutingTrace
from moec.ir.routing_synth import SynthSpec, parse_routing_spec
from moec.ir.stream import Program, RuntimePolicy, TargetRef, verify_program
from moec.ir.stream.online import (
    MAX_ALTERNATIVES,
    MIN_ALTERNATIVES,
    ONLINE,
    STATS,
    RoutingStats,
    choice_text,
    choose,
    routing_stats,
)
from moec.ir.stream.program import Choice, Condition
from moec.ir.target import Target, load_target

#: Calibration draws: synthetic batches from nearly uniform to very skewed routing.
DEFAULT_DRAWS = (
    "synth:zipf=0.4,seed=11", "synth:zipf=0.8,seed=12", "synth:zipf=1.2,seed=13",
    "synth:zipf=1.6,seed=14", "synth:zipf=2.0,seed=15",
)  # fmt: skip
#: Most measured candidates of the search that compete for a place among the alternatives.
POOL = 8


@dataclass
class Sample:
    """One MoE layer of one calibration draw: its statistics and each member's span (s)."""

    draw: str
    layer: str
    stats: RoutingStats
    latency_s: list[float]


@dataclass
class OnlineResult:
    """The search, the pool (spec, status), the samples, the alternatives (pool indices), the
    rule (over alternative indices) and the program written."""

    auto: AutoResult
    pool: list[tuple[str, str]]
    samples: list[Sample]
    alternatives: list[int]
    rule: list[Choice]
    program: Program
    draws: list[str] = field(default_factory=list)

    def total_s(self, member: int) -> float:
        return sum(s.latency_s[member] for s in self.samples)

    def online_total_s(self) -> float:
        return sum(s.latency_s[self.alternatives[choose(self.rule, s.stats)]] for s in self.samples)

    def score(self) -> tuple[int, float]:
        """The online program on the draws: samples it does not fit, then seconds."""
        return _score(
            [s.latency_s[self.alternatives[choose(self.rule, s.stats)]] for s in self.samples]
        )


def _is_spec(text: str) -> bool:
    """Whether ``text`` is a strategy spelling (the search's per-layer mix is not)."""
    try:
        parse_strategy(text)
    except StrategyError:
        return False
    return True


def _with(spec: str, **opts: str) -> str:
    name, have = parse_strategy(spec)
    have.pop("slices", None)
    have.pop("shared_slices", None)
    have.update(opts)
    body = ",".join(f"{k}={v}" for k, v in sorted(have.items()))
    return f"{name}{{{body}}}" if body else name


def static_part(p: Program) -> tuple[object, ...]:
    """What alternatives must share: target, layers, layouts, slot pools, islands, streams."""
    return (
        p.target,
        p.layers,
        p.layouts,
        p.slots,
        p.islands,
        [(s.die, s.instrs) for s in p.streams],
    )


def merge(programs: Sequence[Program], rule: list[Choice], labels: Sequence[str]) -> Program:
    """One program whose layers choose among ``programs``' policies by ``rule``: their static
    parts must be equal (a :class:`ScheduleError` naming the first that differs); tensors are
    the union, and a tensor alternative k declares elsewhere than an earlier one (another
    channel: EP and Hydra place an expert differently) is a second copy in DRAM, ``NAME.altK``;
    precision, skip rule and annotations must agree per layer."""
    first = programs[0]
    base = static_part(first)
    tensors = {t.name: t for t in first.tensors}
    out_tensors = list(first.tensors)
    for p, label in zip(programs[1:], labels[1:], strict=True):
        if static_part(p) != base:
            what = next(
                n for n, a, b in zip(
                    ("target", "MoE layers", "layouts", "slot pools", "islands", "die streams"),
                    base, static_part(p), strict=True,
                ) if a != b
            )  # fmt: skip
            raise ScheduleError(
                f"alternatives {labels[0]} and {label} do not share a static part: their {what} "
                "differ",
                "--alternatives",
            )
    for k, p in enumerate(programs[1:], start=1):
        for t in p.tensors:
            if t.name in tensors and tensors[t.name] != t:  # a second copy elsewhere in DRAM
                t = dataclasses.replace(t, name=f"{t.name}.alt{k}")
            if t.name not in tensors:
                tensors[t.name] = t
                out_tensors.append(t)
    runtime = []
    for r in first.runtime:
        alts = [p.policy(r.layer) for p in programs]
        for a, label in zip(alts, labels, strict=True):
            assert a is not None
            if (a.precision, a.skip, a.annotations) != (r.precision, r.skip, r.annotations):
                raise ScheduleError(
                    f"alternatives {labels[0]} and {label} differ in layer {r.layer}'s precision, "
                    "skip rule or annotations",
                    "--alternatives",
                )
        runtime.append(
            RuntimePolicy(
                r.layer, ONLINE, precision=r.precision, skip=r.skip, annotations=r.annotations,
                alternatives=[RuntimePolicy(r.layer, a.strategy, dict(a.params)) for a in alts if a],
                choices=list(rule),
            )
        )  # fmt: skip
    return dataclasses.replace(first, tensors=out_tensors, runtime=runtime, source=None)


def _score(latencies: Sequence[float]) -> tuple[int, float]:
    """What the fitting minimizes: first the samples where the pick does not fit SRAM (an
    infinite span), then the seconds of the rest."""
    return (sum(math.isinf(v) for v in latencies), sum(v for v in latencies if math.isfinite(v)))


def _total(rule: list[Choice], samples: Sequence[Sample], alts: Sequence[int]) -> tuple[int, float]:
    return _score([s.latency_s[alts[choose(rule, s.stats)]] for s in samples])


def _thresholds(values: Sequence[float]) -> list[float]:
    """Half-way between neighbouring distinct values, rounded to 4 significant digits when that
    stays strictly between them."""
    vs = sorted(set(values))
    out = []
    for a, b in itertools.pairwise(vs):
        t = round((a + b) / 2, 12)
        short = float(f"{t:.4g}")
        out.append(short if a < short < b else t)
    return out


def fit_rule(samples: Sequence[Sample], alts: Sequence[int]) -> list[Choice]:
    """The decision list over alternatives ``alts`` (module docstring, step 5)."""
    totals = [_score([s.latency_s[a] for s in samples]) for a in alts]
    default = min(range(len(alts)), key=lambda i: (totals[i], i))
    rule = [Choice((), default)]
    best = _total(rule, samples, alts)
    for _ in range(len(alts) - 1):
        found: tuple[tuple[int, float], list[Choice]] | None = None
        for use in range(len(alts)):
            for stat in STATS:
                for t in _thresholds([s.stats.get(stat) for s in samples]):
                    for op in (">=", "<"):
                        cand = [Choice((Condition(stat, op, t),), use), *rule]
                        total = _total(cand, samples, alts)
                        if total < best and (found is None or total < found[0]):
                            found = (total, cand)
        if found is None:
            break
        best, rule = found
    return rule


def _samples(
    programs: Sequence[Program | None], target: Target, draws: Sequence[tuple[str, RoutingTrace]]
) -> tuple[list[Sample], dict[int, str]]:
    """Each member's span of each layer of each draw; members that do not fit SRAM on some
    draw (index -> why) get an infinite span there."""
    samples = []
    failed: dict[int, str] = {}
    for label, trace in draws:
        spans: list[dict[str, float]] = []
        for i, p in enumerate(programs):
            if p is None:
                spans.append({})
                continue
            try:
                res = simulate(p, target=target, routings=trace, verify=False)
            except ScheduleError as e:
                failed.setdefault(i, f"does not fit at run time on {label}: {e.message}")
                spans.append({})
                continue
            spans.append({s.name: s.latency_s for s in res.report.layers})
        first = next(p for p in programs if p is not None)
        for m, lr in zip(first.layers, trace.layers, strict=True):
            stats = routing_stats(lr.ids, m.experts, target.num_dies)
            lat = [sp.get(m.name, math.inf) for sp in spans]
            samples.append(Sample(label, m.name, stats, lat))
    return samples, failed


def make_draws(
    specs: Sequence[str | tuple[str, RoutingTrace]],
    shapes: list[tuple[int, int]],
    tokens: int,
    num_dies: int,
    model: str,
) -> list[tuple[str, RoutingTrace]]:
    """The calibration draws for layers of ``shapes`` at ``tokens``: synthetic specs are made
    here, (label, trace) pairs (e.g. recorded batches) are taken as they are."""
    out = []
    for text in specs:
        if isinstance(text, tuple):
            out.append(text)
            continue
        spec = parse_routing_spec(text)
        if not isinstance(spec, SynthSpec):
            raise StrategyError(f"calibration draw {text!r}: expected synth:...", "--alternatives")
        out.append((text, spec.make(shapes, tokens, num_dies, model=model)))
    return out


def online_search(
    module: Module,
    target_ref: TargetRef,
    routing: RoutingTrace,
    *,
    alternatives: int = 2,
    draws: Sequence[str | tuple[str, RoutingTrace]] = DEFAULT_DRAWS,
    routing_name: str = "--routing",
    budget: int = DEFAULT_BUDGET,
    tokens: int | None = None,
    dims: Mapping[str, int] | None = None,
    base_dir: str | None = None,
    name: str | None = None,
) -> OnlineResult:
    """The search, the pool, the draws, the alternatives and the rule (module docstring)."""
    if not MIN_ALTERNATIVES <= alternatives <= MAX_ALTERNATIVES:
        raise StrategyError(
            f"expected {MIN_ALTERNATIVES} to {MAX_ALTERNATIVES} alternatives, found {alternatives}",
            "--alternatives",
        )
    auto = search(
        module, target_ref, routing, routing_name=routing_name, tokens=tokens, dims=dims,
        base_dir=base_dir, name=name, budget=budget,
    )  # fmt: skip
    target = load_target(target_ref.spec, dict(target_ref.overrides), base_dir=base_dir)
    ranked = sorted(  # measured first (fastest first), then the rest by their bound
        (t for t in auto.trials if t.predicted_s is not None and _is_spec(t.strategy)),
        key=lambda t: (
            t.measured_s is None,
            t.measured_s if t.measured_s is not None else t.predicted_s,
            auto.trials.index(t),
        ),
    )

    def lowered(spec: str) -> Program:
        s, o = parse_strategy(spec)
        return lower(module, target_ref, s, o, routing, tokens=tokens, dims=dims,
                     base_dir=base_dir, name=name)  # fmt: skip

    best: OnlineResult | None = None
    errors: list[str] = []
    winner = auto.winner.strategy  # a per-layer mix is no spec: its parts are in the pool
    winner_slots = parse_strategy(winner)[1].get("slots") if _is_spec(winner) else None
    for slots in dict.fromkeys([winner_slots, None]):  # the winner's slot count, the default
        try:
            found = _build(auto, ranked, slots, lowered, target, draws, alternatives)
        except ScheduleError as e:
            errors.append(e.message)
            continue
        if best is None or found.score() < best.score():
            best = found
    if best is None:
        raise ScheduleError(errors[0], target.name)
    verify_program(best.program, target)
    return best


def _build(
    auto: AutoResult,
    ranked: Sequence[Trial],
    slots: str | None,
    lowered: Callable[[str], Program],
    target: Target,
    draws: Sequence[str | tuple[str, RoutingTrace]],
    alternatives: int,
) -> OnlineResult:
    """The pool of candidates with ``slots`` slots (None: the default), measured on the
    draws, the alternatives and the rule (module docstring, steps 1-5)."""
    usable = [t.strategy for t in ranked if parse_strategy(t.strategy)[1].get("slots") == slots]
    measured = [t.strategy for t in ranked if t.measured_s is not None]
    # each strategy's best candidate, so that the pool is not one family's variants
    families: dict[str, str] = {}
    for spec in usable:
        families.setdefault(parse_strategy(spec)[0], spec)
    specs: list[str] = []
    keys: set[str] = set()  # a spelling and its slice variants are one member (one cut below)
    for spec in [*(m for m in measured if m in usable), *families.values(), *usable]:
        if _with(spec) not in keys and len(specs) < POOL:
            keys.add(_with(spec))
            specs.append(spec)

    def common_counts(progs: Sequence[Program]) -> dict[str, str]:
        routed = [lay.count for p in progs for lay in p.layouts if not lay.shared]
        shared = [lay.count for p in progs for lay in p.layouts if lay.shared]
        return {"slices": str(max(routed))} | (
            {"shared_slices": str(max(shared))} if shared else {}
        )

    def attempt(spec: str) -> Program | str:
        try:
            return lowered(spec)
        except (ScheduleError, StrategyError) as e:
            return f"not lowered: {e.message}"

    own = [p for p in map(attempt, specs) if isinstance(p, Program)]
    if not own:
        raise ScheduleError(f"--alternatives: no candidate with slots={slots} lowers")
    common = common_counts(own)
    for _ in range(3):  # a strategy may cut finer than asked (TP: a multiple of the dies)
        tried = [attempt(_with(spec, **common)) for spec in specs]
        again = common_counts([p for p in tried if isinstance(p, Program)] or own)
        if again == common:
            break
        common = again
    else:  # not settled: the last counts; a member whose static part differs is dropped below
        tried = [attempt(_with(spec, **common)) for spec in specs]
    pool: list[tuple[str, str]] = []
    programs: list[Program | None] = []
    base: tuple[object, ...] | None = None
    for spec, got in zip(specs, tried, strict=True):
        shared_spec = _with(spec, **common)
        if not isinstance(got, Program):
            pool.append((shared_spec, got))
            programs.append(None)
            continue
        if base is None:
            base = static_part(got)
        if static_part(got) != base:
            pool.append((shared_spec, "dropped: its static part differs from the first member's"))
            programs.append(None)
            continue
        pool.append((shared_spec, "measured"))
        programs.append(got)
    members = [i for i, p in enumerate(programs) if p is not None]
    if len(members) < MIN_ALTERNATIVES:
        raise ScheduleError(
            f"--alternatives: fewer than {MIN_ALTERNATIVES} candidates share a static part: "
            + "; ".join(f"{s}: {why}" for s, why in pool)
        )
    first = programs[members[0]]
    assert first is not None
    shapes = [(m.experts, m.top_k) for m in first.layers]
    draw_traces = make_draws(draws, shapes, first.layers[0].tokens, target.num_dies, first.name)
    samples, failed = _samples(programs, target, draw_traces)
    for i, why in failed.items():  # still a member: the rule keeps it off those batches
        pool[i] = (pool[i][0], f"measured; {why}")
    n = min(alternatives, len(members))
    alts = min(
        itertools.combinations(members, n),
        key=lambda c: (_score([min(s.latency_s[a] for a in c) for s in samples]), c),
    )
    rule = fit_rule(samples, list(alts))
    chosen = [programs[a] for a in alts]
    program = merge([p for p in chosen if p is not None], rule, [pool[a][0] for a in alts])
    labels = [d if isinstance(d, str) else d[0] for d in draws]
    return OnlineResult(auto, pool, samples, list(alts), rule, program, labels)


def explain_online(result: OnlineResult) -> str:
    """The online choice as text: pool, per-draw latencies, alternatives and the rule."""
    pool = result.pool
    width = max(len(s) for s, _ in pool)
    lines = [
        f"online choice: {len(pool)} candidates re-lowered with one static part, "
        f"{len(result.draws)} calibration draws x {len({s.layer for s in result.samples})} "
        "MoE layers",
        f"  {'candidate':<{width}}  total ms  status",
    ]
    for i, (spec, status) in enumerate(pool):
        mark = f"{result.alternatives.index(i)}" if i in result.alternatives else " "
        total = result.total_s(i) if status.startswith("measured") else None
        col = f"{total * 1e3:8.4g}" if total is not None else f"{'-':>8}"
        lines.append(f"{mark} {spec:<{width}}  {col}  {status}")
    draws = sorted({s.draw for s in result.samples}, key=result.draws.index)
    head = "  ".join(f"{'alt ' + str(k):>9}" for k in range(len(result.alternatives)))
    lines.append(f"  per draw (ms, MoE layers summed): {head}  {'online':>9}  stats of layer 0")
    for d in draws:
        ss = [s for s in result.samples if s.draw == d]
        per = [sum(s.latency_s[a] for s in ss) * 1e3 for a in result.alternatives]
        online = sum(s.latency_s[result.alternatives[choose(result.rule, s.stats)]] for s in ss)
        st = ss[0].stats
        cells = "  ".join(f"{v:9.4g}" for v in per)
        lines.append(
            f"  {d:<32} {cells}  {online * 1e3:9.4g}  skew {st.skew:g}, active {st.active}, "
            f"imbalance {st.imbalance:g}"
        )
    best = min(range(len(pool)), key=lambda i: (result.total_s(i), i))
    lines.append("rule: " + "; ".join(choice_text(c) for c in result.rule))
    lines.append(
        f"on the draws: online {result.online_total_s() * 1e3:.4g} ms, the best single "
        f"candidate {pool[best][0]} {result.total_s(best) * 1e3:.4g} ms"
    )
    return "\n".join(lines)
