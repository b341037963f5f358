"""Serving: N consecutive iterations of one program in one event simulation.

:func:`simulate_iterations` expands the program's runtime part once per iteration, for that
iteration's routing (a :class:`~moec.ir.routing_seq.RoutingSequence`, or each iteration's
inputs with numerics), and concatenates the iterations on every die: iteration i+1's
instructions follow iteration i's, with no reset, so SRAM slots, queues, links and channels carry
their state (a load of iteration i+1 waits for the slot iteration i frees; a busy channel delays
it). One timing run (:func:`~.timing.run_timing`) times the whole sequence.

**Deferred work is executed, not charged.** An ``fsedp`` layer with ``slack`` (QoS token
buffering) defers its coldest experts' (token, expert) pairs, and in a serving run the next
iteration computes them in its own trajectories, riding on the micro-slices it streams anyway
(:mod:`.expand.fsedp_carry`: the carried pairs are extra tokens ``T, T+1, ...`` of the next
iteration's layer). A pair is deferred at most once, so it waits exactly one iteration; the last
iteration drains its deferred pairs in a catch-up step behind a barrier (as a single run does,
:mod:`.expand.fsedp`), so every routed pair of every iteration is executed exactly once and
``deferred_pairs_final`` is 0 (counted from the executed ``accum`` instructions against the
routing, not assumed). A token is *ready* when its last pair has accumulated, so deferral shows in
its latency. (Deferral also leaves the next layer's input of that token incomplete within the
iteration; like the paper, the run does not model that dependency.) A one-iteration run expands
exactly as :func:`~.simulate.simulate` does (catch-up step included).

**Names.** Each iteration's layers and events get a suffix (``moe0#3``, ``sync1#3``: ``#`` is
not a name character of the text format, so these programs are for timing only and are not
printed): per-layer SRAM accounting stays per iteration (a layer hosting carried pairs is
declared with that many more tokens, so the deferred tokens' activations count), and every
barrier's count stays that of one iteration.

**Numerics.** With ``inputs``, each iteration's outputs come from the interpreter's own run of
that batch (:func:`~.simulate.simulate`, where deferred pairs run in the catch-up step: the same
numbers whichever iteration computes them); the serving program is expanded from the routing
those runs chose and is what is timed and checked pair by pair.

**Metrics** (:class:`ServingMetrics`): iteration i starts when iteration i-1's last op ended (a
decode step's batch exists once the previous step produced it; 0 for the first) and ends with
its last op, carried catch-up included; per-token latency is from its iteration's start to the
end of its last ``accum`` (or, for a token with no deferred pair, its iteration's end without the
carried work). ``tokens_per_s`` is ``N x tokens`` over the run's makespan.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moec.backends.interp.expand import expand_layer
from moec.backends.interp.expand.fsedp_carry import Carried, buffering_slack, expand_with_carry
from moec.backends.interp.expand.fsedp_deferred import DEFERRED_SUFFIX
from moec.backends.interp.offload import offload_loads
from moec.backends.interp.online import resolve_all, with_alternatives
from moec.backends.interp.report import Report, make_report
from moec.backends.interp.rules import apply_rules
from moec.backends.interp.simulate import check_fit, check_routings, prepare, simulate
from moec.backends.interp.timing import Timeline, run_timing
from moec.ir.errors import TraceError
from moec.ir.routing import LayerRouting
from moec.ir.routing_seq import RoutingSequence
from moec.ir.stream.program import (
    Accum,
    Block,
    Free,
    Instr,
    Load,
    MoE,
    Program,
    Recv,
    Signal,
    SliceLayout,
    SliceRef,
    Wait,
)
from moec.ir.target import Target

#: Joins a layer or event name and its iteration in a serving run's program.
SEP = "#"


def iteration_name(name: str, iteration: int) -> str:
    """``moe0`` of iteration 3 is ``moe0#3``."""
    return f"{name}{SEP}{iteration}"


def split_name(name: str) -> tuple[str, int]:
    """``moe0#3`` -> (``moe0``, 3)."""
    base, _, it = name.rpartition(SEP)
    return base, int(it)


