"""The FSE-DP scheduler's problem and answer: one layer's work, the machine that times it, and
the per-die streams (:mod:`.fsedp_sched` plays the rules on them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from moec.ir.stream.program import Instr, TokenSet

RULES = ("r1-r4", "naive")

#: One link of a load's route, as its :class:`Machine` describes it.
Hop = tuple[int, float, float, float]


class Machine(Protocol):
    """What the scheduler's steps cost, on the resources they claim: the interpreter's timing
    engine (:class:`.fsedp_engine.Engine`), so decisions are made on the interpreter's clock."""

    def load(
        self, channel: int, die: int, nbytes: int, ready: float
    ) -> tuple[float, float, tuple[Hop, ...]]:
        """A read of ``nbytes`` from ``channel`` into ``die``, inputs ready at ``ready``:
        ``(the channel frees, the data has left DRAM, the hops still to cross)``. Each hop is
        claimed with :meth:`cross` when the data reaches it (the interpreter claims a link
        then, not when the load is issued)."""
        ...

    def cross(self, hop: Hop, at: float) -> float:
        """The data reaches ``hop`` at ``at``: when it has crossed it."""
        ...

    def send(self, a: int, b: int, nbytes: int, ready: float) -> tuple[float, float]:
        """A transfer of ``nbytes`` from die ``a`` to its neighbour ``b``: ``(the link frees,
        the data has arrived)``."""
        ...


@dataclass(frozen=True)
class Unit:
    """One expert's work (``expert`` None: the shared experts): per needed die, its tokens."""

    expert: int | None
    tokens: dict[int, TokenSet]
    #: bytes of micro-slice j
    slice_bytes: tuple[int, ...]
    #: DRAM channel of micro-slice j
    channels: tuple[int, ...]
    #: seconds of micro-slice j's ops (gemm, act, accum) on die d for that die's tokens:
    #: ``compute(d, j)``
    compute: Callable[[int, int], tuple[float, ...]] = field(compare=False)
    #: per micro-slice j, the first slice j' <= j whose ``compute(d, j')`` is ``compute(d, j)``
    #: on every die (the same width and precision); empty: each slice its own (the compiled
    #: scheduler asks ``compute`` once per die and distinct slice)
    alike: tuple[int, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class Problem:
    """One layer's FSE-DP scheduling problem."""

    layer: str
    num_dies: int
    order: tuple[int, ...]
    closed: bool
    #: per die, the slot ids it may use
    slots: dict[int, list[int]]
    #: the units in the central load order
    units: list[Unit]
    #: times loads and transfers on the interpreter's resources (a fresh one per problem)
    machine: Machine = field(compare=False)
    rules: str = "r1-r4"
    r5: bool = False
    #: die of each DRAM channel
    channel_die: tuple[int, ...] = ()
    #: hops between two dies on the interconnect: ``hops(a, b)``
    hops: Callable[[int, int], int] = field(default=lambda a, b: 0, compare=False)
    #: units come in (hot, cold) pairs whose slices interleave in the load order
    paired: bool = False
    #: order slices so compute keeps pace with DRAM (``order=balanced``)
    balanced: bool = False
    #: total DRAM bandwidth, bytes per second (for ``balanced``)
    dram_bytes_per_s: float = 0.0


@dataclass
class Schedule:
    """The per-die instruction streams and what the scheduler did."""

    streams: dict[int, list[Instr]]
    #: the path of every trip, in load order: ((expert, slice), dies)
    paths: list[tuple[tuple[int | None, int], list[int]]]
    #: end of the last event on the interpreter's clock (seconds from the layer's start on an
    #: idle package; the interpreter's timing of the streams agrees up to resource claim order)
    estimate_s: float
    #: most slots any die held at once in the simulation
    peak_slots: dict[int, int]
    pass_throughs: int = 0
