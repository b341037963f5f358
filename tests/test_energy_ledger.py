"""The energy ledger's block log (:class:`moec.backends.interp.energy.EnergyLedger`): charges
logged as shared blocks and added at a flush give the same joules, to the bit, as the same
charges added one by one in order, and the per-op rows keep the charge order."""

from __future__ import annotations

import random

import numpy as np

from moec.backends.interp.energy import EnergyLedger
from moec.ir.energy import PARTS


def _reference(dies: int, charges: list[tuple[int, int, int, float]]) -> list[list[float]]:
    joules = [[0.0] * len(PARTS) for _ in range(dies)]
    for _, d, k, j in charges:
        joules[d][k] += j
    return joules


def test_blocks_add_like_charges_one_by_one() -> None:
    rng = random.Random(7)
    dies = 3
    # a few shapes, reused many times (as memoized micro-slices are), with values whose sums
    # depend on the order of the additions
    blocks = [
        tuple(
            (
                o,
                rng.randrange(dies),
                rng.randrange(len(PARTS) - 1),
                rng.random() * 10 ** rng.randint(-9, 3),
            )
            for o in range(rng.randint(1, 8))
        )
        for _ in range(5)
    ]
    led = EnergyLedger(dies)
    expected: list[tuple[int, int, int, float]] = []
    first = 0
    for step in range(2000):
        if step % 97 == 0:  # a one-off charge between the blocks
            d, j = rng.randrange(dies), rng.random()
            led.charge(d, "compute", j, first)
            expected.append((first, d, PARTS.index("compute"), j))
        else:
            blk = blocks[rng.randrange(len(blocks))]
            led.log(first, blk)
            expected += [(first + o, d, k, j) for o, d, k, j in blk]
        first += 9
        if step == 1000:  # a flush in the middle (a layered run's part ends)
            assert led.joules == _reference(dies, expected)
    assert led.by_op == expected
    assert led.joules == _reference(dies, expected)


def test_drop_rows_keeps_the_joules_and_forgets_the_ops() -> None:
    led = EnergyLedger(2)
    blk = ((0, 0, 1, 0.1), (1, 1, 2, 0.2))
    led.log(10, blk)
    led.drop_rows()
    led.log(20, blk)
    assert led.by_op == [(20, 0, 1, 0.1), (21, 1, 2, 0.2)]
    assert led.joules == _reference(2, [(0, 0, 1, 0.1), (0, 1, 2, 0.2)] * 2)


def test_a_run_of_blocks_logs_like_the_blocks_one_by_one() -> None:
    """``log_run`` (a streamed run: known blocks looked up at once, new ones registered in
    turn, a new one possibly twice in the run) against ``log`` of each block in turn."""
    known = ((0, 0, 1, 0.25), (1, 1, 2, 0.5))
    new = ((0, 1, 0, 0.125),)
    other = ((0, 0, 3, 1.5), (2, 1, 1, 0.75))
    runs = [
        ([0, 5, 9], [known, known, known]),  # every block known
        ([20, 21, 30, 33, 40], [new, known, new, other, known]),  # new ones, one twice
    ]
    by_run, by_one = EnergyLedger(2), EnergyLedger(2)
    by_run.log(0, known)
    by_one.log(0, known)
    for firsts, blocks in runs:
        by_run.log_run(firsts, blocks)
        for first, blk in zip(firsts, blocks, strict=True):
            by_one.log(first, blk)
    assert by_run.by_op == by_one.by_op
    assert by_run.joules == by_one.joules


def test_indexed_arrays_log_like_the_blocks_one_by_one() -> None:
    """``log_indexed`` (a compiled relay run: arrays of first ops and registered indices),
    between single ``log`` calls and across a flush, against ``log`` of each block in turn:
    the same rows in the same order, the same joules to the bit."""
    rng = random.Random(11)
    blocks = [
        tuple((o, rng.randrange(2), rng.randrange(len(PARTS) - 1), rng.random()) for o in range(3))
        for _ in range(4)
    ]
    by_arrays, by_one = EnergyLedger(2), EnergyLedger(2)
    first = 0
    for step in range(40):
        pick = [rng.randrange(len(blocks)) for _ in range(rng.randint(0, 30))]
        firsts = list(range(first, first + 4 * len(pick), 4))
        first += 4 * len(pick) + 1
        if step % 3:
            ix = np.asarray([by_arrays.register(blocks[k]) for k in pick], np.int64)
            by_arrays.log_indexed(np.asarray(firsts, np.int64), ix)
        else:
            for f, k in zip(firsts, pick, strict=True):
                by_arrays.log(f, blocks[k])
        for f, k in zip(firsts, pick, strict=True):
            by_one.log(f, blocks[k])
        if step == 20:
            assert by_arrays.joules == by_one.joules
    assert by_arrays.by_op == by_one.by_op
    assert by_arrays.joules == by_one.joules