def split_catchup(layer: str, instrs: list[Instr]) -> tuple[list[Instr], list[Instr]]:
    """A layer's expansion on one die as (own work, catch-up step from ``signal L.deferred``)."""
    ev = f"{layer}{DEFERRED_SUFFIX}"
    for k, i in enumerate(instrs):
        if isinstance(i, Signal) and i.event == ev:
            return instrs[:k], instrs[k:]
    return list(instrs), []


def _renamed(i: Instr, layer_sfx: int, event_sfx: int) -> Instr:
    """A fresh copy of ``i`` with its layer names and events suffixed (see module doc)."""
    changes: dict[str, Any] = {}
    for f in ("content", "block"):
        v = getattr(i, f, None)
        if isinstance(v, SliceRef | Block):
            changes[f] = dataclasses.replace(v, layer=iteration_name(v.layer, layer_sfx))
    if isinstance(i, Signal | Wait):
        changes["event"] = iteration_name(i.event, event_sfx)
    if isinstance(i, MoE):
        changes["layer"] = iteration_name(i.layer, event_sfx)
    return dataclasses.replace(i, **changes)  # type: ignore[type-var]


@dataclass
class Iteration:
    """One iteration's expansion: per MoE layer and die, its instructions; the routing used;
    per buffered layer, the previous iteration's deferred pairs it computed (token ``T + j`` is
    pair j) and the pairs it defers."""

    per_layer: dict[str, dict[int, list[Instr]]]
    routings: list[LayerRouting]
    outputs: dict[str, np.ndarray] | None = None
    computed: dict[str, list[Carried]] = field(default_factory=dict)
    deferred: dict[str, list[Carried]] = field(default_factory=dict)


def _expand_layers(
    p: Program, tgt: Target, layouts: dict[tuple[str, bool], SliceLayout],
    routings: Sequence[LayerRouting], carry: dict[str, list[Carried]] | None, last: bool,
) -> Iteration:  # fmt: skip
    """Expand every layer for its (rewritten) routing; buffered FSE-DP layers take the
    previous iteration's deferred pairs (``carry``; None: a lone iteration, expanded as usual)."""
    out = Iteration({}, list(routings))
    for m, r in zip(p.layers, routings, strict=True):
        policy = p.policy(m.name)
        if policy is None:
            continue
        if carry is not None and buffering_slack(p, m.name) > 0:
            ce = expand_with_carry(p, tgt, m, r, layouts, carry.get(m.name, []), last)
            out.per_layer[m.name] = ce.per_die
            out.computed[m.name], out.deferred[m.name] = ce.computed, ce.deferred
            continue
        lay, shared = layouts[(m.name, False)], layouts.get((m.name, True))
        out.per_layer[m.name] = offload_loads(expand_layer(p, tgt, m, r, lay, shared), policy, m)
    return out


def expand_iteration(
    p: Program, tgt: Target, layouts: dict[tuple[str, bool], SliceLayout],
    routings: dict[str, LayerRouting], carry: dict[str, list[Carried]] | None = None,
    last: bool = True,
) -> Iteration:  # fmt: skip
    """Every layer's runtime expansion for one iteration (timing only): the policy's rules
    rewrite each routing, then :func:`_expand_layers`."""
    p, _ = resolve_all(p, routings, tgt.num_dies)  # an online policy picks before its rules
    used = [
        apply_rules(p, tgt, m.name, routings[m.name]) if p.policy(m.name) is not None
        else routings[m.name]
        for m in p.layers
    ]  # fmt: skip
    return _expand_layers(p, tgt, layouts, used, carry, last)


def _numeric_iteration(
    p: Program, tgt: Target, layouts: dict[tuple[str, bool], SliceLayout],
    inputs: dict[str, np.ndarray], routing: Any, base_dir: str | None, verify: bool,
    carry: dict[str, list[Carried]] | None, last: bool,
) -> Iteration:  # fmt: skip
    """One iteration with numerics: the interpreter's outputs for this batch (its own run of
    the iteration), and the serving expansion of the routing its routers chose (rules applied
    there)."""
    res = simulate(
        p, target=tgt, routings=routing, inputs=inputs, base_dir=base_dir, verify=verify,
        allow_overflow=True,  # for its outputs only: the serving run's timing is checked
    )  # fmt: skip
    picks = res.report.extra.get("online_choice", {})  # the alternatives its own run chose
    p = with_alternatives(p, {layer: c["alternative"] for layer, c in picks.items()})
    it = _expand_layers(p, tgt, layouts, res.routings, carry, last)
    it.outputs = res.outputs
    return it


