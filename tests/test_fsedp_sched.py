"""The FSE-DP scheduler's shortcuts against what they stand for
(:mod:`moec.backends.interp.expand.fsedp_sched`): a trip's route, found from each die's nearest
position, against the walk taken step by step; and the kicks it leaves out ("Kicks" in its
docstring) against the rule they rest on: after every event no die has anything left to do, so
a kick of any die there would do nothing."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from strategy_cases import moe_module
from test_fsedp import _context

from moec.backends.interp.expand import fsedp_compiled
from moec.backends.interp.expand.fsedp import plan
from moec.backends.interp.expand.fsedp_sched import _Sim, route
from moec.compiler.lower import lower, parse_strategy
from moec.ir.routing_synth import synth_zipf
from moec.ir.stream import TargetRef
from moec.ir.stream.params import fsedp_walk


def _walked(walk: list[int], die: int, needed: set[int]) -> tuple[list[int], frozenset[int]]:
    """The route as the scheduler first found it: from each position of ``die``, step along
    the walk until every needed die was seen; the shortest (ties: the first); then the hops
    where a needed die is seen first."""
    best: list[int] | None = None
    for q0 in [q for q, d in enumerate(walk) if d == die]:
        left, path = set(needed), []
        for step in range(len(walk)):
            q = (q0 + step) % len(walk)
            path.append(q)
            left.discard(walk[q])
            if not left:
                break
        if best is None or len(path) < len(best):
            best = path
    assert best is not None
    seen: set[int] = set()
    at = set()
    for h, q in enumerate(best):
        if walk[q] in needed and walk[q] not in seen:
            at.add(h)
        seen.add(walk[q])
    return best, frozenset(at)


@pytest.mark.parametrize(
    ("order", "closed"),
    [((0, 1, 3, 2), True), ((0, 1, 2, 3, 7, 6, 5, 4), True), ((0, 1, 2, 5, 8, 7, 6, 3, 4), False)],
)
def test_a_route_is_the_step_by_step_walk(order: tuple[int, ...], closed: bool) -> None:
    walk = fsedp_walk(list(order), closed)
    positions: dict[int, list[int]] = {d: [] for d in range(len(order))}
    for q, d in enumerate(walk):
        positions[d].append(q)
    ends = [(min(v), max(v)) for v in positions.values()]
    for die in order:
        for r in range(1, len(order) + 1):
            for needed in itertools.combinations(order, r):
                got = route(len(walk), ends, positions[die], needed)
                assert got == _walked(walk, die, set(needed)), (die, needed)


def _idle(sim: _Sim, d: Any) -> bool:
    """Whether :meth:`_Sim.kick` of ``d`` would do nothing now (its conditions, read only)."""
    if d.inbox and not d.computing:
        return False
    if d.ready and not (0 in d.ready[0].compute_at and (d.computing or d.inbox)):
        return False
    return not any(
        not lane.sending
        and lane.succ.pipeline < sim.P
        and (lane.outbox or (lane.entry and sim.active < sim.cap))
        for lane in d.lanes
    )


EVENTS = ("loaded", "cross", "release_channel", "computed", "sent", "hopped")


@pytest.mark.parametrize(
    ("target", "dies", "strategy"),
    [
        ("fsedp-2x2", 4, "fsedp"),
        ("fsedp-2x2", 4, "fsedp-r5"),
        ("fsedp-3x3", 9, "fsedp-paired"),
        ("fsedp-3x3", 9, "fsedp-r5"),
        ("fsedp-3x3", 9, "fsedp-buf"),
    ],
)
def test_after_every_event_no_die_has_anything_left_to_do(
    target: str, dies: int, strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = [0]

    def checked(fn: Callable[..., None]) -> Callable[..., None]:
        def handler(sim: _Sim, a: object, b: object) -> None:
            fn(sim, a, b)
            events[0] += 1
            stuck = [d.id for d in sim.dies if not _idle(sim, d)]
            assert not stuck, f"after {fn.__name__} at {sim.now}: dies {stuck} left to kick"

        return handler

    for name in EVENTS:
        monkeypatch.setattr(_Sim, name, checked(getattr(_Sim, name)))
    monkeypatch.setattr(fsedp_compiled, "COMPILED", False)  # the reference, whose events these are
    trace = synth_zipf(num_layers=1, num_experts=16, top_k=2, tokens=64, zipf=1.0, seed=0)
    trace = trace.rehome(dies)
    name, options = parse_strategy(strategy)
    p = lower(moe_module(16, 2, 64, hidden=64, ffn=256), TargetRef(target), name,
              {**options, "slots": "4"}, trace)  # fmt: skip
    main, _, _ = plan(_context(p, trace))
    assert main.paths and events[0] > 100
