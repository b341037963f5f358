"""TransferQueue against the deque of (hold, arrival) tuples it replaced: the same pairs out,
one at a time and in bulk, through compactions and restarts."""

from collections import deque

import numpy as np
import pytest

from moec.backends.interp import transfer_queue
from moec.backends.interp.transfer_queue import TransferQueue


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transfer_queue_matches_a_deque(monkeypatch: pytest.MonkeyPatch, seed: int) -> None:
    monkeypatch.setattr(transfer_queue, "_COMPACT", 8)  # compact often
    rng = np.random.default_rng(seed)
    q, ref = TransferQueue(), deque()
    op = 0
    for _ in range(3000):
        what = rng.integers(5)
        if what == 0:
            q.append((op, op + 1))
            ref.append((op, op + 1))
            op += 2
        elif what == 1 and ref:
            assert q.popleft() == ref.popleft()
        elif what == 2:
            k = int(rng.integers(0, len(ref) + 1))
            want = np.array([x for pair in list(ref)[:k] for x in pair], np.int64)
            assert q.first(k).tolist() == want.tolist()
            q.drop(k)
            for _ in range(k):
                ref.popleft()
        elif what == 3:
            k = int(rng.integers(1, 40))
            pairs = np.arange(op, op + 2 * k, dtype=np.int64).reshape(k, 2)
            q.extend_flat(pairs[:, :2])
            ref.extend(map(tuple, pairs.tolist()))
            op += 2 * k
        assert len(q) == len(ref) and bool(q) == bool(ref)
        assert list(q) == list(ref)
    with pytest.raises(IndexError):
        TransferQueue().popleft()


def test_transfer_queue_first_is_a_copy() -> None:
    q = TransferQueue([(1, 2), (3, 4)])
    got = q.first(2)
    q.extend_flat(np.array([[5, 6]], np.int64))  # the array grows: no view holds it
    q.drop(2)
    assert got.tolist() == [1, 2, 3, 4] and list(q) == [(5, 6)]
