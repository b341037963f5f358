"""Placement plans: popularity-aware LPT (Hydra) and EPLB replication with balanced packing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moec.compiler.lower.placement import (
    die_loads,
    eplb_plan,
    lpt_placement,
    pack_replicas,
    replicate,
)
from moec.ir.errors import ScheduleError


def test_lpt_hand_example() -> None:
    # 8 -> die 0; 5 -> die 1; 4 -> die 1 (5 < 8); 1 -> die 0 (8 < 9).
    assert lpt_placement([8, 1, 5, 4], 2) == [0, 0, 1, 1]
    assert die_loads([8, 1, 5, 4], [0, 0, 1, 1], 2) == [9.0, 9.0]


def test_lpt_ties_go_to_fewer_experts_then_lower_die() -> None:
    # All loads equal: round-robin by id; zero-load experts still spread by count.
    assert lpt_placement([0, 0, 0, 0, 0], 2) == [0, 1, 0, 1, 0]


def test_lpt_cap_keeps_expert_counts_even() -> None:
    load = [100, 1, 1, 1, 1, 1, 1, 1]
    free = lpt_placement(load, 2)
    assert free.count(0) == 1  # the hot expert alone on die 0
    capped = lpt_placement(load, 2, max_per_die=4)
    assert capped.count(0) == 4 and capped.count(1) == 4


def test_lpt_errors() -> None:
    with pytest.raises(ScheduleError, match="do not fit 2 dies of 1 experts"):
        lpt_placement([1, 2, 3], 2, max_per_die=1)
    with pytest.raises(ScheduleError, match="expert 1 has -1.0"):
        lpt_placement([1, -1], 2)
    with pytest.raises(ScheduleError, match="at least one die"):
        lpt_placement([1], 0)


def test_replicate_follows_load_per_replica() -> None:
    # 12 -> 2 replicas (6 each); next best is 4 (expert 3), not 6/... because of the cap of 2.
    assert replicate([12, 2, 2, 4], extra=2, max_replicas=2) == [2, 1, 1, 2]
    # Without the cap: 12 per replica, then 6 per replica: still above 4, so a third replica.
    assert replicate([12, 2, 2, 4], extra=2, max_replicas=4) == [3, 1, 1, 1]
    # Cold experts are never replicated, even with budget left.
    assert replicate([5, 0, 0], extra=5, max_replicas=3) == [3, 1, 1]


def test_pack_never_puts_two_replicas_on_one_die() -> None:
    plan = eplb_plan([12, 2, 2, 4], num_dies=2, extra=2)
    assert plan == [[0, 1], [0], [1], [0, 1]]
    with pytest.raises(ScheduleError, match="one per die"):
        pack_replicas([1, 1], [3, 1], 2)


@settings(max_examples=60, deadline=None)
@given(
    load=st.lists(st.integers(0, 50), min_size=1, max_size=24),
    num_dies=st.integers(1, 9),
    extra=st.integers(0, 12),
)
def test_eplb_plan_properties(load: list[int], num_dies: int, extra: int) -> None:
    plan = eplb_plan(load, num_dies, extra)
    counts = replicate(load, extra, num_dies)
    assert [len(ds) for ds in plan] == counts
    assert sum(counts) <= len(load) + extra
    for ds in plan:
        assert len(set(ds)) == len(ds) and all(0 <= d < num_dies for d in ds)
    assert plan == eplb_plan(load, num_dies, extra)  # deterministic


@settings(max_examples=60, deadline=None)
@given(load=st.lists(st.integers(0, 50), min_size=1, max_size=7), num_dies=st.integers(1, 3))
def test_lpt_is_within_graham_bound(load: list[int], num_dies: int) -> None:
    # LPT's makespan is at most (4/3 - 1/(3m)) of the optimum (found here by brute force).
    placement = lpt_placement(load, num_dies)
    makespan = max(die_loads(load, placement, num_dies))
    optimum = min(
        max(die_loads(load, list(p), num_dies))
        for p in itertools.product(range(num_dies), repeat=len(load))
    )
    assert makespan <= (4 / 3 - 1 / (3 * num_dies)) * optimum + 1e-9


def test_assign_channels_keeps_local_and_spreads() -> None:
    from collections import Counter

    from moec.compiler.lower.placement import assign_channels
    from moec.ir.target import load_target

    two = load_target("fsedp-2x2")
    owners = [d for d in range(4) for _ in range(3)]
    # every die has its own channel: everything stays local
    assert assign_channels(owners, [1.0] * 12, two) == owners
    three = load_target("fsedp-3x3")
    owners = [d for d in range(9) for _ in range(4)]
    got = assign_channels(owners, [1.0] * 36, three)
    assert Counter(got) == {0: 9, 1: 9, 2: 9, 3: 9}  # nearest-channel would give 16/8/8/4
    corner_dies = {0: 0, 2: 1, 6: 2, 8: 3}
    for i, d in enumerate(owners):
        if d in corner_dies:
            assert got[i] == corner_dies[d]  # a die with a channel reads its own
    # weightless items go to the nearest channel (ties: lower id)
    assert assign_channels([4, 5], [0.0, 0.0], three) == [0, 1]


def test_activation_probability() -> None:
    from moec.compiler.lower.placement import activation_probability

    p = activation_probability([0, 50, 100], sample_tokens=100, tokens=2)
    assert p == pytest.approx([0.0, 0.75, 1.0])
