"""The FSE-DP expander's tokens per (expert, die), one sort for the layer, against the
per-expert, per-die reading it replaced."""

from __future__ import annotations

import numpy as np

from moec.backends.interp.expand import token_set
from moec.backends.interp.expand.fsedp import _tokens_per_die


def _per_expert(experts: np.ndarray, tokens: np.ndarray, home: np.ndarray, e: int):  # type: ignore[no-untyped-def]
    toks = np.unique(tokens[experts == e])
    per_die, counts = {}, {}
    for d in np.unique(home[toks]).tolist():
        mine = np.sort(toks[home[toks] == d])
        per_die[int(d)] = token_set(mine)
        counts[int(d)] = int(mine.size)
    return per_die, counts


def test_tokens_per_die_matches_per_expert_reading() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        T, k = int(rng.integers(0, 50)), int(rng.integers(1, 4))
        E, D = int(rng.integers(1, 9)), int(rng.integers(1, 5))
        ids = rng.integers(-1, E, size=(T, k))  # -1: dropped; a row may repeat an expert
        home = rng.integers(0, D, size=T).astype(np.int64)
        flat_e = ids.reshape(-1).astype(np.int64)
        flat_t = np.repeat(np.arange(T, dtype=np.int64), k)
        flat_t, flat_e = flat_t[flat_e >= 0], flat_e[flat_e >= 0]
        got = _tokens_per_die(flat_e, flat_t, home)
        for e in range(E):
            want = _per_expert(flat_e, flat_t, home, e)
            per_die, counts = got.get(e, ({}, {}))
            # same dies in the same (ascending) order, same ranges, same counts
            assert list(per_die.items()) == list(want[0].items())
            assert list(counts.items()) == list(want[1].items())


def test_tokens_per_die_runs() -> None:
    experts = np.array([2, 2, 2, 2, 0], dtype=np.int64)
    tokens = np.array([5, 1, 2, 3, 1], dtype=np.int64)
    home = np.array([0, 1, 1, 1, 0, 0], dtype=np.int64)
    got = _tokens_per_die(experts, tokens, home)
    assert got[2][0] == {0: token_set(np.array([5])), 1: token_set(np.array([1, 2, 3]))}
    assert got[2][1] == {0: 1, 1: 3}
    assert got[0][0] == {1: token_set(np.array([1]))}
    assert _tokens_per_die(experts[:0], tokens[:0], home) == {}


def test_tokens_per_die_of_some_experts_is_theirs_of_all() -> None:
    """``_units`` groups only the pairs of the experts it makes units for (a catch-up's few
    deferred ones): each of those experts' sets, kept tokens and counts are those of the
    grouping of every pair."""
    rng = np.random.default_rng(1)
    for _ in range(100):
        T, k, E, D = int(rng.integers(1, 60)), int(rng.integers(1, 4)), 9, 4
        flat_e = rng.integers(0, E, size=T * k).astype(np.int64)
        flat_t = np.repeat(np.arange(T, dtype=np.int64), k)
        home = rng.integers(0, D, size=T).astype(np.int64)
        some = rng.choice(E, size=int(rng.integers(0, E)), replace=False)
        at = np.isin(flat_e, some)
        got = _tokens_per_die(flat_e[at], flat_t[at], home)
        every = _tokens_per_die(flat_e, flat_t, home)
        assert got.keys() == {e for e in every if e in some.tolist()}
        for e, (per_die, counts) in got.items():
            assert list(per_die.items()) == list(every[e][0].items())
            assert counts == every[e][1]
            for d, ts in per_die.items():
                assert ts.known_indices().tolist() == every[e][0][d].known_indices().tolist()
