"""A run of streamed micro-slices added in one step (:func:`slice_chain.slice_run`): its slot
groups, and its columns by segments of alike reads (one segment, or several)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from moec.backends.interp import slice_chain


def _walk(slots: list[int]) -> tuple[list[int], list[int], list[int]]:
    """:func:`slice_chain._by_slot` one chain at a time: each chain's previous chain on its
    slot, and per slot in order of first use its first and last chain."""
    prev, last, first = [], {}, {}
    for c, s in enumerate(slots):
        prev.append(last.get(s, -1))
        last[s] = c
        first.setdefault(s, c)
    return prev, list(first.values()), [last[s] for s in first]


@pytest.mark.parametrize("seed", range(6))
def test_slot_groups_are_what_a_walk_finds(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    slots = rng.integers(0, int(rng.integers(1, 6)), n).tolist()
    if seed == 0:  # round robin, as the expansion streams
        slots = [3, 1, 2] * 5 + [3]
    prev, first, last = slice_chain._by_slot(np.asarray(slots, np.int64))
    assert (prev.tolist(), first.tolist(), last.tolist()) == _walk(slots)


@pytest.mark.parametrize(
    ("strategy", "target", "paths"),
    [
        ("ep", "fsedp-3x3", {True, False}),
        ("eplb", "fsedp-3x3", {False}),
        ("tp", "npu8-hbm", {True}),
    ],
)
def test_runs_of_alike_and_mixed_reads_time_as_the_handlers(
    strategy: str, target: str, paths: set[bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs whose reads all have the same ops (columns repeated) and runs that mix read shapes
    (columns chain by chain) give the report the handlers give one instruction at a time."""
    from moec.backends.interp.opgraph import Builder
    from moec.bench import run_bench
    from moec.compiler.bench.report import rows_json

    seen: list[bool] = []
    real = slice_chain._segments

    def recorded(tpls: list[Any], uses: dict[int, list[Any]]) -> Any:
        segments = real(tpls, uses)
        seen.append(len(segments) == 1)
        return segments

    def report() -> str:
        rows = run_bench("deepseek-moe-16b", target, [64], [strategy], layers=2)
        return rows_json(rows)

    monkeypatch.setattr(slice_chain, "_segments", recorded)
    batched = report()
    assert set(seen) == paths  # True: a run's reads all alike (one segment)
    monkeypatch.setattr(Builder, "batch_slices", False)
    assert batched == report()


def _lone_chains_counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The relay off (it takes a lone chain inside its run, :func:`.relay_chain.chains_follow`)
    and :func:`slice_chain._one_chain` counted: the list each lone chain's index goes to."""
    from moec.backends.interp import opgraph

    lone: list[int] = []
    real = slice_chain._one_chain

    def counted(*args: Any) -> None:
        lone.append(args[3])
        real(*args)

    monkeypatch.setattr(slice_chain, "_one_chain", counted)
    monkeypatch.setattr(opgraph, "RELAY", [])
    return lone


@pytest.mark.parametrize("name", ["tiny_moe.fsedp-naive.msp", "tiny_deepseek.fsedp-naive.msp"])
def test_a_run_of_one_chain_times_as_the_arrays_do(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Naive FSE-DP's streams are mostly lone chains (a load computed and freed before the
    die's next load): :func:`slice_chain._one_chain` adds them with plain ints, and the
    timeline, SRAM peaks and energy are, to the bit, what the arrays of any run give. The
    relay takes a lone chain inside its run (:func:`.relay_chain.chains_follow`), so it is
    off here (:func:`_lone_chains_counted`): every chain is :mod:`.slice_chain`'s."""
    from test_sim_speed import GOLDEN, _timeline_fields

    from moec.backends.interp.timing import run_timing
    from moec.ir.stream import load_program
    from moec.run import run_program

    program = load_program(str(GOLDEN / name))
    res = run_program(program, routing="synth:zipf=1.0,seed=0", base_dir=str(GOLDEN))
    assert res.expanded is not None
    lone = _lone_chains_counted(monkeypatch)
    fast = run_timing(res.expanded, res.timeline.target)
    assert lone  # the path was taken
    monkeypatch.setattr(slice_chain, "ONE_CHAIN", False)
    ref = run_timing(res.expanded, res.timeline.target)
    assert repr(_timeline_fields(fast)) == repr(_timeline_fields(ref))


def test_lone_chains_of_a_bigger_model_report_as_the_arrays_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same on two layers of DeepSeek-MoE-16B (dozens of lone chains, on every die): the
    report's bytes do not depend on the path (the relay off, as above)."""
    from moec.bench import run_bench
    from moec.compiler.bench.report import rows_json

    def report() -> str:
        return rows_json(
            run_bench("deepseek-moe-16b", "fsedp-2x2", [64], ["fsedp-naive"], layers=2)
        )

    lone = _lone_chains_counted(monkeypatch)
    fast = report()
    assert lone  # the path was taken
    monkeypatch.setattr(slice_chain, "ONE_CHAIN", False)
    assert fast == report()
