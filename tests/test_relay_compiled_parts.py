"""Pieces of the compiled relay's Python side (:mod:`moec.backends.interp.relay_compiled`)
against the numpy they stand for (the whole relay is compared with the reference in
``tests/test_relay_compiled.py``)."""

from __future__ import annotations

import numpy as np

from moec.backends.interp.relay_compiled import _distinct


def test_distinct_is_numpys_unique_index_and_inverse() -> None:
    rng = np.random.default_rng(3)
    for n, high in ((1, 5), (2, 1), (50, 3), (2000, 40), (3000, 1 << 40)):
        flat = rng.integers(0, high, n, dtype=np.int64)
        _, first, inv = np.unique(flat, return_index=True, return_inverse=True)
        got_first, got_inv = _distinct(flat)
        assert got_first.tolist() == first.tolist()
        assert got_inv.tolist() == inv.reshape(-1).tolist()
