"""The op graph's packed columns (:mod:`moec.backends.interp.packed_ops`): a compiled relay
run's ``kind``, ``dur`` and ``res`` kept as arrays give the same columns as the lists the
reference build appends."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from moec.backends.interp import opgraph, packed_ops
from moec.backends.interp.opgraph import COMPUTE, LOAD, SYNC, OpGraph


def test_columns_and_unpack_interleave_packed_runs_with_appended_ops() -> None:
    g = OpGraph()
    g.add(COMPUTE, 1.5, 0, 0, None)
    packed_ops.pack(g, np.array([LOAD, SYNC]), np.array([2.0, 0.25]), np.array([3, -1]))
    g.die += [0, 0]
    g.instr += [None, None]
    g.layer.extend((-1, -1))
    g.add(SYNC, 0.0, -1, 1, None)
    g.add(LOAD, 7.0, 2, 1, None)
    packed_ops.pack(g, np.array([COMPUTE]), np.array([0.5]), np.array([1]))
    assert len(g.kind) == len(g.dur) == len(g.res) == 6
    assert g.kind[1] == -1 and math.isnan(g.dur[2])  # placeholders until unpacked
    kind, dur, res = packed_ops.columns(g)
    assert kind.dtype == np.int64 and dur.dtype == np.float64 and res.dtype == np.int64
    assert kind.tolist() == [COMPUTE, LOAD, SYNC, SYNC, LOAD, COMPUTE]
    assert dur.tolist() == [1.5, 2.0, 0.25, 0.0, 7.0, 0.5]
    assert res.tolist() == [0, 3, -1, -1, 2, 1]
    packed_ops.unpack(g)
    assert g.packed == []
    assert (g.kind, g.dur, g.res) == (kind.tolist(), dur.tolist(), res.tolist())
    assert all(type(x) is int for x in g.kind + g.res) and all(type(x) is float for x in g.dur)


def test_take_columns_drops_the_graphs_lists() -> None:
    g = OpGraph()
    g.add(LOAD, 3.0, 4, 0, None)
    packed_ops.pack(g, np.array([SYNC]), np.array([0.5]), np.array([-1]))
    want = [c.tolist() for c in packed_ops.columns(g)]
    assert (
        [c.tolist() for c in packed_ops.take_columns(g)]
        == want
        == [[LOAD, SYNC], [3.0, 0.5], [4, -1]]
    )
    assert g.packed == [] and not hasattr(g, "kind") and not hasattr(g, "dur")
    assert g.die == [0]  # the other columns stay


def test_columns_without_packed_runs_convert_the_lists() -> None:
    g = OpGraph()
    g.add(LOAD, 3.0, 4, 0, None)
    kind, dur, res = packed_ops.columns(g)
    assert (kind.tolist(), dur.tolist(), res.tolist()) == ([LOAD], [3.0], [4])


pytest.importorskip("numba")


def _columns(compiled: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[bytes], int]:
    """Each build's three columns as bytes (the packed path when ``compiled``: every relay run
    the kernel takes) on phi3.5-moe's FSE-DP variants, and how many runs were packed."""

    from moec.backends.interp import relay_compiled, relay_records
    from moec.backends.interp.expand import fsedp_compiled
    from moec.compiler.cli.main import main

    out: list[bytes] = []
    runs = [0]
    build = opgraph.Builder.build

    def recorded(b: Any) -> None:
        build(b)
        runs[0] += len(b.g.packed)
        out.append(b"|".join(c.tobytes() for c in packed_ops.columns(b.g)))

    with monkeypatch.context() as m:
        m.setattr(fsedp_compiled, "COMPILED", True)
        m.setattr(relay_compiled, "COMPILED", compiled)
        m.setattr(relay_compiled.rc, "COMPILED_RUN", [(relay_compiled.wanted, relay_compiled.run)])
        m.setattr(opgraph.Builder, "build", recorded)
        assert main([
            "bench", "--model", "phi3.5-moe", "--target", "fsedp-2x2", "--tokens", "64",
            "--strategies", "fsedp,fsedp-naive,fsedp-r5", "--json",
        ]) in (0, None)  # fmt: skip
    relay_records.clear()
    return out, runs[0]


def test_packed_columns_are_the_reference_lists_as_arrays(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fast, packed = _columns(True, monkeypatch)
    ref, none = _columns(False, monkeypatch)
    assert packed > 0 and none == 0
    assert len(fast) == len(ref) > 0
    assert fast == ref
    capsys.readouterr()
