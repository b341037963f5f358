"""charge_deferred (token buffering's catch-up ops moved out of their layers) and iteration_ops
against the op-by-op identity walk they replaced, on list and array timelines of multi-layer
fsedp-buf runs: one whose catch-up steps are lists of instructions, one whose are record
streams timed by the compiled relay (their ops' instructions places, not objects)."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from moec.backends.interp import relay_compiled, relay_records, simulate
from moec.backends.interp.expand import fsedp_compiled, fsedp_deferred
from moec.backends.interp.expand.fsedp_deferred import (
    DEFERRED_SUFFIX,
    catchup_instructions,
    catchup_steps,
    charge_deferred,
    iteration_ops,
)
from moec.backends.interp.instr_column import InstrColumn
from moec.backends.interp.timing import Timeline, run_timing
from moec.bench import _Workloads
from moec.compiler.lower import lower
from moec.ir.stream import TargetRef
from moec.ir.stream.program import (
    Free,
    Gemm,
    Load,
    Program,
    Signal,
    SliceRef,
    TokenSet,
    Wait,
)
from moec.ir.target import load_target


def _ids(instrs: Any) -> list[int]:
    """Each op's instruction's ``id`` (0 for a kernel op's not made yet)."""
    return instrs.ids() if isinstance(instrs, InstrColumn) else list(map(id, instrs))


def _first_catchup(instrs: Sequence[Any]) -> int | None:
    for at, piece in relay_records.starts(instrs):
        if isinstance(piece, relay_records.RecordStream):
            continue
        for k, i in enumerate(piece):
            if type(i) is Signal and i.event.endswith(DEFERRED_SUFFIX):
                return at + k
    return None


def _catchup(p: Program) -> tuple[set[int], int]:
    """Session 17's walk: every catch-up instruction made, its id kept; the pairs counted."""
    ids: set[int] = set()
    total = 0
    for st in p.streams:
        k = _first_catchup(st.instrs)
        if k is None:
            continue
        instrs, pairs = catchup_instructions(st.instrs[k:])
        ids.update(id(i) for i in instrs)
        total += pairs
    return ids, total


def _reference(p: Any, tl: Timeline) -> None:
    """The op-by-op walk (session 16's charge_deferred)."""
    ids, total = _catchup(p)
    if not ids:
        return
    spans: dict[int, list[float]] = {}
    for op, i in enumerate(_ids(tl.instr)):
        if i in ids and tl.layer[op] >= 0:
            lo_hi = spans.setdefault(tl.layer[op], [tl.start[op], tl.end[op]])
            lo_hi[0], lo_hi[1] = min(lo_hi[0], tl.start[op]), max(lo_hi[1], tl.end[op])
            tl.layer[op] = -1
    tl.extra["deferred_pairs"] = total
    tl.extra["deferred_s"] = sum(hi - lo for lo, hi in spans.values())


def _buf_run(model: str, target_name: str, tokens: int, slack: str) -> tuple[Any, Timeline]:
    with tempfile.TemporaryDirectory() as tmp:
        work = _Workloads("synth:zipf=1.2,seed=3", "sample", tmp)
        module = work.module(model, 3, "")
        trace = work.trace(model, 3, tokens, 4)
        program = lower(module, TargetRef(target_name), "fsedp-buf", {"slack": slack}, trace)
    target = load_target(target_name)
    expanded = simulate(program, target=target, routings=trace, allow_overflow=True).expanded
    assert expanded is not None
    return expanded, run_timing(expanded, target)


CASES = {
    # catch-up steps as lists of instructions (the kernels off, below)
    "lists": ("qwen3-30b-a3b", "fsedp-2x2", 64, "0.5"),
    # catch-up steps as record streams, timed by the compiled relay (the kernels on)
    "records": ("qwen3-30b-a3b", "fsedp-2x2", 64, "0.5"),
}


@pytest.mark.parametrize("case", CASES)
def test_charge_deferred_equals_the_op_by_op_walk(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # with the kernels the scheduler writes records and the relay's kernel takes them
    monkeypatch.setattr(fsedp_compiled, "COMPILED", case == "records")
    monkeypatch.setattr(relay_compiled, "COMPILED", case == "records")
    expanded, tl = _buf_run(*CASES[case])
    records = sum(
        isinstance(piece, relay_records.RecordStream)
        for mine in catchup_steps(expanded)
        for piece, _, _ in mine
    )  # fmt: skip
    assert (records > 0) == (case == "records")
    kernel_ops = isinstance(tl.instr, InstrColumn) and bool(tl.instr.op0)
    assert kernel_ops == (case == "records")
    limit_ref = np.array(tl.layer, np.int64)
    want = dataclasses.replace(tl, layer=list(tl.layer), extra={})
    _reference(expanded, want)
    assert want.extra["deferred_pairs"] > 0 and len(set(want.layer) - set(tl.layer)) == 0
    assert sum(a != b for a, b in zip(want.layer, tl.layer, strict=True)) > 0  # some moved
    layers_moved = {b for a, b in zip(want.layer, tl.layer, strict=True) if a != b}
    assert len(layers_moved) > 1  # the spans' sum runs over several layers
    for arrays in (False, True):
        got = dataclasses.replace(
            tl,
            layer=np.array(tl.layer, np.int64) if arrays else list(tl.layer),
            start=np.asarray(tl.start) if arrays else list(tl.start),
            end=np.asarray(tl.end) if arrays else list(tl.end),
            extra={},
        )  # fmt: skip
        charge_deferred(expanded, got)
        assert list(got.layer) == want.layer
        assert got.extra == want.extra
        assert repr(got.extra["deferred_s"]) == repr(want.extra["deferred_s"])
    # iteration_ops (a limited run's watch): -1 exactly where the reference moved an op out
    ids = _catchup(expanded)[0]
    limit_ref[np.fromiter(map(ids.__contains__, _ids(tl.instr)), np.bool_, len(tl.instr))] = -1
    events = [f"{m.name}{DEFERRED_SUFFIX}" for m in expanded.layers]
    assert iteration_ops(expanded, tl.layer, tl.instr, events).tolist() == limit_ref.tolist()


def test_record_kinds_are_the_kernels() -> None:
    from moec.backends.interp.expand.fsedp_kernel import RECORD_NAMES

    assert fsedp_deferred._KINDS == RECORD_NAMES


def _records(src: relay_records.Source, die: int, rows: list[tuple[str, int, int]]) -> Any:
    """A record stream of ``rows`` (kind name, slot, trip)."""
    kind = np.asarray([fsedp_deferred._KINDS.index(k) for k, _, _ in rows], np.int8)
    slot = np.asarray([s for _, s, _ in rows], np.int32)
    trip = np.asarray([t for _, _, t in rows], np.int32)
    return relay_records.RecordStream(src, die, kind, slot, np.zeros(len(rows), np.int32), trip)


def test_caught_ops_and_pairs_against_identity_on_crossed_places() -> None:
    """A hand-made die stream and op column with what FSE-DP's runs do not produce: a
    compiled run's transfer overwritten by a Python send of the other side of the barrier,
    pairings across it, a catch-up entry made and held by a Python op, an accum whose slot
    was filled in an earlier stretch, a micro-slice of a shared expert, a step ended by
    another event; the catch-up ops and pairs equal the identity walk's."""
    ts = [TokenSet.span(0, 4), TokenSet.span(2, 7), TokenSet.span(5, 6), TokenSet.span(0, 8)]
    refs = [SliceRef("L", 3, 0), SliceRef("L", 3, 1), SliceRef("L", 5, 0), SliceRef("L", None, 0)]
    src = relay_records.Source(refs, [64] * 4, ts, np.array([0, 0, 1, 2]), 1)
    main = _records(src, 0, [("load", 0, 0), ("gemm", 0, 0), ("act", 0, 0), ("accum", 0, 0),
                             ("recv", 4, 0), ("recv", 5, 0), ("send", 0, 0), ("free", 0, 0)])  # fmt: skip
    late = _records(src, 0, [("load", 1, 1), ("gemm", 1, 1), ("act", 1, 1), ("accum", 1, 1),
                             ("accum", 2, 2), ("recv", 3, 3), ("accum", 3, 3),
                             ("send", 1, 1), ("free", 1, 1), ("recv", 6, 1)])  # fmt: skip
    ev = "L.deferred"
    before = [Load(2, 0, SliceRef("L", 5, 0), 64), Gemm(2, ts[2])]
    after = [Free(3)]
    tail = [Signal("other"), Free(2)]
    stream = relay_records.Chain(
        [before, main, [Signal(ev), Wait(ev, 1), Load(2, 1, SliceRef("L", 5, 0), 64)], late,
         after, tail]
    )  # fmt: skip
    p: Any = SimpleNamespace(streams=[SimpleNamespace(die=0, instrs=stream)])
    col = InstrColumn()
    col += [before[0], before[1], None]
    col.placed(main, np.arange(8))  # ops 3..10 (its recvs': 7, 8)
    col.placed(late, np.arange(10))  # ops 11..20 (its recvs': 16, 20)
    col += [after[0], tail[0], tail[1]]  # ops 21..23
    # a run's recv's transfer named after a Python send: across the barrier, both ways
    list.__setitem__(col, 7, after[0])
    list.__setitem__(col, 16, before[1])
    # and paired with a run's send: across the barrier, both ways, and a Python recv's
    col.point([8], late, [7])
    col.point([20], main, [6])
    col.point([2], late, [7])
    col.append(late[5])  # an entry of late made and held by a Python op (op 24)
    n = len(col)
    got = fsedp_deferred._caught(catchup_steps(p), col, n)
    ids, total = _catchup(p)  # (every catch-up instruction made now)
    want = np.fromiter(map(ids.__contains__, col.ids()), np.bool_, n)
    assert got.tolist() == want.tolist()
    assert fsedp_deferred._caught(catchup_steps(p), col, n).tolist() == want.tolist()
    assert got[[2, 7, 8, 11, 19, 21, 24]].all() and not got[[3, 10, 16, 20, 22, 23]].any()
    # late's accums: e3 tokens 0..3, e5 tokens 2..6 (its slot filled before late), shared none
    assert [fsedp_deferred._pairs(mine) for mine in catchup_steps(p)] == [total] == [9]
