"""FSE-DP's plans shared by a slice choice (``plans_shared`` in ``backends/interp/expand/fsedp.py``):
a count's iteration built once for its hard bound and its schedule, and the routing's pairs
grouped once for every count's program (their token sets shared between programs). Each figure
must be the one computed afresh, outside the block: the bounds, the schedules (estimates and
streams), and the runs' reports to the byte, SRAM peaks included (the SRAM accounting tells
token sets apart by object identity)."""

from __future__ import annotations

import pytest
from slice_cases import phi_case

from moec.backends.interp import simulate
from moec.backends.interp.expand import fsedp
from moec.backends.interp.expand.fsedp import iteration_bound, plans_shared, predicted_schedule
from moec.compiler.lower import lower as lower_strategy
from moec.ir.stream import Program
from moec.ir.target import Target, load_target


def _figures(programs: list[Program], target: Target, trace: object) -> list[tuple[object, ...]]:
    """Per program: its bound, its schedule without and with streams, and its run's report,
    the first program's schedule played without streams, the others' with (kept for the run)."""
    r0 = trace.layers[0]  # type: ignore[attr-defined]
    out = []
    for k, p in enumerate(programs):
        name = p.layers[0].name
        bound = iteration_bound(p, target, name, r0)
        bare = predicted_schedule(p, target, name, r0, streams=False)
        full = predicted_schedule(p, target, name, r0, streams=k > 0)
        run = simulate(p, target=target, routings=trace, verify=False, layered=True)
        streams = {d: [str(i) for i in s] for d, s in sorted(full.streams.items())}
        out.append((bound, bare.estimate_s, full.estimate_s, streams, run.report.to_json()))
    return out


@pytest.mark.parametrize("strategy", ["fsedp", "fsedp-buf", "fsedp-r5"])
def test_shared_plans_give_every_figure_computed_afresh(strategy: str) -> None:
    module, ref, trace = phi_case(64.0, 256)
    target = load_target(ref.spec, dict(ref.overrides))
    programs = [
        lower_strategy(module, ref, strategy, {"slices": str(c)}, trace) for c in (16, 32, 20)
    ]
    fresh = _figures(programs, target, trace)
    with plans_shared() as plans:
        shared = _figures(programs, target, trace)
        kept = [id(objs[0]) for objs, *_ in plans.values()]
        # the groups were made once: the two programs' units hold the very same token sets
        units = [
            fsedp._shared_iteration(
                fsedp._context(p, target, p.layers[0].name, trace.layers[0])
            ).problem.units
            for p in programs[1:]
        ]
    assert shared == fresh
    assert id(programs[1]) in kept and id(programs[2]) in kept  # scheduled with streams: kept
    a, b = units
    assert any(u.tokens for u in a)
    for ua, ub in zip(a, b, strict=True):
        assert ua.expert == ub.expert
        assert all(ua.tokens[d] is ub.tokens[d] for d in ua.tokens)


def test_a_routings_groups_are_those_of_every_pair() -> None:
    """:func:`fsedp._groups` of some experts: the groups of all, restricted to them."""
    _, _, trace = phi_case(64.0, 256)
    r = trace.layers[0]
    home = fsedp.np.asarray(r.home_die, dtype=fsedp.np.int64)
    every = fsedp._groups(r, list(range(r.num_experts)), home)
    some = [e for e in every if e % 3 == 0]
    assert some
    part = fsedp._groups(r, some, home)
    assert sorted(part) == some
    for e in some:
        assert part[e][0] == every[e][0] and part[e][1] == every[e][1]
