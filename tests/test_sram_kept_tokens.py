"""Token sets that keep their tokens as an array (FSE-DP's units) and the SRAM accounting that
reads them: the same tokens as expanding the ranges, and the same peaks either way."""

from __future__ import annotations

import numpy as np
import pytest

import moec.backends.interp.sram as sram
from moec.backends.interp.expand.fsedp import _tokens_per_die
from moec.ir.stream.values import TokenSet


def _pairs(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens, dies = 64, 4
    experts = rng.integers(0, 6, size=200)
    toks = rng.integers(0, tokens, size=200)
    home = np.repeat(np.arange(dies), tokens // dies)
    return experts, toks, home


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_units_keep_their_sets_tokens(seed: int) -> None:
    groups = _tokens_per_die(*_pairs(seed))
    assert groups
    for per_die, counts in groups.values():
        for d, ts in per_die.items():
            kept = ts.known_indices()
            assert kept is not None and kept.dtype == np.int64
            assert kept.tolist() == ts.to_list()
            assert len(kept) == counts[d]


def test_kept_array_is_not_part_of_the_value() -> None:
    ts = TokenSet(((0, 3), (7, 7)))
    plain = TokenSet(((0, 3), (7, 7)))
    assert ts.known_indices() is None
    ts.keep_indices(np.array([0, 1, 2, 3, 7], np.int64))
    assert ts == plain and hash(ts) == hash(plain) and repr(ts) == repr(plain)


@pytest.mark.parametrize("seed", [0, 1])
def test_token_index_reads_kept_arrays_as_expanded(seed: int) -> None:
    """A mix of sets with and without kept arrays: every TokenIndex answer as with none
    kept (the same sets rebuilt without their arrays)."""
    kept = [ts for per_die, _ in _tokens_per_die(*_pairs(seed)).values() for ts in per_die.values()]
    plain = [TokenSet(ts.ranges) for ts in kept]
    extra = [TokenSet.of([1, 2, 3, 40]), TokenSet.span(10, 20)]
    mixed = [x for pair in zip(kept, extra * len(kept), strict=False) for x in pair] + kept[:3]
    copy = {id(ts): TokenSet(ts.ranges) for ts in mixed}  # one copy per object, as mixed has
    ref = [copy[id(ts)] for ts in mixed]
    for with_, without in ((kept, plain), (mixed, ref)):
        a, b = sram.TokenIndex(), sram.TokenIndex()
        assert (
            np.sort(a.distinct_tokens(with_)).tolist()
            == np.sort(b.distinct_tokens(without)).tolist()
        )
        for x, y in zip(a.ranges(with_), b.ranges(without), strict=True):
            assert x.tolist() == y.tolist()
        assert a.tokens(with_).tolist() == b.tokens(without).tolist()
        assert sram._mask(with_, 64).tolist() == sram._mask(without, 64).tolist()
