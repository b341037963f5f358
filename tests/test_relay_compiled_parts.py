"""Pieces of the compiled relay's Python side (:mod:`moec.backends.interp.relay_compiled`)
against the numpy they stand for (the whole relay is compared with the reference in
``tests/test_relay_compiled.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from moec.backends.interp import relay_compiled
from moec.backends.interp.relay_compiled import _distinct, _distinct_sorted


@pytest.mark.parametrize("hashed", [False, True])
def test_distinct_is_numpys_unique_index_and_inverse(hashed: bool) -> None:
    if hashed and not relay_compiled.available():
        pytest.skip("numba is not installed")
    distinct = _distinct if hashed else _distinct_sorted
    rng = np.random.default_rng(3)
    cases = [rng.integers(0, high, n, dtype=np.int64)
             for n, high in ((1, 5), (2, 1), (50, 3), (2000, 40), (3000, 1 << 40), (5000, 1 << 62))]  # fmt: skip
    # values alike in their low or high bits (a weak hash's collisions), in runs and shuffled
    cases += [np.repeat(np.arange(300, dtype=np.int64) << 40, 3), rng.permutation(4000) % 700 * 1024]
    for flat in cases:
        _, first, inv = np.unique(flat, return_index=True, return_inverse=True)
        got_first, got_inv = distinct(flat)
        assert got_first.tolist() == first.tolist()
        assert got_inv.tolist() == inv.reshape(-1).tolist()