def concatenate(
    p: Program, layouts: dict[tuple[str, bool], SliceLayout], iterations: Sequence[Iteration],
    rewrite: Callable[[int, int, list[Instr]], list[Instr]] | None = None,
) -> tuple[Program, list[list[Instr]], list[list[list[Instr]]]]:  # fmt: skip
    """The serving program of ``iterations`` (see module doc), and per iteration the
    instructions it issues and its catch-up steps (deferred pairs drained behind a barrier; one
    list per die and layer).

    ``rewrite(iteration, die, instrs)`` may change each die's instructions of an iteration
    (residency: loads of slices already in SRAM); it sees the renamed copies.
    """
    n = len(iterations)
    streams: dict[int, list[Instr]] = {st.die: [] for st in p.streams}
    hosted: list[list[Instr]] = [[] for _ in range(n)]
    deferred: list[list[list[Instr]]] = [[] for _ in range(n)]
    for it, iteration in enumerate(iterations):
        for st in p.streams:
            out: list[Instr] = []
            for i in st.instrs:
                if not isinstance(i, MoE):
                    out.append(_renamed(i, it, it))
                    continue
                mine = iteration.per_layer.get(i.layer, {}).get(st.die, [])
                main, catchup = split_catchup(i.layer, mine)
                out += [_renamed(x, it, it) for x in main]
                if catchup:  # deferred pairs drained behind the layer's barrier
                    own = [_renamed(x, it, it) for x in catchup]
                    deferred[it].append(own)
                    out += own
            if rewrite is not None:
                out = rewrite(it, st.die, out)
            hosted[it] += out
            streams[st.die] += out
    layers = [
        dataclasses.replace(
            m, name=iteration_name(m.name, it),
            tokens=m.tokens + len(iterations[it].computed.get(m.name, ())),
        )
        for it in range(n) for m in p.layers
    ]  # fmt: skip
    lays = [
        dataclasses.replace(lay, layer=iteration_name(lay.layer, it))
        for it in range(n) for lay in layouts.values()
    ]  # fmt: skip
    prog = dataclasses.replace(
        p, layers=layers, layouts=lays, runtime=[], source=None,
        streams=[dataclasses.replace(st, instrs=streams[st.die]) for st in p.streams],
    )  # fmt: skip
    return prog, hosted, deferred


def executed_pairs(p: Program) -> Counter[tuple[str, int, int, int]]:
    """How often each (layer, token, expert, micro-slice) is accumulated in a static program
    (shared experts aside), by the token numbers written in it."""
    out: Counter[tuple[str, int, int, int]] = Counter()
    for i, c in _accumulations(p):
        assert c.expert is not None
        for a, b in i.tokens.ranges:
            for t in range(a, b + 1):
                out[(c.layer, t, c.expert, c.slice)] += 1
    return out


def _percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q, method="higher")) if values.size else 0.0


@dataclass
class ServingMetrics:
    """What a serving run measured (see module doc for the definitions)."""

    iterations: int
    tokens: int
    makespan_s: float
    iteration_start_s: list[float]
    iteration_end_s: list[float]
    #: [iterations, tokens]: arrival (iteration start) to the token's last accumulation
    token_latency_s: np.ndarray
    deferred_pairs: int
    deferred_pairs_final: int
    max_delay_iterations: int
    max_delay_s: float
    dram_bytes: int
    #: per ``layer#iteration`` of origin, the (token, expert) pairs executed in a later step
    deferred_by_layer: dict[str, int] = field(default_factory=dict)

    @property
    def iteration_latency_s(self) -> np.ndarray:
        return np.array(self.iteration_end_s) - np.array(self.iteration_start_s)

    @property
    def tokens_per_s(self) -> float:
        return self.iterations * self.tokens / self.makespan_s if self.makespan_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        lat = self.iteration_latency_s
        tok = self.token_latency_s.reshape(-1)
        return {
            "iterations": self.iterations,
            "tokens": self.tokens,
            "makespan_s": self.makespan_s,
            "tokens_per_s": self.tokens_per_s,
            "iteration_latency_p50_s": _percentile(lat, 50),
            "iteration_latency_p95_s": _percentile(lat, 95),
            "iteration_latency_p99_s": _percentile(lat, 99),
            "token_latency_p50_s": _percentile(tok, 50),
            "token_latency_p99_s": _percentile(tok, 99),
            "deferred_pairs": self.deferred_pairs,
            "deferred_pairs_final": self.deferred_pairs_final,
            "max_delay_iterations": self.max_delay_iterations,
            "max_delay_s": self.max_delay_s,
            "dram_bytes_per_token": self.dram_bytes / max(self.iterations * self.tokens, 1),
        }


