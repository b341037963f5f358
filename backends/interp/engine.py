"""The discrete-event core: a heap of ``(time, priority, seq)`` events, no wall clock.

Like vidur's simulator loop, the sequence number is owned by the queue instance, so two runs of
the same program pop events in the same order: ties in time go to the lower priority value, then
to the event pushed first. The queue knows nothing about instructions; :mod:`.timing` pushes op
ids into it.
"""

from __future__ import annotations

import heapq


class EventQueue:
    """A min-heap of ``(time, priority, seq, item)`` with a per-instance sequence counter."""

    __slots__ = ("_heap", "_seq", "now")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, int]] = []
        self._seq = 0
        #: Time of the last popped event (the simulation clock).
        self.now = 0.0

    def push(self, time: float, priority: int, item: int) -> None:
        """Schedule ``item`` at ``time``; an event in the past is a bug of the caller."""
        if time < self.now:
            raise RuntimeError(f"event at {time} scheduled before the clock {self.now}")
        heapq.heappush(self._heap, (time, priority, self._seq, item))
        self._seq += 1

    def pop(self) -> tuple[float, int]:
        """The earliest event's ``(time, item)``; advances the clock."""
        time, _, _, item = heapq.heappop(self._heap)
        self.now = time
        return time, item

    def __len__(self) -> int:
        return len(self._heap)

    def __bool__(self) -> bool:
        return bool(self._heap)
