"""Continuous batching with Poisson arrivals over a serving run's iteration times."""

from __future__ import annotations

import pytest

from moec.backends.interp.batching import (
    continuous_batching,
    parse_arrivals,
    replay,
    schedule_requests,
)
from moec.ir.errors import TraceError


def test_hand_worked_schedule() -> None:
    # one slot, 1 s iterations, requests at 0 and 0.5 s of 2 tokens: r0 runs at [0,1], [1,2];
    # r1 waits for the slot, runs [2,3], [3,4]
    r = schedule_requests([1.0], 1, [0.0, 0.5], 2)
    assert r["ttft_p50_s"] == r["ttft_p99_s"] == 2.5  # percentiles take the higher sample
    assert r["e2e_p99_s"] == 3.5 and r["tpot_p99_s"] == 1.0
    assert r["throughput_tokens_per_s"] == 1.0 and r["slot_occupancy"] == 1.0
    assert r["iterations"] == 4 and r["max_queue"] == 1


def test_idle_package_waits_for_the_next_request() -> None:
    r = schedule_requests([1.0], 4, [0.0, 10.0], 1)
    assert r["ttft_p99_s"] == 1.0 and r["iterations"] == 2
    assert r["throughput_tokens_per_s"] == pytest.approx(2 / 11)


def test_load_sweeps_from_idle_to_saturated() -> None:
    durations = [1e-3, 1.2e-3, 0.9e-3]
    slots, length = 16, 32
    low, high = (replay(durations, slots, rate, length, 400, seed=1) for rate in (10.0, 1e5))
    peak = slots / min(durations)
    assert low["throughput_tokens_per_s"] == pytest.approx(10.0 * length, rel=0.15)
    assert low["slot_occupancy"] < 0.1 < 0.9 < high["slot_occupancy"]
    assert high["throughput_tokens_per_s"] <= peak
    assert high["ttft_p99_s"] > low["ttft_p99_s"]  # saturated: requests queue
    assert replay(durations, slots, 1e3, length, 50, seed=3) == replay(
        durations, slots, 1e3, length, 50, seed=3
    )


def test_spec() -> None:
    spec = parse_arrivals("poisson:rate=100/200,len=64,seed=2")
    assert spec.rates == (100.0, 200.0) and spec.length == 64 and spec.seed == 2
    rows = continuous_batching([1e-3], 8, spec, iterations=16)
    assert [r["rate"] for r in rows] == [100.0, 200.0] and rows[0]["requests"] == 2
    for bad, msg in (
        ("poisson:len=4", "rate is required"),
        ("poisson:rate=0,len=4", "rate must be > 0"),
        ("uniform:rate=1,len=4", "expected poisson:"),
        ("poisson:rate=1,len=4,burst=2", "bad item"),
    ):
        with pytest.raises(TraceError, match=msg):
            parse_arrivals(bad)