@dataclass
class ServingResult:
    """A serving run: its metrics, the whole run's report and timeline, per-iteration outputs."""

    metrics: ServingMetrics
    report: Report
    timeline: Timeline
    program: Program
    routings: list[list[LayerRouting]]
    outputs: list[dict[str, np.ndarray]] | None = None
    #: how often each (``layer#origin iteration``, token, expert, micro-slice) was accumulated,
    #: wherever it ran: every routed pair's every slice should count once
    pairs: Counter[tuple[str, int, int, int]] = field(default_factory=Counter)
    extra: dict[str, Any] = field(default_factory=dict)


def _accumulations(p: Program) -> Iterator[tuple[Instr, SliceRef]]:
    """Every ``accum`` of a routed expert's micro-slice, with the slice it computes on."""
    for st in p.streams:
        held: dict[int, SliceRef] = {}
        for i in st.instrs:
            if (
                isinstance(i, Load | Recv)
                and i.slot is not None
                and isinstance(i.content, SliceRef)
            ):
                held[i.slot] = i.content
            elif isinstance(i, Free):
                held.pop(i.slot, None)
            elif isinstance(i, Accum):
                c = held.get(i.slot)
                if c is not None and c.expert is not None:
                    yield i, c


def _metrics(
    tl: Timeline, prog: Program, hosted: list[list[Instr]], deferred: list[list[list[Instr]]],
    its: Sequence[Iteration], tokens: int,
) -> tuple[ServingMetrics, Counter[tuple[str, int, int, int]]]:  # fmt: skip
    n = len(hosted)
    end_of: dict[int, float] = {}
    for op, i in enumerate(tl.instr):
        if i is not None:
            k = id(i)
            e = tl.end[op]
            if e > end_of.get(k, -1.0):
                end_of[k] = e
    drained = {id(i) for blocks in deferred for block in blocks for i in block}
    ends, own_ends = [], []
    for block in hosted:
        ends.append(max((end_of.get(id(i), 0.0) for i in block), default=0.0))
        own_ends.append(
            max((end_of.get(id(i), 0.0) for i in block if id(i) not in drained), default=0.0)
        )
    starts = [0.0] + ends[:-1]
    ready = np.array(own_ends, dtype=np.float64)[:, None].repeat(tokens, axis=1)
    pairs: Counter[tuple[str, int, int, int]] = Counter()
    late: set[tuple[str, int, int]] = set()
    max_delay_it = 0
    for i, c in _accumulations(prog):
        base, host = split_name(c.layer)
        virtual = its[host].computed.get(base, [])
        e_end = end_of.get(id(i), 0.0)
        for a, b in i.tokens.ranges:
            for t in range(a, b + 1):
                if t >= tokens:  # a pair the previous iteration deferred
                    pair = virtual[t - tokens]
                    origin, tok = host - 1, pair.token
                else:
                    origin, tok = host, t
                key = (iteration_name(base, origin), tok, c.expert)
                pairs[(*key, c.slice)] += 1  # type: ignore[arg-type]
                if t >= tokens or id(i) in drained:
                    late.add(key)  # type: ignore[arg-type]
                    ready[origin, tok] = max(ready[origin, tok], e_end)
                    max_delay_it = max(max_delay_it, host - origin)
    delay = ready - np.array(own_ends)[:, None]
    # every routed (token, expert) pair of every iteration, against what was accumulated
    done = {(k[0], k[1], k[2]) for k in pairs}
    missing = 0
    names = [split_name(m.name)[0] for m in prog.layers[: len(its[0].routings) if its else 0]]
    for it, iteration in enumerate(its):
        for base, lr in zip(names, iteration.routings, strict=True):
            name = iteration_name(base, it)
            for t, row in enumerate(lr.ids.tolist()):
                missing += sum(1 for e in row if e >= 0 and (name, t, e) not in done)
    per_layer = Counter(name for name, _, _ in late)
    metrics = ServingMetrics(
        iterations=n, tokens=tokens, makespan_s=tl.makespan, iteration_start_s=starts,
        iteration_end_s=ends, token_latency_s=ready - np.array(starts)[:, None],
        deferred_pairs=len(late), deferred_pairs_final=missing,
        deferred_by_layer=dict(sorted(per_layer.items())),
        max_delay_iterations=max_delay_it, max_delay_s=float(max(delay.max(initial=0.0), 0.0)),
        dram_bytes=int(sum(tl.dram_bytes)),
    )  # fmt: skip
    return metrics, pairs


