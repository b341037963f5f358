"""The compiled event loop (backends/interp/event_kernel.py, numba) against the Python reference.

Both must give every op's start and end, each resource's free and busy time, to the bit: on
random op graphs built to tie (few distinct durations, shared resources, tail reservations,
signal/wait counters, a deadlock), on every tiny golden, on chunked dispatch, and on a
layer-by-layer whole-model run's JSON report. Skipped where numba is not installed (it is an
optional extra, ``moec[fast]``); the reference is what every other test runs.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from array import array
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import moec.backends.interp as interp
import moec.backends.interp.event_loop as event_loop
from moec.backends.interp.timing import run_timing
from moec.ir.stream import load_program
from moec.run import run_program

#: the comparisons need numba; without it only the fallback test below runs
needs_numba = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba (moec[fast]) not installed"
)

GOLDEN = Path(__file__).parent / "golden" / "msp"
TINY = sorted(p.name for p in GOLDEN.glob("tiny*.msp"))


def _random_graph(rng: random.Random, n: int) -> dict[str, Any]:
    """A DAG in op order (edges only forward, logged in a shuffled order so that a source's
    edges are not next to each other) plus wait ops released by signal counts."""
    edges = [
        (a, b) for b in range(1, n) for a in rng.sample(range(b), min(b, rng.choice((0, 1, 1, 2, 3))))
    ]  # fmt: skip
    rng.shuffle(edges)
    runs: list[int] = []  # chains logged as runs: each op's run edge goes first
    x = 0
    while x < n - 1:
        if rng.random() < 0.2:
            c = min(rng.randint(1, 3), n - 1 - x)
            runs += (x, c)
            x += c + 1
        else:
            x += 1
    kinds = [rng.choice((0, 1, 2, 3, 5)) for _ in range(n)]
    res = [-1 if k in (3, 5) else rng.choice((0, 1, 2)) for k in kinds]
    dur = [rng.choice((0.0, 0.5, 1.0, 1.5)) if k != 3 else 0.0 for k in kinds]
    back = {op: b for op, d in enumerate(dur) if (b := rng.choice((0.0, 0.0, 0.25, d)))}
    signal_event: dict[int, str] = {}
    waiters: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for op in rng.sample(range(n), n // 8):
        signal_event[op] = rng.choice(("a", "b"))
    for op in rng.sample(range(n), n // 10):
        if op not in signal_event:  # counts up to one past the signals: some never released
            waiters[rng.choice(("a", "b", "c"))][rng.randrange(0, 1 + n // 16)].append(op)
    return {
        "src": [a for a, _ in edges], "dst": [b for _, b in edges], "runs": runs, "dur": dur, "res": res,
        "kind": kinds, "back": back, "free_at": [rng.choice((0.0, 2.0)) for _ in range(3)],
        "busy": [0.0, 1.0, 0.0], "clock": rng.choice((0.0, 1.0)), "signal_event": signal_event,
        "waiters": waiters,
    }  # fmt: skip


def _copy(g: dict[str, Any]) -> dict[str, Any]:
    out = dict(g)
    for key in ("free_at", "busy"):
        out[key] = list(g[key])
    out["waiters"] = defaultdict(
        lambda: defaultdict(list),
        {ev: defaultdict(list, {c: list(ops) for c, ops in by.items()})
         for ev, by in g["waiters"].items()},
    )  # fmt: skip
    return out


@needs_numba
@pytest.mark.parametrize("seed", range(12))
def test_compiled_loop_pops_random_graphs_as_the_reference(seed: int) -> None:
    rng = random.Random(seed)
    g = _random_graph(rng, rng.choice((1, 7, 60, 400)))
    a, b = _copy(g), _copy(g)
    ref = event_loop.loop_python(**a)
    start, end = event_loop.loop_compiled(**b)
    assert repr((start.tolist(), end.tolist())) == repr(ref)
    assert repr((b["free_at"], b["busy"])) == repr((a["free_at"], a["busy"]))
    if seed == 0:
        assert min(ref[1]) < 0  # the generator does make ops that are never released


@needs_numba
@pytest.mark.parametrize("seed", range(4))
def test_compiled_loop_takes_every_column_type_as_the_reference(seed: int) -> None:
    """The columns as a layered run hands them over (numpy arrays of any int width, the edge log
    as typed ``array('q')``) on a graph of thousands of ops, released far apart in op order (the
    case the kernel's one record per op is for), with and without runs, backs and signals."""
    rng = random.Random(seed)
    g = _random_graph(rng, 3000)
    if seed % 2:  # nothing but the edge log: the kernel's empty columns
        g.update(runs=[], back={}, signal_event={}, waiters=defaultdict(lambda: defaultdict(list)))
    ref = event_loop.loop_python(**_copy(g))
    b = _copy(g)
    b.update(
        src=array("q", g["src"]), dst=array("q", g["dst"]), runs=array("q", g["runs"]),
        dur=np.asarray(g["dur"]), res=np.asarray(g["res"], np.int32),
        kind=np.asarray(g["kind"], np.int8),
    )  # fmt: skip
    start, end = event_loop.loop_compiled(**b)
    assert repr((start.tolist(), end.tolist())) == repr(ref)
    a = _copy(g)
    event_loop.loop_python(**a)
    assert repr((b["free_at"], b["busy"])) == repr((a["free_at"], a["busy"]))


def _timeline(tl: Any) -> str:
    names = (
        "start", "end", "busy", "peak_sram", "peak_sram_activations", "makespan", "dram_bytes",
        "link_bytes",
    )  # fmt: skip
    return repr([getattr(tl, n) for n in names] + [tl.energy.joules])


@needs_numba
@pytest.mark.parametrize("name", TINY)
def test_compiled_loop_times_every_golden_as_the_reference(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    res = run_program(
        load_program(str(GOLDEN / name)), routing="synth:zipf=1.0,seed=0", base_dir=str(GOLDEN)
    )
    assert res.expanded is not None
    target = res.timeline.target
    monkeypatch.setattr(event_loop, "COMPILED", False)
    ref = run_timing(res.expanded, target)
    monkeypatch.setattr(event_loop, "COMPILED", True)
    got = run_timing(res.expanded, target)
    assert len(got.start) > 0
    assert _timeline(got) == _timeline(ref)


@needs_numba
def test_compiled_loop_gives_a_layered_run_the_same_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moec.bench import run_bench
    from moec.compiler.bench.report import rows_json

    def report(compiled: bool) -> str:
        monkeypatch.setattr(event_loop, "COMPILED", compiled)
        return rows_json(
            run_bench("qwen3-30b-a3b", "fsedp-2x2", [64], ["ep", "tp{window=2}"], layers=3)
        )

    assert report(True) == report(False)


def _loops_used(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the loops :func:`event_loop.run_events` calls from now on, in order."""
    used: list[str] = []
    for name in ("loop_python", "loop_compiled"):
        real = getattr(event_loop, name)

        def counted(*a: Any, _real: Any = real, _name: str = name) -> Any:
            used.append(_name)
            return _real(*a)

        monkeypatch.setattr(event_loop, name, counted)
    return used


@needs_numba
def test_an_undecided_process_switches_after_enough_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    used = _loops_used(monkeypatch)
    monkeypatch.setattr(event_loop, "COMPILED", None)
    monkeypatch.setattr(event_loop, "COMPILE_AFTER", 100)
    monkeypatch.setattr(event_loop, "_timed", 0)
    rng = random.Random(0)
    for _ in range(3):
        event_loop.run_events(**_copy(_random_graph(rng, 60)))
    assert used == ["loop_python", "loop_python", "loop_compiled"]


@needs_numba
def test_an_undecided_process_told_what_is_coming_switches_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    used = _loops_used(monkeypatch)
    monkeypatch.setattr(event_loop, "COMPILED", None)
    monkeypatch.setattr(event_loop, "COMPILE_AFTER", 100)
    monkeypatch.setattr(event_loop, "_timed", 0)
    monkeypatch.setattr(event_loop, "_expected", 0)
    rng = random.Random(2)
    event_loop.expect(99)
    event_loop.run_events(**_copy(_random_graph(rng, 0)))  # 0 timed + 99 expected: not yet
    event_loop.expect(100)
    event_loop.run_events(**_copy(_random_graph(rng, 60)))
    event_loop.expect(0)
    assert used == ["loop_python", "loop_compiled"]


def test_a_layered_run_says_what_its_later_parts_hold_then_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moec.bench import run_bench

    said: list[int] = []
    real = event_loop.expect

    def spy(ops: int) -> None:
        said.append(ops)
        real(ops)

    monkeypatch.setattr(event_loop, "expect", spy)
    run_bench("qwen3-30b-a3b", "fsedp-2x2", [64], ["ep"], layers=3)
    # after a part with MoE parts still to come, a positive guess (ops of that part x MoE
    # parts left); after the last part nothing, and every run's end clears it
    assert max(said) > 0 and said[-1] == 0
    assert event_loop._expected == 0


def test_without_numba_an_undecided_process_runs_the_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    monkeypatch.setitem(sys.modules, "moec.backends.interp.event_kernel", None)
    monkeypatch.delattr(interp, "event_kernel", raising=False)  # an earlier test imported it
    monkeypatch.setattr(event_loop, "_kernel", None)
    monkeypatch.setattr(event_loop, "COMPILED", None)
    monkeypatch.setattr(event_loop, "_timed", 10**9)
    g = _random_graph(random.Random(1), 60)
    assert event_loop.run_events(**_copy(g)) == event_loop.loop_python(**_copy(g))
    assert event_loop.compiled_available() is False


@pytest.mark.skipif(
    importlib.util.find_spec("numba") is None or importlib.util.find_spec("scipy") is None,
    reason="numba (moec[fast]) or scipy not installed",
)
def test_a_kernel_loads_without_numbas_blas_probe_and_scipy_imports_after() -> None:
    """Loading a kernel does not import ``scipy.linalg`` (numba's BLAS probe is hidden while
    its array functions import), the kernel runs, and ``scipy.linalg`` imports as usual
    afterwards. In a fresh process: this one may have imported either already."""
    import subprocess

    code = (
        "import sys\n"
        "from moec.backends.interp import event_loop as ev\n"
        "assert 'scipy.linalg' not in sys.modules\n"
        "from moec.backends.interp.expand import fsedp_compiled as fc\n"
        "assert fc.available() and ev.numba_loaded()\n"
        "import numpy as np\n"
        "log, ends = np.zeros((3, 5), np.int32), np.zeros(2, np.int64)\n"
        "fc._KERNEL.module._by_die(log, 3, np.zeros(3, np.int8), log[:, 2:].T.copy(), ends)\n"
        "assert ends.tolist() == [0, 3]\n"
        "from numba.np import arraymath\n"
        "assert 'scipy.linalg' not in sys.modules and ev.BLAS_PROBE not in sys.modules\n"
        "assert not arraymath._HAVE_BLAS\n"
        "import scipy.linalg.cython_blas\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def _limited(loop: Any, g: dict[str, Any], watch: list[bool], limit: float) -> Any:
    """``loop`` on a copy of ``g`` with ``watch`` and ``limit``: its (start, end) as lists, or
    the limit it stopped past."""
    try:
        start, end = loop(**_copy(g), watch=watch, limit=limit)
    except event_loop.PastLimit as past:
        return past.limit
    return list(start), list(end)


@pytest.mark.parametrize("seed", range(12))
def test_a_run_stops_only_once_the_watched_ops_span_more_than_its_limit(seed: int) -> None:
    """A stop is sound: the watched ops, run to the end, span more than the limit; a run that
    does not stop is the run without a limit; the compiled loop stops exactly where the
    reference does."""
    rng = random.Random(seed)
    g = _random_graph(rng, rng.choice((7, 60, 400)))
    start, end = event_loop.loop_python(**_copy(g))
    watch = [rng.random() < 0.5 for _ in start]
    popped = [op for op, w in enumerate(watch) if w and end[op] >= 0]
    if not popped:
        return
    span = max(end[op] for op in popped) - min(start[op] for op in popped)
    stops = 0
    for limit in (0.0, span / 3, span / 2, span - 0.25, span, span + 1.0):
        got = _limited(event_loop.loop_python, g, watch, limit)
        if isinstance(got, float):
            assert span > limit and got == limit
            stops += 1
        else:
            assert got == (start, end)
        if importlib.util.find_spec("numba") is not None:
            compiled = _limited(event_loop.loop_compiled, g, watch, limit)
            assert compiled == got
    if span > 0:
        assert stops  # a watched op that outlasts a limit of 0 stops the run at once
