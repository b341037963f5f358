"""The compiled FSE-DP scheduler's record streams read as the instructions the reference writes.

A die's stream kept as the kernel's records (:class:`~moec.backends.interp.relay_records.
RecordStream`) against the same schedule's stream made at once (the compiled relay off): the
same instructions, in any order of reading (an index, a slice, iterating), each the same object
on every read; its columns (tokens, bytes, contents, the walk of :func:`~moec.backends.interp.
layered.walk_part`) the instructions' fields without making them. A :class:`~moec.backends.
interp.relay_records.Chain` reads as its pieces end to end, and the op graph's instruction
column (:class:`~moec.backends.interp.instr_column.InstrColumn`) as the list it stands for.
Skipped where numba is not installed (the records come from the compiled scheduler)."""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Any

import numpy as np
import pytest

from moec.backends.interp import relay_compiled, relay_records
from moec.backends.interp.expand import fsedp_compiled
from moec.backends.interp.expand.fsedp_sched import schedule
from moec.backends.interp.instr_column import InstrColumn
from moec.backends.interp.layered import walk_part
from moec.backends.interp.summary import _nbytes
from moec.ir.stream.program import Accum, Act, Free, Gemm, Load, Recv, Send, Signal, Wait
from moec.ir.stream.values import TokenSet

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("numba") is None, reason="numba (moec[fast]) not installed"
)


@pytest.fixture(scope="module")
def problem() -> Any:
    from test_fsedp_compiled import _problems

    return _problems("fsedp-4x4", "fsedp-paired", 16, 256, 1.0, 3)[0]


def _streams(prob: Any, lazy: bool) -> dict[int, Any]:
    """The compiled scheduler's streams of ``prob``: record streams (the relay forced on) or
    the instructions made at once (the relay off)."""
    prob.machine.free_at[:] = [0.0] * len(prob.machine.free_at)
    old = fsedp_compiled.COMPILED, relay_compiled.COMPILED
    fsedp_compiled.COMPILED, relay_compiled.COMPILED = True, True if lazy else False
    try:
        return schedule(prob, True).streams
    finally:
        fsedp_compiled.COMPILED, relay_compiled.COMPILED = old


def _pairs(problem: Any) -> list[tuple[Any, list[Any]]]:
    lazy, eager = _streams(problem, True), _streams(problem, False)
    assert sorted(lazy) == sorted(eager)
    out = [(lazy[d], eager[d]) for d in sorted(lazy)]
    assert all(type(e) is list for _, e in out)
    assert sum(isinstance(r, relay_records.RecordStream) for r, _ in out) >= 8
    return [(r, e) for r, e in out if isinstance(r, relay_records.RecordStream)]


def test_a_record_stream_reads_as_the_instructions_made_at_once(problem: Any) -> None:
    for rs, eager in _pairs(problem):
        n = len(eager)
        assert len(rs) == n > 100
        # read back to front first: each made where read, a block at a time
        back = [rs[k] for k in range(n - 1, -1, -BLOCK_STEP)]
        assert [repr(i) for i in back] == [repr(eager[k]) for k in range(n - 1, -1, -BLOCK_STEP)]
        assert rs[-1] == eager[-1] and rs[-n] == eager[0]
        assert rs[5:200:7] == eager[5:200:7] and rs[n - 3 : n + 9] == eager[n - 3 :]
        assert rs[::-5] == eager[::-5]
        whole = list(rs)
        assert whole == eager and rs == eager and eager == rs
        assert [type(i) for i in whole] == [type(i) for i in eager]
        assert [repr(i) for i in whole] == [repr(i) for i in eager]
        # one object per instruction, whichever way it is read
        assert all(b is whole[n - 1 - BLOCK_STEP * q] for q, b in enumerate(back))
        assert all(rs[k] is whole[k] for k in range(0, n, 3))
        assert rs[10:20] == whole[10:20] and all(
            a is b for a, b in zip(rs[10:20], whole[10:20], strict=True)
        )
        with pytest.raises(IndexError):
            rs[n]


#: every how many entries the back-to-front read takes one
BLOCK_STEP = 13