def simulate_iterations(
    program: Program,
    *,
    iterations: int,
    target: Target | None = None,
    routings: RoutingSequence | None = None,
    inputs: Sequence[dict[str, np.ndarray]] | None = None,
    base_dir: str | None = None,
    verify: bool = True,
    rewrite: Callable[[int, int, list[Instr]], list[Instr]] | None = None,
    allow_overflow: bool = False,
) -> ServingResult:
    """Run ``iterations`` consecutive iterations of ``program`` in one simulation.

    Timing only: ``routings`` gives each iteration's routing (at least ``iterations`` of them).
    Numerics: ``inputs`` gives each iteration's inputs (``routings``, when given too, only sets
    home dies); every iteration's outputs are returned. ``rewrite`` see :func:`concatenate`.
    ``allow_overflow``: as in :func:`~.simulate.simulate` (SRAM is a hard limit otherwise).
    """
    if iterations < 1:
        raise TraceError(f"--iterations: expected an integer >= 1, found {iterations}")
    tgt, layouts = prepare(program, target, base_dir, verify)
    if routings is not None and len(routings) < iterations:
        raise TraceError(
            f"the routing has {len(routings)} iterations, the run asks for {iterations}",
        )
    its: list[Iteration] = []
    # a lone iteration expands as a single run does (catch-up step included); a sequence
    # carries buffered pairs from one iteration into the next
    carry: dict[str, list[Carried]] | None = None if iterations == 1 else {}
    for it in range(iterations):
        last = it + 1 == iterations
        if inputs is not None:
            if len(inputs) < iterations:
                raise TraceError(f"{len(inputs)} input batches for {iterations} iterations")
            given = routings[it] if routings is not None else None
            first = verify and it == 0
            its.append(
                _numeric_iteration(
                    program, tgt, layouts, inputs[it], given, base_dir, first, carry, last
                )
            )
        elif routings is not None:
            given_it = check_routings(program, tgt, routings[it])
            its.append(expand_iteration(program, tgt, layouts, given_it, carry, last))
        else:
            raise TraceError(
                "a serving run needs a routing per iteration, or inputs", program.filename
            )
        if carry is not None:
            carry = dict(its[-1].deferred)
    prog, hosted, deferred = concatenate(program, layouts, its, rewrite)
    tables = {
        iteration_name(r.layer, it): r.precision
        for it in range(iterations) for r in program.runtime if r.precision
    }  # fmt: skip
    tl = run_timing(prog, tgt, tables)
    check_fit(tl, tgt, program, allow_overflow)
    tokens = program.layers[0].tokens if program.layers else 0
    metrics, pairs = _metrics(tl, prog, hosted, deferred, its, tokens)
    report = make_report(tl, program.name)
    report.extra.update(tl.extra)
    outputs = [i.outputs for i in its if i.outputs is not None] if inputs is not None else None
    return ServingResult(metrics, report, tl, prog, [i.routings for i in its], outputs, pairs)
