"""The compiled FSE-DP scheduler (:mod:`moec.backends.interp.expand.fsedp_compiled`) against the
reference (:class:`~moec.backends.interp.expand.fsedp_sched._Sim`): on the problems the FSE-DP
expander hands the scheduler, for every variant of the rules (naive, R1-R4 in natural, paired
and balanced order, R5, token buffering) on 2x2, 3x3 (the open walk), 4x4 and 8x8 dies, several
token counts and skews, with and without streams, the same schedule to the bit (every die's
instructions, every trip's path, the estimate, peak slots, pass-throughs) and the same engine
state after it; and the same errors. Skipped where numba is not installed."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from typing import Any

import pytest
from strategy_cases import moe_module

import moec.backends.interp.expand.fsedp as fsedp
from moec.backends.interp.expand import ExpandContext, free_slots_at, fsedp_compiled, layouts_for
from moec.backends.interp.expand.fsedp_order import central_order, central_order_arrays
from moec.backends.interp.expand.fsedp_sched import schedule
from moec.compiler.lower import lower, parse_strategy
from moec.ir.errors import ScheduleError
from moec.ir.routing_synth import synth_zipf
from moec.ir.stream import TargetRef
from moec.ir.target import load_target

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba (moec[fast]) not installed"
)


def _problems(
    target: str, strategy: str, experts: int, tokens: int, zipf: float, seed: int,
    overrides: tuple[tuple[str, int], ...] = (), slots: int = 4,
) -> list[Any]:  # fmt: skip
    """Every problem the expander schedules for one layer (its iteration's and catch-up's)."""
    ctx = _context(target, strategy, experts, tokens, zipf, seed, overrides, slots)
    out: list[Any] = []

    def keep(prob: Any, streams: bool = True) -> Any:
        out.append(prob)
        return schedule(prob, streams)

    real = fsedp.schedule
    fsedp.schedule = keep
    try:
        fsedp.plan(ctx)
    finally:
        fsedp.schedule = real
    return out


def _context(
    target: str, strategy: str, experts: int, tokens: int, zipf: float, seed: int,
    overrides: tuple[tuple[str, int], ...] = (), slots: int = 4,
) -> ExpandContext:  # fmt: skip
    """The expander's context of a one-layer program's layer."""
    t = load_target(target, dict(overrides))
    trace = synth_zipf(num_layers=1, num_experts=experts, top_k=2, tokens=tokens, zipf=zipf,
                       seed=seed).rehome(t.num_dies)  # fmt: skip
    name, options = parse_strategy(strategy)
    p = lower(moe_module(experts, 2, tokens, hidden=64, ffn=256), TargetRef(target, overrides),
              name, {**options, "slots": str(slots)}, trace)  # fmt: skip
    m = p.layers[0]
    lay = layouts_for(p, t)
    return ExpandContext(
        p, m, p.policy(m.name), t, trace.layers[0], {s.die: s for s in p.slots},
        free_slots_at(p, m.name), lay[(m.name, False)], lay.get((m.name, True)),
    )  # fmt: skip


def _played(prob: Any, compiled: bool, streams: bool, free_at: list[float]) -> Any:
    """What scheduling ``prob`` from engine state ``free_at`` gives: the schedule, every
    float as its hex, and the engine's state after; or the error's message."""
    prob.machine.free_at[:] = free_at
    old = fsedp_compiled.COMPILED
    fsedp_compiled.COMPILED = compiled
    try:
        s = schedule(prob, streams)
    except ScheduleError as e:
        return f"error: {e}"
    finally:
        fsedp_compiled.COMPILED = old
    streams_ = {d: [(type(i).__name__, repr(i)) for i in v] for d, v in s.streams.items()}
    return (streams_, s.paths, s.estimate_s.hex(), s.peak_slots, s.pass_throughs,
            [x.hex() for x in prob.machine.free_at])  # fmt: skip


def _same(probs: list[Any]) -> int:
    """Assert both simulations agree on every problem, with and without streams, from an idle
    engine and from a busy one; returns the instructions compared."""
    assert probs
    n = 0
    for prob in probs:
        idle = [0.0] * len(prob.machine.free_at)
        busy = [1e-6 * ((7 * r) % 5) for r in range(len(idle))]
        for streams in (True, False):
            for start in (idle, busy):
                ref = _played(prob, False, streams, start)
                assert _played(prob, True, streams, start) == ref
                if streams and not isinstance(ref, str):
                    n += sum(len(v) for v in ref[0].values())
    return n


STRATEGIES = ("fsedp", "fsedp-naive", "fsedp-paired", "fsedp{order=balanced}", "fsedp-r5",
              "fsedp-buf")  # fmt: skip


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("target", ["fsedp-2x2", "fsedp-3x3"])
def test_compiled_is_the_reference(target: str, strategy: str) -> None:
    for tokens, zipf, seed in ((64, 1.0, 0), (48, 0.0, 1), (96, 2.0, 2)):
        assert _same(_problems(target, strategy, 16, tokens, zipf, seed)) > 100


@pytest.mark.parametrize("strategy", ["fsedp{slices=3}", "fsedp-r5{slices=6}"])
def test_slices_of_unequal_widths(strategy: str) -> None:
    """Slices of two widths (256 columns cut in 3 or 6): each unit says which slices compute
    alike (:attr:`Unit.alike`), truly (every needed die, every slice, the same durations as
    its first alike), and the kernel, which asks one of them, plays the reference's schedule."""
    probs = _problems("fsedp-2x2", strategy, 16, 64, 1.0, 0)
    kinds = set()
    for prob in probs:
        for u in prob.units:
            assert len(u.alike) == len(u.slice_bytes)
            kinds.add(len(set(u.alike)))
            for j, f in enumerate(u.alike):
                assert f <= j and u.alike[f] == f
                assert all(u.compute(d, j) == u.compute(d, f) for d in u.tokens)
    assert kinds == {2}
    assert _same(probs) > 100


