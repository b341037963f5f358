"""The simulator's speed work (issue 19) changes no result: each shortcut against its reference."""

from __future__ import annotations

import dataclasses
import gc
import importlib
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from strategy_cases import moe_module

import moec.bench
from moec.backends.interp import summary
from moec.backends.interp.simulate import gc_paused
from moec.backends.interp.sram import _first_last, _mask, _pair_columns
from moec.backends.interp.summary import _nbytes, tag_spans
from moec.bench import run_bench
from moec.compiler.lower import lower
from moec.compiler.lower.slots import check_tokens_fit
from moec.ir.errors import ScheduleError
from moec.ir.stream import TargetRef, TokenSet, load_program
from moec.ir.stream.program import Free, Load, Send, SliceRef
from moec.ir.target import load_target
from moec.run import run_program

GOLDEN = Path(__file__).parent / "golden" / "msp"


def _random_sets(rng: random.Random, n: int, count: int) -> list[TokenSet]:
    sets = []
    for _ in range(count):
        k = rng.randrange(0, n + 1)
        sets.append(TokenSet.of(rng.sample(range(n), k)))
    return sets + sets[: count // 3]  # shared sets, as every slice of an expert shares one


def _first_last_reference(
    items: list[tuple[int, TokenSet]], times: list[float], n: int, first: bool
) -> np.ndarray:  # fmt: skip
    out = np.full(n, np.inf if first else -np.inf)
    for op, ts in items:
        for t in ts:
            out[t] = min(out[t], times[op]) if first else max(out[t], times[op])
    return out


@pytest.mark.parametrize("seed", range(5))
def test_vectorized_activation_spans_match_the_per_token_reference(seed: int) -> None:
    rng = random.Random(seed)
    n = 37
    sets = _random_sets(rng, n, 12)
    times = [float(rng.randrange(100)) / 7 for _ in sets]
    items = list(enumerate(sets))
    for first in (True, False):
        got = _first_last(_pair_columns(items), times, n, first)
        assert np.array_equal(got, _first_last_reference(items, times, n, first))
    expect = np.zeros(n, dtype=bool)
    expect[[t for ts in sets for t in ts]] = True
    assert np.array_equal(_mask(sets, n), expect)
    assert _first_last(_pair_columns([]), times, n, True).tolist() == [np.inf] * n
    # runs of one set object, as an expert's slices share theirs
    runs = [(op, sets[op // 3]) for op in range(len(times))]
    for first in (True, False):
        got = _first_last(_pair_columns(runs), times, n, first)
        assert np.array_equal(got, _first_last_reference(runs, times, n, first))


def test_token_set_length_is_counted_once_and_right() -> None:
    ts = TokenSet.normalize([(0, 3), (7, 7), (10, 12)])
    assert len(ts) == 8 == len(list(ts))
    assert len(TokenSet(())) == 0
    assert ts == TokenSet(((0, 3), (7, 7), (10, 12)))  # the cached count is not a field


def test_gc_is_paused_and_restored() -> None:
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # a caller's own setting survives
    finally:
        gc.enable()


def test_impossible_batch_is_rejected_before_its_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_trace(*args: object) -> None:
        raise AssertionError("the trace of an impossible batch was drawn")

    monkeypatch.setattr(moec.bench._Workloads, "trace", no_trace)
    with pytest.raises(ScheduleError, match=r"needs at least 3072000000 bytes .* 250000 home"):
        run_bench("qwen3-30b-a3b", "fsedp-2x2", [1_000_000], ["ep"])


@pytest.mark.parametrize("strategy", ["ep", "tp", "fsedp"])
def test_early_rejection_only_rejects_what_lowering_rejects(strategy: str) -> None:
    # hidden 10, fp16 tokens: x + y of one home token is 60 bytes; 4 dies
    sram = 6000
    target = load_target("fsedp-2x2", {"sram_bytes_per_die": sram})
    ref = TargetRef("fsedp-2x2", (("sram_bytes_per_die", sram),))
    rejected = 0
    for tokens in (64, 256, 400, 404, 512):
        module = moe_module(8, 2, tokens)
        layers = [op.layer for op in module.moe_ops()]
        try:
            check_tokens_fit(layers, target, tokens, "hand")
        except ScheduleError:
            rejected += 1
            with pytest.raises(ScheduleError, match="does not fit SRAM"):
                lower(module, ref, strategy)
    assert rejected == 2  # 404 and 512 tokens: 101 and 128 home tokens, over 6000 bytes


def test_run_verifies_the_program_and_its_expansion_once_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = importlib.import_module("moec.backends.interp.simulate")
    import moec.run
    from moec.ir.stream import load_program

    seen: list[int] = []
    real = sim.verify_program

    def counting(p: object, target: object = None) -> None:
        seen.append(id(p))
        real(p, target)  # type: ignore[arg-type]

    monkeypatch.setattr(sim, "verify_program", counting)
    monkeypatch.setattr(moec.run, "verify_program", counting)
    program = load_program(str(GOLDEN / "tiny_moe.ep.msp"))
    result = moec.run.run_program(program, routing="synth:zipf=1.0,seed=0", base_dir=str(GOLDEN))
    assert seen.count(id(program)) == 1 and len(seen) == 2
    assert result.expanded.num_instructions() > program.num_instructions()


def _timeline_fields(tl: object) -> tuple[object, ...]:
    ledger = tl.energy  # type: ignore[attr-defined]
    names = (
        "start", "end", "kind", "die", "res", "instr", "layer", "island", "busy", "peak_sram",
        "peak_sram_slots", "peak_sram_activations", "peak_slot_bytes", "makespan", "events",
        "dram_bytes", "link_bytes", "host_bytes",
    )  # fmt: skip
    return (*(getattr(tl, n) for n in names), ledger.joules, ledger.by_op)


TINY = sorted(p.name for p in GOLDEN.glob("tiny*.msp"))


@pytest.mark.parametrize("name", TINY)
def test_batched_builder_times_every_golden_as_the_handlers_one_by_one(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The builder's shortcuts (a micro-slice's three ops in one step) against the reference:
    each opcode's handler called one instruction at a time; the same timeline to the bit."""
    from moec.backends.interp.opgraph import Builder
    from moec.backends.interp.timing import run_timing
    from moec.ir.stream import load_program
    from moec.run import run_program

    program = load_program(str(GOLDEN / name))
    res = run_program(program, routing="synth:zipf=1.0,seed=0", base_dir=str(GOLDEN))
    assert res.expanded is not None
    target = res.timeline.target
    fast = run_timing(res.expanded, target)
    monkeypatch.setattr(Builder, "batch_slices", False)
    ref = run_timing(res.expanded, target)
    assert len(fast.start) == len(ref.start) > 0
    assert repr(_timeline_fields(fast)) == repr(_timeline_fields(ref))


def test_streamed_slices_are_built_as_chains() -> None:
    """The golden comparison above holds because the chain path is taken: an EP program's
    streamed micro-slices go through :func:`slice_run`, all of them (none falls back)."""
    import moec.backends.interp.slice_chain as chain_mod
    from moec.backends.interp.opgraph import SLICE_CHAIN
    from moec.backends.interp.timing import run_timing
    from moec.ir.stream import Load, load_program
    from moec.run import run_program

    program = load_program(str(GOLDEN / "tiny_moe.ep.msp"))
    res = run_program(program, routing="synth:zipf=1.0,seed=0", base_dir=str(GOLDEN))
    assert res.expanded is not None
    added: list[int] = []
    real, ends = SLICE_CHAIN[0]

    def counted(b: object, s: object, ins: list[object], j: int) -> int:
        after = real(b, s, ins, j)  # type: ignore[arg-type]
        added.append((after - j) // 5)
        return after

    SLICE_CHAIN[0] = (counted, ends)
    try:
        run_timing(res.expanded, res.timeline.target)
    finally:
        SLICE_CHAIN[0] = (real, ends)
    loads = sum(isinstance(i, Load) for st in res.expanded.streams for i in st.instrs)
    assert chain_mod.slice_run is real
    assert added and all(added) and sum(added) == loads
    assert len(added) < loads  # runs of several slices, not one call per slice


@pytest.mark.parametrize(
    ("tokens", "experts", "k"), [(512, 256, 8), (300, 16, 2), (40, 8, 8), (9, 3, 1)]
)
def test_top_k_is_the_stable_sort_prefix(tokens: int, experts: int, k: int) -> None:
    """The synthetic router's partial top-k against the full stable argsort it replaces, on
    distinct logits and on rounded ones full of ties (the rows that fall back)."""
    from moec.ir.routing_synth import _top_k

    rng = np.random.default_rng(tokens)
    for logits in (
        rng.gumbel(size=(tokens, experts)),
        np.round(rng.normal(size=(tokens, experts)), 1),
    ):
        ref = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        assert np.array_equal(_top_k(logits, k), ref)


def test_an_uncompressed_trace_reads_back_the_same(tmp_path: Path) -> None:
    """``moec bench`` writes its calibration sample without deflate; it must read back equal."""
    from moec.ir.routing import load_trace, save_trace
    from moec.ir.routing_synth import synth_zipf

    trace = synth_zipf(3, 16, 2, 33, zipf=1.0, seed=5, num_dies=3, model="tiny")
    save_trace(trace, tmp_path / "a.npz")
    save_trace(trace, tmp_path / "b.npz", compress=False)
    a, b = load_trace(str(tmp_path / "a.npz")), load_trace(str(tmp_path / "b.npz"))
    assert (tmp_path / "b.npz").stat().st_size > (tmp_path / "a.npz").stat().st_size
    for x, y in zip(a.layers, b.layers, strict=True):
        assert np.array_equal(x.ids, y.ids) and np.array_equal(x.gates, y.gates)
        assert np.array_equal(x.home_die, y.home_die) and x.name == y.name


def test_batched_builder_gives_the_whole_expert_strategies_the_same_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Runs of streamed micro-slices (:func:`slice_run`) against the handlers one instruction
    at a time, on real-scale layers of every whole-expert strategy (shared experts, remote
    channels, layer-by-layer carry): the same report, energy and SRAM to the last digit."""
    from moec.backends.interp.opgraph import Builder
    from moec.bench import run_bench
    from moec.compiler.bench.report import rows_json

    def report() -> str:
        return rows_json(
            run_bench(
                "deepseek-moe-16b", "fsedp-3x3", [64], ["ep", "tp", "hydra", "eplb"], layers=2
            )
        )

    fast = report()
    monkeypatch.setattr(Builder, "batch_slices", False)
    assert fast == report()


@pytest.mark.parametrize(
    "tags", [[-1] * 7, [], [-1, 2, 2, -1, 0, 2, -1], [3, -1, -1, 3], np.array([-1, 1, -1, 1])]
)
def test_tag_spans_match_the_per_op_reference(tags: Any) -> None:
    """Each tag's span (the untagged shortcut taken for a list of -1 only) against the spans
    widened op by op, in the order the tags first appear."""
    start = [float(k) for k in range(len(tags))]
    end = [s + 0.5 * (k % 3 + 1) for k, s in enumerate(start)]
    ref: dict[int, tuple[float, float]] = {}
    for tag, s, e in zip(list(tags), start, end, strict=True):
        if tag >= 0:
            lo, hi = ref.get(int(tag), (s, e))
            ref[int(tag)] = (min(lo, s), max(hi, e))
    got = tag_spans(tags, start, end)
    assert got == ref and list(got) == list(ref)


def test_layer_bytes_read_each_instruction_once() -> None:
    """``_nbytes``: the moved ops' bytes, 0 for an instruction without the field."""
    instrs: list[Any] = [Load(0, 0, SliceRef("moe0", 0, 0), 64), None, Free(0), Send(1, 32)]
    assert _nbytes(instrs, [0, 3]).tolist() == [64, 32]
    assert _nbytes(instrs, [3, 1, 2, 0]).tolist() == [32, 0, 0, 64]
    assert _nbytes(instrs, []).tolist() == []


@pytest.mark.parametrize("name", ["tiny_deepseek.fsedp-r5.msp", "tiny_deepseek.ep.msp"])
def test_one_layer_part_sums_as_the_layers_gathered_by_op(name: str) -> None:
    """``layer_parts`` of a timeline with one MoE layer (a layered run's part: masks over the
    columns) against the general path (each layer's ops gathered by a sort), for each layer
    of a whole run: the other layers' ops untagged, the same figures to the bit."""
    res = run_program(
        load_program(str(GOLDEN / name)), base_dir=str(GOLDEN),
        routing="synth:zipf=1.0,seed=0", allow_overflow=True, layered=False,
    )  # fmt: skip
    tl = res.timeline
    whole = {p.layer: p for p in summary._layers(tl, np.asarray(tl.layer, np.int64))}
    assert len(whole) > 1
    for k, ref in whole.items():
        only = dataclasses.replace(tl, layer=np.where(np.asarray(tl.layer) == k, k, -1))
        (got,) = summary.layer_parts(only)
        assert repr(got) == repr(ref) and got.busy.tobytes() == ref.busy.tobytes()
        assert [np.float64(j).tobytes() for j in got.joules] == [
            np.float64(j).tobytes() for j in ref.joules
        ]
