"""The SRAM accounting's shortcuts (backends/interp/sram.py) against its reference path.

Two shortcuts keep the peaks the same while doing less: each distinct token set is expanded
once per run (``TokenIndex``) instead of once per rule that reads it, and the per-(item, token)
grouping of chunked dispatch is skipped when no token is received (or accumulated into) again
after a use (or a send) of it (``_reopened``). The reference expands every set with
``_ranges`` and always runs the grouping; both must give every die's peak, its split and the
slot peak to the byte, on plain and chunked dispatch, with both outcomes of the check taken.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from strategy_cases import moe_module

import moec.backends.interp.sram as sram
from moec.backends.interp import simulate
from moec.backends.interp.timing import run_timing
from moec.compiler.lower import lower
from moec.ir.routing_synth import synth_zipf
from moec.ir.stream import Program, TargetRef, TokenSet, load_program
from moec.ir.target import Target
from moec.run import run_program

GOLDEN = Path(__file__).parent / "golden" / "msp"
EXPERTS, TOP_K, TOKENS, SLICES = 16, 2, 512, 4
TRACE = synth_zipf(1, EXPERTS, TOP_K, TOKENS, 0.0, 0, 4, layer_names=["moe0"])


def _chunked(strategy: str) -> tuple[Program, Target]:
    """A chunked-dispatch program (``window=1``), expanded, and its target."""
    module = moe_module(EXPERTS, TOP_K, TOKENS, hidden=64, ffn=128)
    options = {"slices": str(SLICES), "window": "1"}
    res = simulate(lower(module, TargetRef("fsedp-2x2"), strategy, options, TRACE), routings=TRACE)
    assert res.expanded is not None
    return res.expanded, res.timeline.target


def _golden(name: str) -> tuple[Program, Target]:
    res = run_program(
        load_program(str(GOLDEN / name)), routing="synth:zipf=1.0,seed=0", base_dir=str(GOLDEN)
    )
    assert res.expanded is not None
    return res.expanded, res.timeline.target


def _peaks(p: Program, target: Target) -> tuple[list[int], ...]:
    tl = run_timing(p, target)
    return (tl.peak_sram, tl.peak_sram_slots, tl.peak_sram_activations, tl.peak_slot_bytes)


def _counting(seen: list[bool]) -> Callable[..., bool]:
    reopened = sram._reopened

    def counted(*a: Any, **k: Any) -> bool:
        seen.append(reopened(*a, **k))
        return seen[-1]

    return counted


@pytest.mark.parametrize(
    "source", ["ep-chunked", "tp-chunked", "tiny_moe.ep.msp", "tiny_deepseek.eplb.msp"]
)
def test_sram_shortcuts_give_the_reference_peaks(
    source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, target = _golden(source) if source.endswith(".msp") else _chunked(source.split("-")[0])
    seen: list[bool] = []
    monkeypatch.setattr(sram, "_reopened", _counting(seen))
    fast = _peaks(p, target)
    monkeypatch.setattr(sram, "_reopened", lambda *a, **k: True)
    monkeypatch.setattr(sram.TokenIndex, "ranges", lambda self, sets: sram._ranges(sets))
    monkeypatch.setattr(sram.TokenIndex, "tokens", lambda self, sets: sram._ranges(sets)[0])
    ref = _peaks(p, target)
    assert fast == ref
    assert max(fast[0]) > 0
    if source.endswith("chunked"):
        assert True in seen  # a token received again after a gemm of it: the grouping ran


def test_the_check_skips_the_grouping_where_no_token_is_reopened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EP on a mesh relays tokens through dies that also compute them: a die receives a token
    twice, but never after using it, so the check is False and the first-to-last rule holds."""
    p, target = _golden("tiny_moe.ep.msp")
    seen: list[bool] = []
    monkeypatch.setattr(sram, "_reopened", _counting(seen))
    run_timing(p, target)
    assert seen and not any(seen)