def test_a_record_streams_columns_are_its_instructions_fields(problem: Any) -> None:
    for rs, eager in _pairs(problem):
        n = len(eager)
        every = np.arange(n)
        assert not rs.made_ids(every).any()  # nothing made yet
        compute = [k for k, i in enumerate(eager) if isinstance(i, Gemm | Act | Accum)]
        assert rs.tokens(np.asarray(compute)) == [eager[k].tokens for k in compute]
        assert rs.nbytes(every).tolist() == [getattr(i, "nbytes", 0) for i in eager]
        for k, i in enumerate(eager):
            if isinstance(i, Load | Recv):
                assert rs.content(k) == i.content
        assert not rs.made_ids(every).any()  # the columns made none
        first = rs[0]
        ids = rs.made_ids(every)
        assert ids[0] == id(first) and (ids[: relay_records.BLOCK] != 0).all()
        assert not ids[relay_records.BLOCK :].any()


def test_walk_part_reads_record_streams_as_their_instructions(problem: Any) -> None:
    lazy, eager = _streams(problem, True), _streams(problem, False)
    head, tail = [Signal("a"), Wait("a", 16)], [Signal("b")]
    chained = {d: relay_records.Chain([head, s, tail]) for d, s in lazy.items()}
    listed = {d: head + list(s) + tail for d, s in eager.items()}
    assert walk_part(chained) == walk_part(listed) == (True, False)
    assert not any(
        p.made_ids(np.arange(len(p))).any()
        for s in chained.values()
        for p in relay_records.pieces(s)
        if isinstance(p, relay_records.RecordStream)
    )
    # a slot loaded before a record stream frees it; a stream without its sends
    d = next(iter(eager))
    load = next(i for i in eager[d] if isinstance(i, Load))
    last: dict[int, Any] = {}
    for i in eager[d]:
        if isinstance(i, Load | Recv | Free):
            last[i.slot] = i
    q = next(k for k, i in last.items() if isinstance(i, Free))
    before = [dataclasses.replace(load, slot=q)]
    for streams, ref in (
        ({**chained, d: relay_records.Chain([before, lazy[d]])}, {**listed, d: before + eager[d]}),
        (
            {d: [i for i in lazy[d] if not isinstance(i, Send)]},
            {d: [i for i in eager[d] if not isinstance(i, Send)]},
        ),
    ):
        assert walk_part(streams) == walk_part(ref)
    assert walk_part({d: relay_records.Chain([[Load(q + 1000, 0, load.content, 8)], lazy[d]])}) == (
        False,
        False,
    )


def test_a_chain_reads_as_its_pieces_end_to_end(problem: Any) -> None:
    rs, eager = _pairs(problem)[0]
    pieces: list[Any] = [[Signal("a")], rs, [], [Signal("b"), Wait("b", 2)], rs]
    flat = [Signal("a"), *eager, Signal("b"), Wait("b", 2), *eager]
    c = relay_records.Chain(pieces)
    assert len(c) == len(flat) and list(c) == flat and c == flat
    n = len(flat)
    for k in (0, 1, len(eager), len(eager) + 1, len(eager) + 2, n - 1, -1, -n):
        assert c[k] == flat[k]
    for a, b, step in ((0, n, 1), (len(eager) - 2, len(eager) + 6, 1), (3, n, 11), (n, 0, -7)):
        assert c[a:b:step] == flat[a:b:step]
    assert relay_records.Chain([c, [Signal("z")]])[-1] == Signal("z")
    with pytest.raises(IndexError):
        c[n]


def test_the_instruction_column_reads_as_the_list_it_stands_for(problem: Any) -> None:
    rs, eager = _pairs(problem)[0]
    col = InstrColumn()
    ref: list[Any] = []
    col += [None, eager[0]]
    ref += [None, eager[0]]
    entries = np.asarray([3, 3, 4, 7, 7, 7, 9], np.int64)
    col.placed(rs, entries)
    ref += [eager[k] for k in entries.tolist()]
    col.append(Signal("s"))
    ref.append(Signal("s"))
    col.placed(rs, entries + 20)
    ref += [eager[k] for k in (entries + 20).tolist()]
    col.point([2, 11], rs, [30, 31])  # a send's pairing, after its run
    ref[2], ref[11] = eager[30], eager[31]
    col[3] = eager[40]  # the Python relay's pairing
    ref[3] = eager[40]
    ops = list(range(len(ref)))
    assert col.ids(ops).count(0) == 13  # the kernel ops' (none made yet)
    assert col.nbytes(ops, _of_list).tolist() == _nbytes(ref, ops).tolist()
    assert [col[k] for k in ops] == ref and col[-1] == ref[-1] and col[2:9] == ref[2:9]
    assert col == ref and list(col) == ref and repr(col) == repr(ref)
    made = col.ids(ops)
    assert made == [id(x) for x in list(col)]  # read: made, each the same object after
    at = {2: 30, 11: 31, **{4 + q: e for q, e in enumerate(entries[2:].tolist())}}
    assert all(col[k] is rs[e] for k, e in at.items()) and col[3] is eager[40]


