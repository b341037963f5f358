"""The compiled relay (:mod:`moec.backends.interp.relay_compiled`) builds the reference's graph.

Its reference is :func:`~moec.backends.interp.relay_chain.relay_run` in Python: every build's
ops, successor lists, records, charges and pairings compared field by field
(``tests/test_relay_chain.py``'s ``_state``), with the compiled FSE-DP scheduler (whose records
the kernel reads) and the kernel forced onto every run it can take, against the same run with
the Python relay, on the tiny FSE-DP goldens and a shape-only model's FSE-DP points (every
variant, slice choice included) on 2x2 and (``-m slow``) 4x4 dies.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("numba")

from test_relay_chain import FSEDP, GOLDEN, _state  # noqa: E402

from moec.backends.interp import opgraph, relay_compiled, relay_records  # noqa: E402
from moec.backends.interp.expand import fsedp_compiled  # noqa: E402
from moec.ir.stream import load_program  # noqa: E402


def _builds(compiled: bool, go: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], int]:
    """Every build's state while ``go()`` runs, and the instructions the kernel took."""
    states: list[str] = []
    taken = [0]
    build, run = opgraph.Builder.build, relay_compiled.run

    def recorded(b: opgraph.Builder) -> None:
        build(b)
        states.append(_state(b))

    def counted(b: Any, s: Any, ins: Any, j: int) -> int | None:
        k = run(b, s, ins, j)
        taken[0] += 0 if k is None else k - j
        return k

    with monkeypatch.context() as m:
        m.setattr(fsedp_compiled, "COMPILED", True)
        m.setattr(relay_compiled, "COMPILED", compiled)
        m.setattr(opgraph.Builder, "build", recorded)
        m.setattr(
            relay_compiled.rc,
            "COMPILED_RUN",
            [(relay_compiled.wanted, counted)],
        )
        go()
    relay_records.clear()
    return states, taken[0]


def _same(go: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, taken = _builds(True, go, monkeypatch)
    ref, none = _builds(False, go, monkeypatch)
    assert taken > 0 and none == 0
    assert len(fast) == len(ref) > 0
    for a, b in zip(fast, ref, strict=True):
        assert a == b


@pytest.mark.parametrize("name", FSEDP)
def test_compiled_relay_builds_every_fsedp_golden_as_the_reference(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moec.run import run_program

    def go() -> None:
        run_program(
            load_program(str(GOLDEN / name)), routing="synth:zipf=1.0,seed=0",
            base_dir=str(GOLDEN),
        )  # fmt: skip

    _same(go, monkeypatch)


@pytest.mark.parametrize("target", ["fsedp-2x2", pytest.param("fsedp-4x4", marks=pytest.mark.slow)])
def test_compiled_relay_builds_fsedp_points_as_the_reference(
    target: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from moec.compiler.cli.main import main

    def go() -> None:
        assert main([
            "bench", "--model", "phi3.5-moe", "--target", target, "--tokens", "64",
            "--strategies", "fsedp,fsedp-buf,fsedp-naive,fsedp-paired,fsedp-r5", "--json",
        ]) in (0, None)  # fmt: skip

    _same(go, monkeypatch)
    capsys.readouterr()


def test_compiled_relay_acts_keep_every_x_set_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled relay run's x reads carry their distinct sets (what the SRAM mask reads,
    :meth:`~moec.backends.interp.layer_acts.LayerActs.x_use_sets_once`): the same set objects
    as the reads themselves, each once per run."""
    from moec.run import run_program

    checked = [0]
    build = opgraph.Builder.build

    def recorded(b: opgraph.Builder) -> None:
        build(b)
        for la in b.acts.values():
            once, every = la.x_use_sets_once(), la.x_use_columns()[1]
            assert {id(ts) for ts in once} == {id(ts) for ts in every}
            for k, sets in la.x_once.items():
                assert len(sets) == len({id(ts) for ts in sets})
                assert {id(ts) for ts in sets} == {id(ts) for ts in la.x_chunks[k][1]}
                checked[0] += 1

    with monkeypatch.context() as m:
        m.setattr(fsedp_compiled, "COMPILED", True)
        m.setattr(relay_compiled, "COMPILED", True)
        m.setattr(opgraph.Builder, "build", recorded)
        run_program(
            load_program(str(GOLDEN / FSEDP[0])), routing="synth:zipf=1.0,seed=0",
            base_dir=str(GOLDEN),
        )  # fmt: skip
    relay_records.clear()
    assert checked[0] > 0