def test_token_index_expands_as_the_ranges() -> None:
    rng = np.random.default_rng(0)
    sets = [
        TokenSet.of(rng.choice(50, size=int(k), replace=False).tolist()) for k in (0, 3, 17, 50)
    ]
    sets += [sets[1], TokenSet(sets[2].ranges), TokenSet(())]  # shared, equal, empty
    index = sram.TokenIndex()
    for take in (sets, sets[::-1], sets[:1], [], sets[2:4]):
        got, ref = index.ranges(take), sram._ranges(take)
        assert all(
            np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(got, ref, strict=True)
        )


def test_distinct_tokens_mask_as_set_by_set() -> None:
    """A mask from ``distinct_tokens`` (fresh sets as one array, known ones from the index)
    against the union of each set's tokens; the fresh sets land in the index as ``_ranges``
    expands each alone."""
    rng = np.random.default_rng(2)
    sets = [
        TokenSet.of(rng.choice(64, size=int(k), replace=False).tolist()) for k in (0, 5, 20, 64)
    ]
    sets += [sets[1], TokenSet(sets[2].ranges), TokenSet(())]  # shared, equal, empty
    index = sram.TokenIndex()
    for take in (sets[:3], sets, sets[::-1], [], sets[4:], sets[1:2]):
        mask = np.zeros(64, dtype=bool)
        mask[index.distinct_tokens(take)] = True
        ref = np.zeros(64, dtype=bool)
        for ts in take:
            ref[list(ts)] = True
        assert np.array_equal(mask, ref)
        assert np.array_equal(sram._mask(take, 64, index), ref)
        for ts, a in zip(take, index.arrays(take), strict=True):
            assert a.dtype == np.int64 and np.array_equal(a, sram._ranges([ts])[0])


def test_repeats_says_whether_a_token_appears_twice() -> None:
    rng = np.random.default_rng(1)
    for size in (0, 1, 2, 5, 40):
        for high in (1, 3, 100):
            tokens = rng.integers(0, high, size=size).astype(np.int64)
            assert sram._repeats(tokens) == (tokens.size > np.unique(tokens).size)


@pytest.mark.parametrize("held", [0.0, 0.3, 1.0])
def test_fill_columns_reads_the_records_as_the_reference(held: float) -> None:
    """The flat fill records (die, fill op, free op or -1) as columns, against one record at
    a time, with ``closed`` fills after them; ``fills`` a list or typed."""
    rng = np.random.default_rng(int(held * 10))
    fills: list[int] = []
    for _ in range(200):
        die, op = int(rng.integers(0, 8)), int(rng.integers(0, 1000))
        fills += (die, op, -1 if rng.random() < held else int(rng.integers(0, 1000)))
    closed = rng.integers(0, 1000, size=3 * 50).tolist()
    typed = array("q", fills)  # the builder's fills: typed
    for f, c in ((fills, closed), (fills, []), ([], closed), ([], []), (typed, closed)):
        got = sram._fill_columns(f, c)
        rows = [tuple(f[k : k + 3]) for k in range(0, len(f), 3)]
        rows += [tuple(c[k : k + 3]) for k in range(0, len(c), 3)]
        ref = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        assert all(got[k].size == len(rows) for k in range(3))
        for k in range(3):
            assert got[k].dtype == np.int64 and np.array_equal(got[k], ref[:, k])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_event_order_is_the_lexsort_it_replaced(seed: int) -> None:
    """The peak sweep's event order (time, then byte delta, then as given) against
    ``np.lexsort``: many ties in both keys, zeros of both signs, infinite times, and deltas
    past 2**53 (lexsort itself)."""
    rng = np.random.default_rng(seed)
    n = 3000
    times = rng.integers(0, 40, size=n) * 0.25
    times[rng.random(n) < 0.05] = -0.0
    times[rng.random(n) < 0.02] = np.inf
    deltas = rng.choice(np.array([-8192, -512, 0, 512, 8192, 3]), size=n).astype(np.int64)
    for d in (deltas, deltas * (1 << 40), deltas[:0]):
        t = times[: d.size]
        assert np.array_equal(sram._event_order(t, d), np.lexsort((d, t)))