@pytest.mark.parametrize("strategy", ["fsedp", "fsedp-paired", "fsedp{order=balanced}"])
def test_central_order_arrays(strategy: str) -> None:
    """The central load order as arrays (the compiled plan's) is :func:`central_order`'s
    pairs: as the expander makes the units, with a shared unit first, and with units of
    different slice counts (an odd number: a pair of one)."""
    for prob in _problems("fsedp-2x2", strategy, 16, 64, 1.0, 0):
        u0 = prob.units[0]
        shared = replace(u0, expert=None)
        short = [replace(u0, slice_bytes=u0.slice_bytes[:k], channels=u0.channels[:k])
                 for k in (1, 2)]  # fmt: skip
        for units in (prob.units, [shared, *prob.units], [short[0], *prob.units[1:], short[1]]):
            p = replace(prob, units=units)
            index = {id(u): i for i, u in enumerate(units)}
            unit, j = central_order_arrays(p)
            assert list(zip(unit.tolist(), j.tolist(), strict=True)) == [
                (index[id(u)], k) for u, k in central_order(p)
            ]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    ("target", "overrides"),
    [("fsedp-4x4", ()), ("fsedp-4x4", (("dies_x", 8), ("dies_y", 8)))],
)
def test_compiled_is_the_reference_on_larger_packages(
    target: str, overrides: tuple[tuple[str, int], ...], strategy: str
) -> None:
    assert _same(_problems(target, strategy, 32, 256, 1.2, 3, overrides, slots=6)) > 1000


def test_compiled_gives_the_references_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    """A die that may prefetch nothing never loads its slices: both stall with one message."""
    from moec.backends.interp.expand import fsedp_sched

    init = fsedp_sched._Sim.__init__

    def starved(self: Any, prob: Any, streams: bool = True) -> None:
        init(self, prob, streams)
        self.prefetch[1] = 0

    prob = _problems("fsedp-2x2", "fsedp", 8, 32, 1.0, 0)[0]
    monkeypatch.setattr(fsedp_sched._Sim, "__init__", starved)
    got = [_played(prob, c, True, [0.0] * len(prob.machine.free_at)) for c in (False, True)]
    assert got[0] == got[1] and got[0].startswith("error: FSE-DP scheduler stalled on layer")


def test_compiled_gives_the_references_missing_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """Walk positions granted more received slices than the die has slots: both run out of
    free slots on the same die."""
    from moec.backends.interp.expand import fsedp_sched

    init = fsedp_sched._Sim.__init__

    def crowded(self: Any, prob: Any, streams: bool = True) -> None:
        init(self, prob, streams)
        self.P = self.K
        self.cap = 1 << 30

    prob = _problems("fsedp-2x2", "fsedp", 16, 64, 1.0, 0)[0]
    monkeypatch.setattr(fsedp_sched._Sim, "__init__", crowded)
    got = [_played(prob, c, True, [0.0] * len(prob.machine.free_at)) for c in (False, True)]
    assert got[0] == got[1] and "has no free slot (internal)" in got[0]


