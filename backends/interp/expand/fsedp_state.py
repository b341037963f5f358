"""The FSE-DP scheduler's state (:mod:`.fsedp_sched`): a micro-slice's trip, its stay on a die,
a die's slots and queues, and a walk position's lane."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from moec.backends.interp.expand.fsedp_problem import Unit
from moec.ir.stream.program import Instr, SliceRef


@dataclass(slots=True)
class Trip:
    """One micro-slice's journey: entry die first, then forward along the cycle."""

    id: int
    unit: Unit
    slice: int
    #: what the slot holds, as the instructions name it
    ref: SliceRef
    path: list[int] = field(default_factory=list)
    #: the slot it is loaded into on its entry die
    slot: int = -1
    #: visits (slot holdings) not yet freed, and whether the last one has begun
    open: int = 0
    ended: bool = False
    #: whether it has left its entry die (counts against the in-flight cap until it ends)
    entered: bool = False
    #: hops of ``path`` (walk positions) where the slice is computed, and its last hop
    compute_at: set[int] | frozenset[int] = field(default_factory=set)
    last: int = 0
    nbytes: int = 0
    channel: int = 0

    def __post_init__(self) -> None:
        self.nbytes = self.unit.slice_bytes[self.slice]
        self.channel = self.unit.channels[self.slice]


@dataclass(slots=True)
class Visit:
    """A trip's stay on one die: the slot it holds there, the lane of its walk position and
    the uses (compute, forward) left."""

    trip: Trip
    die: DieState
    slot: int
    hop: int
    lane: Lane
    busy: int = 0


@dataclass(slots=True)
class DieState:
    """A die in the simulation: its free slots, its stream so far, the slices it will load,
    has loaded, has received for compute, and its counts of slots held."""

    id: int
    #: free slots, the next one to take last
    free: deque[int]
    #: its instructions in the order decided (the clock never goes back)
    out: list[Instr]
    queue: deque[Trip] = field(default_factory=deque)
    loading: int = 0
    ready: deque[Trip] = field(default_factory=deque)
    inbox: deque[Visit] = field(default_factory=deque)
    #: trips this die started (R2) whose slot here is not freed yet
    started: int = 0
    computing: bool = False
    held: int = 0
    peak: int = 0
    #: the lanes of its walk positions
    lanes: list[Lane] = field(default_factory=list)


@dataclass(slots=True)
class Lane:
    """One position of the walk: slices received there and waiting to go on."""

    #: received slices held (at most P)
    pipeline: int = 0
    #: received slices waiting to go on
    outbox: deque[Visit] = field(default_factory=deque)
    #: slices loaded here waiting to enter the walk (behind the received ones and the cap)
    entry: deque[Visit] = field(default_factory=deque)
    sending: bool = False
    #: the die at this position and at the one before it (which forwards here), as ids: a
    #: lane referring to a die would tie the dies (and their streams) into the lanes' ring,
    #: a reference cycle, kept alive after the run until a full garbage collection
    die: int = field(init=False)
    pred: int = field(init=False)
    #: received slices held at the next position of the walk (where every slice here goes on
    #: to: a trip's path is consecutive positions), its ``pipeline``; set once all exist
    succ: Lane = field(init=False)
