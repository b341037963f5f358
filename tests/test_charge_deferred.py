"""charge_deferred (token buffering's catch-up ops moved out of their layers) against the
op-by-op walk it replaced, on list and array timelines of a multi-layer fsedp-buf run."""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Any

import numpy as np

from moec.backends.interp import simulate
from moec.backends.interp.expand.fsedp_deferred import _catchup, _ids, charge_deferred
from moec.backends.interp.timing import Timeline, run_timing
from moec.bench import _Workloads
from moec.compiler.lower import lower
from moec.ir.stream import TargetRef
from moec.ir.target import load_target


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


def test_charge_deferred_equals_the_op_by_op_walk() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = _Workloads("synth:zipf=1.2,seed=3", "sample", tmp)
        module = work.module("qwen3-30b-a3b", 3, "")
        trace = work.trace("qwen3-30b-a3b", 3, 64, 4)
        program = lower(module, TargetRef("fsedp-2x2"), "fsedp-buf", {"slack": "0.5"}, trace)
    target = load_target("fsedp-2x2")
    expanded = simulate(program, target=target, routings=trace, allow_overflow=True).expanded
    assert expanded is not None
    tl = run_timing(expanded, target)
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
