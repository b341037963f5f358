"""A whole-model run tells the compiled kernels' decisions the work ahead before its first layer
(``backends/interp/ahead.py``, the first MoE part in ``layered.py``, ``moec bench``'s slice
choice): the FSE-DP scheduler and the event loop then play the first layer compiled when the
run pays for loading them, and the rows are the references'; and a naive FSE-DP schedule
offers no records to the compiled relay. Skipped where numba is not installed."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import pytest
from slice_cases import bench_case

import moec.fsedp_slices as fs
from moec.backends.interp import ahead, event_loop
from moec.backends.interp.expand import fsedp_compiled
from moec.bench import run_bench
from moec.compiler.lower import parse_strategy

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba (moec[fast]) not installed"
)

#: the module (``moec.backends.interp.simulate`` the package's attribute is its function)
sim_mod = importlib.import_module("moec.backends.interp.simulate")
#: three layers of Qwen3-30B-A3B on 2x2 dies, a fixed slice count (no slice choice)
POINT = ("qwen3-30b-a3b", "fsedp-2x2", [64], ["fsedp{slices=4}"])


def _undecided(monkeypatch: pytest.MonkeyPatch, played: int, timed: int) -> None:
    """Both implementations undecided, nothing played or timed yet, switching at ``played``
    micro-slices x dies and ``timed`` ops."""
    for mod, after in ((fsedp_compiled, played), (event_loop, timed)):
        monkeypatch.setattr(mod, "COMPILED", None)
        monkeypatch.setattr(mod, "_expected", 0)
        monkeypatch.setattr(mod, "COMPILE_AFTER", after)
        monkeypatch.setattr(mod, "COMPILE_WARM", after)  # numba loaded or not
    monkeypatch.setattr(fsedp_compiled, "_played", 0)
    monkeypatch.setattr(fsedp_compiled, "COMPILE_FROM", 0)
    monkeypatch.setattr(event_loop, "_timed", 0)


def _spy(monkeypatch: pytest.MonkeyPatch, mod: Any, name: str, log: list[Any]) -> None:
    """Log what ``mod.name`` returns (functions) or is called with (``expect``)."""
    real = getattr(mod, name)

    def spy(*a: Any, **k: Any) -> Any:
        out = real(*a, **k)
        log.append(a[0] if name == "expect" else (name, out))
        return out

    monkeypatch.setattr(mod, name, spy)


def _work_played(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[Any]]:
    """What the run says is ahead (:func:`~moec.backends.interp.ahead.fsedp_work`), and per
    scheduled problem its work and whether the kernel played it."""
    said: list[Any] = []
    _spy(monkeypatch, sim_mod, "fsedp_work", said)
    played: list[Any] = []
    real = fsedp_compiled.wanted

    def wanted(prob: Any) -> bool:
        use = real(prob)
        played.append((sum(len(u.slice_bytes) for u in prob.units) * prob.num_dies, use))
        return use

    monkeypatch.setattr(fsedp_compiled, "wanted", wanted)
    return said, played


def test_the_run_says_the_work_its_fsedp_layers_play(monkeypatch: pytest.MonkeyPatch) -> None:
    _undecided(monkeypatch, played=10**9, timed=10**9)
    said, played = _work_played(monkeypatch)
    run_bench(*POINT, layers=3)
    assert len(played) == 3 and not any(use for _, use in played)  # short of 10**9
    assert [w for _, w in said] == [sum(w for w, _ in played)]
    assert fsedp_compiled._expected == 0  # nothing is left said once the run ends


def _reference_then_spied(
    monkeypatch: pytest.MonkeyPatch, layers: int
) -> tuple[Any, list[Any], list[Any]]:
    """The bench rows of ``layers`` layers with the scheduler's reference, then the same run
    undecided (never switching) with :func:`_work_played` spying on it: rows, said, played."""
    monkeypatch.setattr(fsedp_compiled, "COMPILED", False)
    ref = run_bench(*POINT, layers=layers)
    _undecided(monkeypatch, played=10**9, timed=10**9)
    said, played = _work_played(monkeypatch)
    run_bench(*POINT, layers=layers)
    return ref, said, played


def test_the_first_layer_is_scheduled_compiled_when_the_run_pays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(event_loop, "COMPILED", False)
    ref, said, played = _reference_then_spied(monkeypatch, 3)
    work = said[0][1]
    for after, kernel in ((work + 1, False), (work, True)):  # short of it, then just enough
        _undecided(monkeypatch, played=after, timed=10**9)
        played.clear()
        rows = run_bench(*POINT, layers=3)
        assert [use for _, use in played] == [kernel] * 3
        assert rows == ref


def test_scheduling_hands_back_a_callers_word_less_what_was_played(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _undecided(monkeypatch, played=10**9, timed=10**9)
    fsedp_compiled.expect(1000)
    with ahead.scheduling(400):  # less than said: the caller's word stands
        assert fsedp_compiled.expected()[0] == 1000
        monkeypatch.setattr(fsedp_compiled, "_played", 300)
    assert fsedp_compiled.expected() == (700, 300)
    with ahead.scheduling(5000):
        assert fsedp_compiled.expected()[0] == 5000
        monkeypatch.setattr(fsedp_compiled, "_played", 1300)
    assert fsedp_compiled.expected()[0] == 0  # the caller's 700 were played, and more


def test_the_first_moe_part_is_timed_compiled_when_the_parts_ahead_pay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before its first MoE part a layered run expects that part's instructions times the MoE
    parts from it on: at that threshold the part is timed compiled, the dense part before it
    (nothing said yet) by the reference; the rows are the reference's."""
    point = ("qwen3-30b-a3b", "fsedp-2x2", [64], ["ep"])
    monkeypatch.setattr(event_loop, "COMPILED", False)
    ref = run_bench(*point, layers=3)
    _undecided(monkeypatch, played=10**9, timed=10**9)
    said: list[Any] = []
    _spy(monkeypatch, event_loop, "expect", said)
    run_bench(*point, layers=3)
    first = said[0]  # said before the first MoE part is timed
    used: list[str] = []
    for nm in ("loop_python", "loop_compiled"):
        _spy(monkeypatch, event_loop, nm, used)
    _undecided(monkeypatch, played=10**9, timed=first)
    rows = run_bench(*point, layers=3)
    loops = [nm for nm, _ in used]
    assert loops[:2] == ["loop_python", "loop_compiled"] and set(loops[2:]) == {"loop_compiled"}
    assert rows == ref
    assert event_loop._expected == 0


