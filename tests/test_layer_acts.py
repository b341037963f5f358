"""A layer's acts whose ``x_uses`` and ``accums`` come as columns (:meth:`LayerActs.add_x_uses`,
:meth:`LayerActs.add_accums`, the compiled relay's way) between pairs appended to the lists
(the reference builders' way): the same items in the same order, the same text, and the same
SRAM events as the acts built from pairs alone."""

from __future__ import annotations

import numpy as np
import pytest

import moec.backends.interp.sram as sram
from moec.ir.stream.values import TokenSet


def _acts(seed: int, chunked: bool) -> sram.LayerActs:
    """One die's acts of a layer of 32 tokens: slices (gemm, accum, h) over a few shared
    token sets, some received x and sent y (chunked dispatch: tokens received again after a
    use). ``chunked``: every other batch of slices handed as columns."""
    rng = np.random.default_rng(seed)
    sets = [TokenSet.of(sorted(set(rng.integers(0, 32, 6).tolist()))) for _ in range(4)]
    la = sram.LayerActs()
    op = 0
    for batch in range(6):
        k = int(rng.integers(1, 5))
        gemms = np.arange(op, op + 4 * k, 4, dtype=np.int64)
        picked = [sets[int(i)] for i in rng.integers(0, len(sets), k)]
        la.add_ops(np.arange(op, op + 4 * k, dtype=np.int64))
        la.add_h(np.stack((gemms, gemms + 2, np.full(k, 100 + batch)), axis=1).ravel())
        if chunked and batch % 2:
            # every other chunk with its distinct sets (the compiled relay's way)
            once = list({id(ts): ts for ts in picked}.values()) if batch % 4 == 1 else None
            la.add_x_uses(gemms.copy(), picked, once)
            la.add_accums(gemms + 2, list(picked))
        else:
            la.x_uses += zip(gemms.tolist(), picked, strict=True)
            la.accums += zip((gemms + 2).tolist(), picked, strict=True)
        op += 4 * k
        # a block of x received and a block of y sent after each batch
        ts = sets[int(rng.integers(0, len(sets)))]
        la.ops += [op, op + 1, op + 2]
        la.recv_x_start.append((op, ts))
        la.recv_x.append((op + 1, ts))
        la.send_y.append((op + 2, ts))
        op += 3
    return la


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_columns_give_the_pairs_events(seed: int) -> None:
    chunked, plain = _acts(seed, True), _acts(seed, False)
    assert chunked.x_chunks and chunked.accum_chunks  # the columns' path taken
    assert not plain.x_chunks and not plain.accum_chunks
    assert repr(chunked) == repr(plain)
    ops, sets = chunked.x_use_columns()
    assert list(zip(ops.tolist(), sets, strict=True)) == plain.x_uses
    ops, sets = chunked.accum_columns()
    assert list(zip(ops.tolist(), sets, strict=True)) == plain.accums
    n_ops = len(plain.op_array())
    rng = np.random.default_rng(seed + 10)
    start = np.sort(rng.random(n_ops)) * 100
    end = start + rng.random(n_ops)
    span = (float(start.min()), float(end.max()))
    got = sram._activation_events(chunked, 32, 64, "bf16", start, end, span, sram.TokenIndex())
    want = sram._activation_events(plain, 32, 64, "bf16", start, end, span, sram.TokenIndex())
    assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
    assert len(want[0]) > 0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_x_use_sets_once_has_every_set_object(seed: int) -> None:
    chunked, plain = _acts(seed, True), _acts(seed, False)
    assert chunked.x_once  # a chunk with its distinct sets
    once, every = chunked.x_use_sets_once(), chunked.x_use_columns()[1]
    assert {id(ts) for ts in once} == {id(ts) for ts in every}
    dropped = sum(len(chunked.x_chunks[k][1]) - len(v) for k, v in chunked.x_once.items())
    assert len(once) == len(every) - dropped  # a given chunk's sets as given, others whole
    index = sram.TokenIndex()
    assert (sram._mask(once, 32, index) == sram._mask(plain.x_use_columns()[1], 32)).all()
