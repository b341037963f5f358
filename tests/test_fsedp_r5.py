"""FSE-DP rule R5 (DRAM pushes to the die with the most free buffer): hand-derived schedules.

The scheduler is driven directly (:func:`moec.backends.interp.expand.fsedp_sched.schedule`) on a
two-die package, cycle 0 -> 1 -> 0, with hand-picked step times (a stand-in for the
interpreter's engine, :class:`_Steps`): every load (local or remote) holds its channel for
L = 1, every hop holds its link for H = 4, every compute takes C = 1. Five slots per die:
P = 5 // 2 = 2 received slots per position, 3 prefetch slots, at most P x 2 - 1 = 3 trips in
flight.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from numerics_check import check_strategy

from moec.backends.interp.expand.fsedp_problem import Hop
from moec.backends.interp.expand.fsedp_sched import Problem, Schedule, Unit, schedule
from moec.ir.stream import Load, TokenSet

L, H, C = 1.0, 4.0, 1.0
ONE_TOKEN = TokenSet(((0, 0),))


class _Steps:
    """Loads hold their channel for L, transfers their link for H, first come first served;
    no latency, so data arrives when the hold ends."""

    def __init__(self) -> None:
        self.free: dict[tuple[str, int, int], float] = {}

    def _hold(self, res: tuple[str, int, int], ready: float, dur: float) -> tuple[float, float]:
        end = self.free[res] = max(ready, self.free.get(res, 0.0)) + dur
        return end, end

    def load(
        self, channel: int, die: int, nbytes: int, ready: float
    ) -> tuple[float, float, tuple[Hop, ...]]:
        return (*self._hold(("ch", channel, 0), ready, L), ())

    def cross(self, hop: Hop, at: float) -> float:
        raise AssertionError("no hops: a load's are in L")

    def send(self, a: int, b: int, nbytes: int, ready: float) -> tuple[float, float]:
        return self._hold(("link", a, b), ready, H)


def _problem(r5: bool, channels: tuple[int, ...], channel_die: tuple[int, ...],
             needed: tuple[int, ...]) -> Problem:  # fmt: skip
    unit = Unit(0, {d: ONE_TOKEN for d in needed}, (100,) * len(channels), channels,
                lambda d, j: (C,))  # fmt: skip
    return Problem(
        "moe0", 2, (0, 1), True, {0: list(range(5)), 1: list(range(5))}, [unit], _Steps(),
        r5=r5, channel_die=channel_die, hops=lambda a, b: abs(a - b),
    )  # fmt: skip


def _loads(s: Schedule, die: int) -> list[tuple[int, int]]:
    """(channel, slice) of every load into ``die``, in stream order."""
    return [(i.channel, i.content.slice) for i in s.streams[die] if isinstance(i, Load)]  # type: ignore[union-attr]


def test_r5_feeds_a_die_without_a_channel_when_the_owner_is_full() -> None:
    # One channel, on die 0; four slices needed by die 1 only. R4: die 0 loads s0, s1, s2 (its 3
    # prefetch slots, t = 0..3) and forwards them one at a time over 0 -> 1 (4 each: 1-5, 5-9,
    # 9-13); s3 waits for s0's slot (free at 5), loads 5-6, and forwards after s2, 13-17; die 1
    # computes it 17-18. With R5 the channel is idle at t = 3 with die 0 full, so it sends s3
    # straight to die 1 (3-4), where its trip starts and ends (it never enters the walk, so the
    # in-flight cap of 3 does not hold it back): computed 4-5; the link carries three slices,
    # the last computed 13-14.
    r4 = schedule(_problem(False, (0, 0, 0, 0), (0,), (1,)))
    r5 = schedule(_problem(True, (0, 0, 0, 0), (0,), (1,)))
    assert r4.estimate_s == pytest.approx(L + 4 * H + C)  # 18
    assert r5.estimate_s == pytest.approx(L + 3 * H + C)  # 14
    assert r5.estimate_s < r4.estimate_s
    assert _loads(r4, 1) == [] and _loads(r4, 0) == [(0, 0), (0, 1), (0, 2), (0, 3)]
    assert _loads(r5, 1) == [(0, 3)] and _loads(r5, 0) == [(0, 0), (0, 1), (0, 2)]
    # the pushed slice starts its trip on die 1: no pass-through of die 0, no extra hop
    assert r5.paths[3] == ((0, 3), [1])
    assert max(r5.peak_slots.values()) <= 5


def test_r5_changes_nothing_while_the_owner_has_room() -> None:
    # Three slices fit die 0's three prefetch slots: the channel never finds its die full, so
    # R5 pushes exactly what R4 pulls, in the same order, into the same slots.
    r4 = schedule(_problem(False, (0, 0, 0), (0,), (1,)))
    r5 = schedule(_problem(True, (0, 0, 0), (0,), (1,)))
    assert r5.streams == r4.streams
    assert r5.paths == r4.paths
    assert r5.estimate_s == pytest.approx(r4.estimate_s)


def test_r5_takes_no_slot_another_channel_still_needs() -> None:
    # Both dies have a channel; eight slices alternate channels 0 and 1, all needed by both
    # dies. While channel 1 has slices left to push, die 1's free prefetch slots are its next
    # loads: channel 0 may not take them however full die 0 is. So on die 1, no load from
    # channel 0 comes before the last one from channel 1.
    s = schedule(_problem(True, (0, 1) * 4, (0, 1), (0, 1)))
    loads = _loads(s, 1)
    own = [k for k, (c, _) in enumerate(loads) if c == 1]
    foreign = [k for k, (c, _) in enumerate(loads) if c == 0]
    assert own and (not foreign or min(foreign) > max(own))
    assert sorted(j for d in (0, 1) for _, j in _loads(s, d)) == list(range(8))


@pytest.mark.parametrize(
    "model,target", [("models/tiny_moe.onnx", "fsedp-3x3"), ("tiny_deepseek", "fsedp-2x2"),
                     ("tiny_deepseek", "fsedp-3x3")],
)  # fmt: skip
def test_r5_numerics_match_onnx_runtime(model: str, target: str, tmp_path: Path) -> None:
    assert check_strategy(model, "fsedp-r5", target, tmp_path) < 1e-4