def _of_list(objs: list[Any]) -> np.ndarray:
    return np.asarray([getattr(i, "nbytes", 0) for i in objs], np.int64)


@pytest.mark.parametrize("compiled", [False, True])
def test_a_runs_stop_is_the_next_entry_no_run_covers(compiled: bool) -> None:
    if compiled and not relay_compiled.available():
        pytest.skip("numba is not installed")
    stops = relay_records.stops if compiled else relay_records._stops
    gemm = relay_records.GEMM
    rng = np.random.default_rng(7)
    for n in (0, 1, 2, 3, 50, 400):
        for p in (0.0, 0.05, 0.5, 1.0):
            code = rng.integers(1, 8, n).astype(np.int8)
            code[rng.random(n) < p] = 0
            hard = [
                k for k in range(n)
                if code[k] == 0 and gemm not in code[max(k - 2, 0) : k].tolist()
            ]  # fmt: skip
            want = [min([h for h in hard if h >= k], default=n) for k in range(n)]
            assert stops(code).tolist() == want


def test_the_kernels_static_checks_are_the_numpy_ones() -> None:
    if not relay_compiled.available():
        pytest.skip("numba is not installed")
    kernel = relay_records._KERNEL.module
    rng = np.random.default_rng(11)
    chain = np.array([0, 1, 2, 3, 4], np.int8)  # load, gemm, act, accum, free (record kinds)
    for n in (0, 1, 4, 5, 6, 9, 10, 11, 60, 500):
        for p_chain, p_slot in ((0.0, 0.5), (0.6, 0.1), (0.9, 0.0), (0.3, 0.3)):
            kind, slot = [], []
            while len(kind) < n:  # streamed micro-slices, back to back or not, among noise
                if rng.random() < p_chain:
                    kind += chain.tolist()
                    s = int(rng.integers(0, 4))
                    slot += [s if rng.random() >= p_slot else int(rng.integers(0, 4)) for _ in range(5)]
                else:
                    kind.append(int(rng.integers(0, 7)))
                    slot.append(int(rng.integers(0, 4)))
            k = np.asarray(kind[:n], np.int8)
            sl = np.asarray(slot[:n], np.int32)
            trip = rng.integers(0, 6, n).astype(np.int32)
            trip_bytes = np.array([0, 64, 128, 0, 4096, 8], np.int64)
            full = relay_records._OF_RECORD[k]
            nbytes = trip_bytes[trip]
            nbytes[~np.isin(full, (relay_records.RECV, relay_records.SEND, relay_records.LOAD))] = 0
            want = relay_records._checked(full, sl, nbytes)
            got = np.empty(n, np.int8)
            kernel.checked(k, sl, trip, trip_bytes, relay_records._OF_RECORD, np.empty(n, np.int64), got)
            assert got.tolist() == want.tolist()


def test_the_token_counts_of_a_record_source_are_its_sets_sizes(problem: Any) -> None:
    for rs, eager in _pairs(problem):
        size = rs.columns()[5].tolist()
        compute = [k for k, i in enumerate(eager) if isinstance(i, Gemm | Act | Accum)]
        assert compute
        assert [size[k] for k in compute] == [eager[k].tokens.size for k in compute]


def test_a_sources_set_sizes_read_kept_tokens_and_ranges_alike() -> None:
    kept = TokenSet.of([1, 2, 3, 9]).keep_indices(np.array([1, 2, 3, 9], np.int64))
    held = [None, TokenSet.of([4, 5, 7]), kept, TokenSet(()), None]
    want = [0 if h is None else h.size for h in held]
    assert relay_records._sizes(held).tolist() == want == [0, 3, 4, 0, 0]