def test_a_choice_the_caller_runs_after_expects_its_later_layers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``moec bench`` runs the chosen program after the choice: the choice's first word to the
    scheduler adds the later layers at the fewest slices that fit; the choice is the same."""
    module, ref, trace = bench_case("qwen3-30b-a3b", "fsedp-2x2", (), 64, 3)
    name, options = parse_strategy("fsedp")
    base = fs.lower(module, ref, name, {**options, "slices": "4"}, trace)
    _undecided(monkeypatch, played=10**9, timed=10**9)
    said: list[Any] = []
    _spy(monkeypatch, fsedp_compiled, "expect", said)
    first, choices = [], []
    for run in (False, True):
        said.clear()
        choices.append(fs.choose_slices(module, ref, name, options, trace, base, run=run))
        first.append(said[0])
        assert said[-1] == 0  # nothing left said once the choice is made
    alone, then = choices
    assert alone is not None and then is not None
    assert (then.count, then.predicted, then.measured, then.bound) == (
        alone.count, alone.predicted, alone.measured, alone.bound,
    )  # fmt: skip
    routed = len({int(e) for e in trace.layers[0].ids.reshape(-1) if e >= 0})
    assert first[1] - first[0] == routed * 4 * min(alone.bound) * 2  # 4 dies, 2 later layers


@pytest.mark.parametrize(
    ("strategy", "forced", "offers"),
    [("fsedp-naive", None, True), ("fsedp-naive", False, False), ("fsedp", None, True)],
)
def test_schedules_offer_records_unless_the_relay_is_off(
    monkeypatch: pytest.MonkeyPatch, strategy: str, forced: bool | None, offers: bool
) -> None:
    """Every rule's schedules, naive ones too (their lone streamed micro-slices no longer end
    a relay run: :func:`~moec.backends.interp.relay_chain.chains_follow`), hand their records
    to the compiled relay unless it is off; the rows are the same whichever relay builds."""
    from moec.backends.interp import relay_compiled

    point = ("qwen3-30b-a3b", "fsedp-2x2", [64], [f"{strategy}{{slices=4}}"])
    monkeypatch.setattr(relay_compiled, "COMPILED", False)
    ref = run_bench(*point, layers=2)
    monkeypatch.setattr(fsedp_compiled, "COMPILED", True)
    monkeypatch.setattr(relay_compiled, "COMPILED", forced)
    offered: list[Any] = []  # whether each schedule hands its records on (relay_records)
    _spy(monkeypatch, fsedp_compiled, "offered", offered)
    assert run_bench(*point, layers=2) == ref
    assert offered and any(out for _, out in offered) == offers


def _chain(n: int) -> dict[str, Any]:
    """The arguments of :func:`~moec.backends.interp.event_loop.run_events` for ``n`` ops in a
    chain on one resource."""
    from array import array
    from collections import defaultdict

    return dict(
        src=array("q"), dst=array("q"), runs=[0, n - 1], dur=[1.0] * n, res=[0] * n,
        kind=[0] * n, back={}, free_at=[0.0], busy=[0.0], clock=0.0, signal_event={},
        waiters=defaultdict(lambda: defaultdict(list)),
    )  # fmt: skip


@pytest.mark.parametrize("loaded", [False, True])
def test_once_numba_is_loaded_a_run_of_compile_warm_ops_is_timed_compiled(
    monkeypatch: pytest.MonkeyPatch, loaded: bool
) -> None:
    """With numba loaded by another kernel, loading the loop's costs about 10 ms: a run whose
    ops (with those timed and expected) reach COMPILE_WARM is timed compiled, a shorter one by
    the reference; without numba loaded, COMPILE_AFTER alone decides. Same times either way."""
    _undecided(monkeypatch, played=10**9, timed=10**9)
    monkeypatch.setattr(event_loop, "COMPILE_WARM", 50)
    monkeypatch.setattr(event_loop, "_numba_loaded", loaded)
    used: list[Any] = []
    for nm in ("loop_python", "loop_compiled"):
        _spy(monkeypatch, event_loop, nm, used)
    ends = [list(event_loop.run_events(**_chain(n))[1]) for n in (49, 50)]
    assert [nm for nm, _ in used] == ["loop_python", "loop_compiled" if loaded else "loop_python"]
    assert ends == [[float(k + 1) for k in range(n)] for n in (49, 50)]


@pytest.mark.parametrize("loaded", [False, True])
def test_once_numba_is_loaded_compile_warm_work_is_scheduled_compiled(
    monkeypatch: pytest.MonkeyPatch, loaded: bool
) -> None:
    ref, _, played = _reference_then_spied(monkeypatch, 1)
    work = played[0][0]
    monkeypatch.setattr(event_loop, "_numba_loaded", loaded)
    for warm, kernel in ((work + 1, False), (work, loaded)):
        _undecided(monkeypatch, played=10**9, timed=10**9)
        monkeypatch.setattr(fsedp_compiled, "COMPILE_WARM", warm)
        played.clear()
        assert run_bench(*POINT, layers=1) == ref
        assert [use for _, use in played] == [kernel]