def test_the_switch_waits_for_enough_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undecided (``COMPILED`` None), a process plays with the reference until it has scheduled
    ``COMPILE_AFTER`` slices times dies, then with the kernel the problems of at least
    ``COMPILE_FROM``."""
    prob = _problems("fsedp-2x2", "fsedp", 8, 32, 1.0, 0)[0]
    monkeypatch.setattr(fsedp_compiled, "COMPILED", None)
    monkeypatch.setattr(fsedp_compiled, "_played", 0)
    monkeypatch.setattr(fsedp_compiled, "_expected", 0)
    work = sum(len(u.slice_bytes) for u in prob.units) * prob.num_dies
    monkeypatch.setattr(fsedp_compiled, "COMPILE_AFTER", work + 1)
    monkeypatch.setattr(fsedp_compiled, "COMPILE_FROM", work)
    assert [fsedp_compiled.wanted(prob) for _ in range(3)] == [False, False, True]
    monkeypatch.setattr(fsedp_compiled, "COMPILE_FROM", work + 1)  # too small to pay
    assert not fsedp_compiled.wanted(prob)


def test_expect_counts_work_toward_the_switch_once_and_ignores_negative_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Work said to be ahead counts toward the switch until it is played, then only as played:
    an expectation below COMPILE_AFTER never switches, however it is played out."""
    prob = _problems("fsedp-2x2", "fsedp", 8, 32, 1.0, 0)[0]
    work = sum(len(u.slice_bytes) for u in prob.units) * prob.num_dies
    monkeypatch.setattr(fsedp_compiled, "COMPILED", None)
    monkeypatch.setattr(fsedp_compiled, "COMPILE_FROM", 0)
    monkeypatch.setattr(fsedp_compiled, "COMPILE_AFTER", 3 * work)
    monkeypatch.setattr(fsedp_compiled, "_played", 0)
    monkeypatch.setattr(fsedp_compiled, "_expected", 0)
    fsedp_compiled.expect(-3)
    assert fsedp_compiled._expected == 0
    fsedp_compiled.expect(5)
    fsedp_compiled.expect(0)  # said anew: nothing is ahead any more
    assert fsedp_compiled._expected == 0
    fsedp_compiled.expect(2 * work)  # less than the threshold: played out by the reference
    assert [fsedp_compiled.wanted(prob) for _ in range(3)] == [False, False, False]
    assert (fsedp_compiled._played, fsedp_compiled._expected) == (3 * work, 0)
    monkeypatch.setattr(fsedp_compiled, "_played", 0)
    fsedp_compiled.expect(3 * work)  # enough: the kernel from the first problem
    assert fsedp_compiled.wanted(prob) == fsedp_compiled.available()


def test_what_the_kernel_cannot_play_goes_to_the_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Slice computes of another op count than the interpreter's: the compiled path hands the
    problem to the reference, which gives its own schedule."""
    prob = _problems("fsedp-2x2", "fsedp-paired", 8, 32, 1.0, 0)[0]
    idle = [0.0] * len(prob.machine.free_at)
    ref = _played(prob, False, True, idle)
    monkeypatch.setattr(fsedp_compiled, "SLICE_COSTS", ((), ()))
    assert _played(prob, True, True, idle) == ref


@pytest.mark.parametrize("seed", [0, 1])
def test_records_by_die_are_a_stable_sort_on_the_die(seed: int) -> None:
    """The kernel's counting sort of its records (:func:`.fsedp_kernel._by_die`) gives what a
    stable sort on the die column gave (the rows it replaced), as columns (kind; slot, peer,
    trip), with each die's from ``ends[d]`` to ``ends[d + 1]``; dies without records too;
    records past ``m`` are not read."""
    import numpy as np

    assert fsedp_compiled.available()
    k = fsedp_compiled._KERNEL.module
    rng = np.random.default_rng(seed)
    n, m = 9, 5000
    log = rng.integers(0, 100_000, (m + 7, 5)).astype(np.int32)
    log[:, 0] = rng.choice([0, 2, 3, 8], m + 7)  # dies 1, 4-7 write nothing
    log[:, 1] = rng.integers(0, 7, m + 7)
    kind, cols = np.full(m + 7, -1, np.int8), np.full((3, m + 7), -1, np.int32)
    ends = np.full(n + 1, -1, np.int64)
    k._by_die(log, m, kind, cols, ends)
    rows = log[:m][np.argsort(log[:m, 0], kind="stable")]
    assert (kind[:m] == rows[:, 1]).all() and (cols[:, :m] == rows[:, 2:].T).all()
    assert (kind[m:] == -1).all() and (cols[:, m:] == -1).all()
    assert ends.tolist() == np.searchsorted(rows[:, 0], np.arange(n + 1)).tolist()


def test_the_kernels_paths_read_as_the_references() -> None:
    """The compiled schedule's paths, made only when read (:class:`.fsedp_compiled._Paths`),
    are the reference's list: the same length, entries and slices, equal both ways, and
    unequal to another list."""
    prob = _problems("fsedp-3x3", "fsedp-r5", 16, 64, 1.0, 0)[0]
    idle = [0.0] * len(prob.machine.free_at)
    ref = _played(prob, False, True, idle)[1]
    got = _played(prob, True, True, idle)[1]
    assert isinstance(got, fsedp_compiled._Paths) and isinstance(ref, list) and len(ref) > 20
    assert len(got) == len(ref) and got[3] == ref[3] and got[-2:] == ref[-2:]
    assert got == ref and ref == got and list(got) == ref and repr(got) == repr(ref)
    assert got != ref[:-1] and got != [*ref[:-1], ((None, 0), [0])] and got != tuple(ref)
