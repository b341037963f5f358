"""The shapes of streamed micro-slices the expansion hands the builder (:mod:`chain_hints`)."""

from __future__ import annotations

import pytest

from moec.backends.interp import chain_hints
from moec.ir.stream import Load, TokenSet
from moec.ir.stream.program import Accum, Act, Free, Gemm, SliceRef


def _block(n: int, slot0: int = 0) -> list[object]:
    ts = TokenSet.span(0, 8)
    out: list[object] = []
    for j in range(n):
        s = slot0 + j % 2
        out += [Load(s, 0, SliceRef("moe0", 1, j), 64), Gemm(s, ts), Act(s, ts), Accum(s, ts)]
        out.append(Free(s))
    return out


def test_a_block_is_taken_once_and_only_where_it_stands_unchanged() -> None:
    chain_hints.clear()
    block = _block(4)
    chain_hints.put(block, [0, 1, 2, 3])
    edited = ["x", *block[:7], Free(5), *block[8:]]
    assert chain_hints.take(edited, 1) is None  # an instruction of the block replaced
    assert chain_hints.take(block[:-1], 0) is None  # cut short
    assert chain_hints.take(["x", *block, "y"], 1) == [0, 1, 2, 3]
    assert chain_hints.take(block, 0) is None  # taken: the entry is gone
    chain_hints.put(block, [0, 0, 0, 0])
    chain_hints.clear()
    assert not chain_hints.BLOCKS and chain_hints.take(block, 0) is None


def test_a_run_drops_what_it_did_not_take() -> None:
    """Every build ends by dropping the entries (nothing keeps an unbuilt block alive)."""
    from moec.bench import run_bench

    chain_hints.put(_block(4), [0, 1, 2, 3])
    run_bench("deepseek-moe-16b", "fsedp-3x3", [16], ["ep"], layers=1)
    assert not chain_hints.BLOCKS


@pytest.mark.parametrize("strategy", ["ep", "tp", "hydra", "eplb"])
def test_the_hinted_chains_time_as_the_checked_ones_and_the_handlers(
    strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real-scale layers (shared experts, remote channels, two layers carried): the report with
    the expansion's shapes taken (every streamed slice of a block of four or more), without
    them (chain by chain) and with the handlers one instruction at a time, the same bytes."""
    import moec.backends.interp.slice_chain as chain_mod
    from moec.backends.interp.opgraph import Builder
    from moec.bench import run_bench
    from moec.compiler.bench.report import rows_json

    taken: list[int] = []
    real = chain_mod.take

    def counted(ins: list[object], j: int) -> list[int] | None:
        reps = real(ins, j)
        if reps is not None:
            taken.append(len(reps))
        return reps

    def report() -> str:
        rows = run_bench("deepseek-moe-16b", "fsedp-3x3", [64], [strategy], layers=2)
        return rows_json(rows)

    monkeypatch.setattr(chain_mod, "take", counted)
    hinted = report()
    assert taken and sum(taken) > 4 * len(taken)  # blocks of several chains were taken
    monkeypatch.setattr(chain_hints, "put", lambda block, reps: None)
    n = len(taken)
    assert hinted == report()
    assert len(taken) == n  # none taken without the expansion's shapes
    monkeypatch.setattr(Builder, "batch_slices", False)
    assert hinted == report()
