"""The synthetic routing draw (``ir/routing_synth.py``): :func:`gumbel_top_k` gives the
reference's ids and gates bit for bit (numpy's Gumbel draws, then their top-k) and leaves the
generator where the reference leaves it, on every path: rows with exactly ``k`` candidates,
rows padded for near-ties, several blocks of rows, a zero uniform, ``k`` outside ``1 .. E-1``."""

from __future__ import annotations

import numpy as np
import pytest

from moec.ir import routing_synth as rs

SHAPES = [(1, 2, 1), (5, 8, 2), (300, 64, 6), (1500, 128, 8), (2100, 256, 8), (64, 16, 15)]


def _log_p(experts: int, zipf: float, seed: int) -> np.ndarray:
    ranks = np.arange(1, experts + 1, dtype=np.float64)
    log_p = np.empty(experts)
    log_p[np.random.default_rng(seed).permutation(experts)] = -zipf * np.log(ranks)
    return log_p


def _same(tokens: int, experts: int, k: int, zipf: float, seed: int) -> None:
    log_p = _log_p(experts, zipf, seed)
    a, b = np.random.default_rng([seed, 1]), np.random.default_rng([seed, 1])
    ids, gates = rs.gumbel_top_k(log_p, tokens, k, a)
    want_ids, want_gates = rs.gumbel_top_k_reference(log_p, tokens, k, b)
    assert ids.dtype == want_ids.dtype and gates.dtype == want_gates.dtype
    assert np.array_equal(ids, want_ids)
    assert np.array_equal(gates.view(np.int32), want_gates.view(np.int32))
    assert a.bit_generator.state == b.bit_generator.state  # the next draw is the same too


@pytest.fixture(autouse=True)
def every_shape_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shapes with few experts per chosen one take the reference by default; the tests check
    the fast path on them too."""
    monkeypatch.setattr(rs, "_EXPERTS_PER_K", 1)


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{t}x{e}k{k}" for t, e, k in SHAPES])
@pytest.mark.parametrize("zipf", [0.0, 1.0, 2.5])
def test_draw_is_the_reference_bit_for_bit(shape: tuple[int, int, int], zipf: float) -> None:
    for seed in range(2):
        _same(*shape, zipf, seed)


def test_near_ties_take_the_padded_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide margin gives rows more than ``k`` candidates (what a near-tie does): the exact
    ranking among them is still the reference's."""
    monkeypatch.setattr(rs, "_MARGIN", 0.7)
    monkeypatch.setattr(rs, "_BLOCK", 100)
    for tokens, experts, k in SHAPES[1:]:
        _same(tokens, experts, k, 1.0, 3)


@pytest.mark.parametrize("k", [0, 8])
def test_k_outside_one_to_e_minus_one_takes_the_reference(k: int) -> None:
    _same(40, 8, k, 1.0, 4)


class _ZeroInSecondBlock(np.random.Generator):
    """A generator whose second block of uniforms holds a zero (as a real draw may)."""

    calls = 0

    def random(self, size=None):  # type: ignore[no-untyped-def, override]
        u = super().random(size=size)
        type(self).calls += 1
        if type(self).calls == 2:
            u[0, 0] = 0.0
        return u


def test_a_zero_uniform_takes_the_reference_from_the_same_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """numpy's Gumbel draw rejects a zero uniform; the fast path then starts over."""
    monkeypatch.setattr(rs, "_BLOCK", 50)
    log_p = _log_p(32, 1.0, 5)
    rng = _ZeroInSecondBlock(np.random.PCG64(np.random.SeedSequence(11)))
    ids, gates = rs.gumbel_top_k(log_p, 120, 4, rng)
    assert _ZeroInSecondBlock.calls == 2  # stopped at the zero, then the reference's gumbel
    want = rs.gumbel_top_k_reference(log_p, 120, 4, np.random.default_rng(11))
    assert np.array_equal(ids, want[0]) and np.array_equal(gates, want[1])


def test_huge_exponents_and_experts_never_drawn() -> None:
    """A Zipf exponent of a million (the margin grows with ``|log_p|``) and a burst of zero
    (``-inf``: routing sequences)."""
    for log_p in (_log_p(256, 1e6, 6), np.where(np.arange(64) == 5, -np.inf, _log_p(64, 1.0, 7))):
        for seed in range(2):
            a, b = np.random.default_rng([seed, 2]), np.random.default_rng([seed, 2])
            ids, gates = rs.gumbel_top_k(log_p, 500, 4, a)
            want_ids, want_gates = rs.gumbel_top_k_reference(log_p, 500, 4, b)
            assert np.array_equal(ids, want_ids) and np.array_equal(gates, want_gates)


@pytest.mark.parametrize("per_k", [0.5, 1.0, 6.0])
def test_rows_short_of_the_floor_are_ranked_in_full(
    monkeypatch: pytest.MonkeyPatch, per_k: float
) -> None:
    """A low floor target leaves many rows with fewer than ``k`` entries over the floor (ranked
    in full, written back among the others); a high one gives every row many candidates."""
    full_rows = []
    exact = rs._exact_top_k

    def spy(u, *args):  # type: ignore[no-untyped-def]
        full_rows.append(u.shape[0])
        exact(u, *args)

    monkeypatch.setattr(rs, "_exact_top_k", spy)
    monkeypatch.setattr(rs, "_OVER_FLOOR_PER_K", per_k)
    for tokens, experts, k in SHAPES[1:5]:
        _same(tokens, experts, k, 1.0, 8)
    assert (sum(full_rows) > 0) == (per_k < 2)


@pytest.mark.parametrize("home", ["blocks", "round_robin"])
def test_a_shorter_draw_is_the_first_rows_of_a_longer_one(home: str) -> None:
    """:func:`first_tokens`: the 4096-token calibration sample's first rows are the batch
    (token counts off the block size, layers on the fast path and on the reference's)."""
    shapes = [(256, 8), (64, 6), (8, 2), (128, 8)]
    for tokens in (1, 700, 1024, 1500):
        long = rs.synth_layers(shapes, 2100, seed=3, num_dies=4, home=home)
        want = rs.synth_layers(shapes, tokens, seed=3, num_dies=4, home=home)
        got = rs.first_tokens(long, tokens, home)
        assert got.tokens == tokens and got.provenance == want.provenance
        for a, b in zip(got.layers, want.layers, strict=True):
            assert (a.name, a.num_experts, a.top_k) == (b.name, b.num_experts, b.top_k)
            assert np.array_equal(a.ids, b.ids) and a.ids.dtype == b.ids.dtype
            assert a.gates.tobytes() == b.gates.tobytes()
            assert np.array_equal(a.home_die, b.home_die)
    with pytest.raises(rs.TraceError, match="cannot take the first 3000"):
        rs.first_tokens(long, 3000)
