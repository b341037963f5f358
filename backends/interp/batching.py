"""Continuous batching with Poisson arrivals, replayed over a serving run's iteration times.

``moec bench --iterations N --arrivals poisson:rate=R[/R2/...],len=L[,seed=S,requests=K]``: requests
arrive as a Poisson process of ``rate`` requests per second (exponential gaps from
``numpy.random.default_rng(seed)``), each asking for ``len`` output tokens. The accelerator runs
decode iterations of the program's compiled batch (``slots`` tokens): before each iteration,
waiting requests take free slots first come first served; each iteration gives every active
request one token; a request leaves when it has its ``len`` tokens. With no request active, the
package idles until the next arrival.

**Iteration times** come from the serving simulation (:mod:`.serving`): iteration j of the replay
lasts as long as iteration ``j mod N`` of the simulated run, whose batch was full. That is the
model's approximation: an iteration with idle slots is timed as a full one (the compiled program
has a fixed batch; idle slots are padding), and an iteration after an idle gap is timed as if it
followed the previous one back to back.

Per rate: ``throughput_tokens_per_s`` (tokens delivered over the time the last request finished),
time to first token (``ttft``: arrival to the end of its first iteration) p50/p99, time per output
token after the first (``tpot``: (end - first token) / (len - 1)) p50/p99, end-to-end latency p99,
mean slot occupancy and the longest queue.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from moec.ir.errors import TraceError


@dataclass(frozen=True)
class ArrivalSpec:
    """A Poisson arrival process: rates (requests/s), output tokens per request, seed, and
    how many requests (None: ``iterations x slots // length``, the simulated run's tokens)."""

    rates: tuple[float, ...]
    length: int
    seed: int = 0
    requests: int | None = None


def parse_arrivals(spec: str) -> ArrivalSpec:
    """``poisson:rate=100/200,len=64,seed=0,requests=500`` (rate and len required)."""
    head, _, rest = spec.partition(":")
    if head != "poisson":
        raise TraceError(f"arrivals {spec!r}: expected poisson:rate=R,len=L[,seed=S,requests=K]")
    values: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, raw = item.partition("=")
        if not eq or key.strip() not in ("rate", "len", "seed", "requests"):
            raise TraceError(
                f"arrivals {spec!r}: bad item {item!r}, expected key=value with key one of "
                "rate, len, seed, requests"
            )
        values[key.strip()] = raw.strip()
    try:
        rates = tuple(float(r) for r in values["rate"].split("/"))
        length = int(values["len"])
        seed = int(values.get("seed", "0"))
        requests = int(values["requests"]) if "requests" in values else None
    except KeyError as err:
        raise TraceError(f"arrivals {spec!r}: {err.args[0]} is required") from None
    except ValueError:
        raise TraceError(f"arrivals {spec!r}: expected numbers, found {rest!r}") from None
    if not rates or any(not math.isfinite(r) or r <= 0 for r in rates):
        raise TraceError(f"arrivals {spec!r}: rate must be > 0")
    if length < 1 or seed < 0 or (requests is not None and requests < 1):
        raise TraceError(f"arrivals {spec!r}: expected len >= 1, seed >= 0, requests >= 1")
    return ArrivalSpec(rates, length, seed, requests)


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q, method="higher")) if values else 0.0


def replay(
    durations: list[float], slots: int, rate: float, length: int, requests: int, seed: int = 0
) -> dict[str, Any]:
    """Continuous batching of ``requests`` Poisson(``rate``) requests of ``length`` tokens on
    ``slots`` decode slots, iteration j lasting ``durations[j % len(durations)]``."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=requests)
    return {"rate": rate, **schedule_requests(durations, slots, np.cumsum(gaps).tolist(), length)}


def schedule_requests(
    durations: list[float], slots: int, arrival: list[float], length: int
) -> dict[str, Any]:
    """Continuous batching of requests arriving at ``arrival`` (ascending seconds), each of
    ``length`` tokens (see module doc)."""
    if not durations or slots < 1:
        raise TraceError("continuous batching needs iteration times and at least one slot")
    requests = len(arrival)
    first = [math.nan] * requests
    finish = [math.nan] * requests
    left = [length] * requests
    queue: deque[int] = deque()
    active: list[int] = []
    t, j, k, done = 0.0, 0, 0, 0
    busy_slots = 0
    longest = 0
    while done < requests:
        while k < requests and arrival[k] <= t:
            queue.append(k)
            k += 1
        while queue and len(active) < slots:
            active.append(queue.popleft())
        longest = max(longest, len(queue))
        if not active:  # idle until the next request arrives
            t = arrival[k]
            continue
        t += durations[j % len(durations)]
        j += 1
        busy_slots += len(active)
        still = []
        for r in active:
            if math.isnan(first[r]):
                first[r] = t
            left[r] -= 1
            if left[r] == 0:
                finish[r] = t
                done += 1
            else:
                still.append(r)
        active = still
    ttft = [first[r] - arrival[r] for r in range(requests)]
    tpot = [(finish[r] - first[r]) / (length - 1) for r in range(requests)] if length > 1 else []
    e2e = [finish[r] - arrival[r] for r in range(requests)]
    return {
        "requests": requests,
        "length": length,
        "iterations": j,
        "throughput_tokens_per_s": requests * length / t if t > 0 else 0.0,
        "ttft_p50_s": _pct(ttft, 50),
        "ttft_p99_s": _pct(ttft, 99),
        "tpot_p50_s": _pct(tpot, 50),
        "tpot_p99_s": _pct(tpot, 99),
        "e2e_p99_s": _pct(e2e, 99),
        "slot_occupancy": busy_slots / (j * slots) if j else 0.0,
        "max_queue": longest,
    }


def continuous_batching(
    durations: list[float], slots: int, spec: ArrivalSpec, iterations: int
) -> list[dict[str, Any]]:
    """:func:`replay` at every rate of ``spec``."""
    requests = spec.requests or max(1, iterations * slots // spec.length)
    return [replay(durations, slots, r, spec.length, requests, spec.seed) for r in spec.rates]
