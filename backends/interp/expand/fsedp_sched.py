"""The FSE-DP on-package scheduler: rules R1-R5 simulated step by step into per-die streams.

Given one layer's work (which dies hold tokens for which expert) this module plays the paper's
local rules on every die as a small discrete-event simulation and writes down what each die did,
in the order it did it, as stream instructions. The interpreter then times those streams.

**One timing engine.** The simulation has no time model of its own: every load and hop it plays
is timed by a :class:`Machine`, in a run the interpreter's engine
(:class:`.fsedp_engine.Engine`: its resource state and cost plans, forked for the layer), and a
slice compute is its ops' durations as the interpreter's handlers charge them. Each instruction
is decided the moment the interpreter will find its last input ready: a load when the slot it
takes is freed, a forward when the link, the slice and the successor's slot are, a compute when
the die's previous compute and the slice are. So the static streams, timed by the interpreter,
reproduce the simulation's clock (``Schedule.estimate_s``) up to the order two ops that became
ready at different times claim one resource (``scripts/fsedp_sched_gap.py``: within 1.7% on
issue 12's case, fsedp-3x3 with DDR at 51.2 GB/s per channel).

**Trajectories.** Slices follow a closed *walk* of the dies: the Hamiltonian cycle
(:attr:`Problem.order`), or, when the mesh has none (``closed`` False, e.g. 3x3), the Hamiltonian
path there and back (``0 1 2 5 8 7 6 3 4 3 6 7 8 5 2 1``), so interior dies sit on the walk twice,
once per direction. Every micro-slice is one *trip*: it is loaded from DRAM into a slot of its
entry die and moves forward along the walk, one neighbour at a time, up to the last die that
holds tokens routed to its expert (its *needed* dies); each needed die computes it, at its first
visit, against its own tokens (gemm/act/accum into its own outputs, so no cross-die reduction).
A die that needs nothing, or sees the slice a second time, is a *pass-through*: recv, send,
free, no compute. Each position of the walk receives only from the position before it and sends
only to the one after it; the walk stops at the last needed die (the rest is skipped).

**Entry die.** A slice is loaded by the die its DRAM channel sits on (a local load) and its trip
starts at that die's position with the shortest walk to the last needed die; if that die has no
tokens for it, it is the first pass-through.

**R5** (the paper: DRAM sends to the die with the most free buffer, so a channel whose die is full
does not idle). Each channel pushes its own slices, in the central load order. Its next slice goes

1. to the channel's own die while that die has a free prefetch slot: exactly R4's load (the die
   would pull it into that slot now, queued behind the channel's earlier reads);
2. otherwise, and only when the channel would otherwise idle (no read outstanding), to the
   needed die with the most free prefetch slots (ties: fewer hops from the channel, shorter walk,
   cycle position) among the *unfed* needed dies: those no channel of their own still has a
   slice to push to (a die without a channel, or whose channels are drained), and whose walk to
   the last needed die is no longer than the walk from the channel's die (no extra hops);
3. otherwise nowhere: it waits for a prefetch slot to free (every free there triggers a retry).

Why the restrictions in 2. On a package where every die has a channel (fsedp-2x2) a free slot on
another die is that die's own channel's next load: taking it only moves the idle time from one
channel to another and adds a remote read, so R5 is R4 there until channels drain. A remote load
holds each link only for its own bytes (:func:`moec.ir.cost.load_time`), so walk links are not
excluded; a longer walk would add hops and in-flight trips for nothing.

**Slots** are taken most recently freed first (lowest first at the start). A load or recv into a
slot waits in the interpreter for that slot's ``free``: taking the slot whose release let the
rule act (R4's prefetch count, a lane's backpressure) makes the instruction wait for exactly that
event, so the interpreter runs it when the rules allow it and not earlier (a slot freed long ago
would let a load run ahead of R4's reservation of received slots, and the streams' timing drift
from the rules').

**Central load order** (the order dies pull slices and channels push them):
:func:`.fsedp_order.central_order` (``natural``, ``paired`` or ``balanced``).

**Local rules** on each die, with ``K`` slots: ``P = K // (2 m)`` per walk position (``m`` the
most positions a die has: 1 on a cycle, 2 on a path there and back) hold slices received from
the predecessor, the rest hold slices the die loaded itself (loading, loaded, or started):

* R1: a slice received from the predecessor is computed next (ahead of any local slice) and
  forwarded; the forward starts as soon as the slice is held and overlaps the compute (the
  weights are read-only), as the interpreter's ``send`` waits only for the slot's fill;
* R2: when nothing received waits for compute, the die starts its oldest loaded local slice (a
  new trajectory); a slice the die only passes on (it has no tokens for it) starts at once, as
  it needs no compute;
* R3: a die frees its slot once it has computed the slice and forwarded it; the last needed die
  ends the trajectory;
* R4: whenever fewer than ``K - P`` of its slots hold its own slices, the die pulls its next
  slice (in the central load order) from DRAM;
* backpressure: a position accepts a slice from its predecessor only while it holds fewer than
  ``P`` received ones, and forwards the slices it received before those loaded here; at most
  ``P x positions - 1`` trips are on the walk at once (from their first forward to their end;
  a trip computed only on its entry die never enters it), so a full ring of blocked forwards
  (the one possible deadlock: every position holding ``P`` received slices that all wait for
  their successor) cannot form.

**Naive FSE-DP** (``rules="naive"``): no streaming; every die loads each slice of every expert it
needs from DRAM itself into any of its ``K`` slots, computes it and frees it.

**Kicks.** A die acts (starts a compute, a trajectory or a forward) when it is kicked, and every
event kicks the dies whose state it changed, so after every event no die has anything left to
do (``tests/test_fsedp_sched.py`` checks it). Hence an arrival kicks only the die it reached:
the die the slice left freed a slot or a use of it, which lets its predecessor forward (kicked
by the release) but gives itself nothing new, and cannot end the trip (the in-flight cap), as
the visit just made still has its compute ahead (a trip's walk ends at a needed die's first
visit). A link freed only lets its lane forward again: the other lanes and the compute of its
die are as the last event left them.

The result is deterministic: events are ordered by (time, sequence number), and every choice
has an explicit tie-break.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from heapq import heappop, heappush
from itertools import count
from typing import Any

from moec.backends.interp.expand import fsedp_instrs as mk
from moec.backends.interp.expand.fsedp_order import central_order
from moec.backends.interp.expand.fsedp_problem import RULES, Hop, Machine, Problem, Schedule, Unit
from moec.backends.interp.expand.fsedp_state import DieState as _Die
from moec.backends.interp.expand.fsedp_state import Lane as _Lane
from moec.backends.interp.expand.fsedp_state import Trip
from moec.backends.interp.expand.fsedp_state import Visit as _Visit
from moec.ir.errors import ScheduleError
from moec.ir.stream.params import fsedp_min_slots, fsedp_walk
from moec.ir.stream.program import Instr, SliceRef

__all__ = ["RULES", "Machine", "Problem", "Schedule", "Unit", "check_fits", "route", "schedule"]


class _Sim:
    def __init__(self, prob: Problem, streams: bool = True) -> None:
        self.p = prob
        #: whether to write the instructions (not when only the estimate is asked for: no
        #: decision reads them)
        self.write = streams
        self.n = prob.num_dies
        k = check_fits(prob)
        self.naive = prob.rules == "naive"
        order = list(prob.order)
        # the closed walk slices follow: the cycle itself, or an open path there and back
        self.walk = fsedp_walk(order, prob.closed)
        self.positions: dict[int, list[int]] = {d: [] for d in range(self.n)}
        for q, d in enumerate(self.walk):
            self.positions[d].append(q)
        lanes = max(len(v) for v in self.positions.values())
        if lanes > 2:
            raise ScheduleError(f"FSE-DP walk {self.walk} meets a die {lanes} times (internal)")
        #: per die, its first and last position on the walk ((-1, -1) off it)
        self.ends = [(min(v), max(v)) if v else (-1, -1) for v in self.positions.values()]
        self.K = k
        self.P = 0 if self.naive else max(1, k // (2 * lanes))
        self.prefetch = [k - self.P * len(self.positions[d]) for d in range(self.n)]
        #: R5: channels push (else dies pull, R4)
        self.pushes = prob.r5 and not self.naive
        # no walk to block on when nothing is forwarded (naive, or a single die)
        self.cap = (1 << 30) if self.naive or len(self.walk) == 1 else self.P * len(self.walk) - 1
        #: per die, its instructions in the order decided (the clock never goes back)
        self.out: dict[int, list[Instr]] = {d: [] for d in range(self.n)}
        # taken from the right: lowest slot first, then the most recently freed
        self.dies = [
            _Die(d, deque(sorted(prob.slots[d])[:k][::-1]), self.out[d]) for d in range(self.n)
        ]
        self.lanes = [_Lane() for _ in self.walk]
        for q, lane in enumerate(self.lanes):
            lane.succ = self.lanes[(q + 1) % len(self.lanes)]
            lane.die, lane.pred = self.walk[q], self.walk[q - 1]
            self.dies[lane.die].lanes.append(lane)
        self.send = prob.machine.send
        self.active = 0
        self.now = 0.0
        self.seq = count()
        self.heap: list[tuple[float, int, Callable[..., None], Any, Any]] = []
        self.chan_free: dict[int, float] = {}
        self.trips: list[Trip] = []
        self.pass_throughs = 0
        # R5: per channel, the trips it still has to push, in load order, and its pushes
        # outstanding
        self.chan_queue: dict[int, deque[Trip]] = {}
        self.chan_out: dict[int, int] = {}
        self.channels_of: dict[int, list[int]] = {d: [] for d in range(self.n)}
        self._routes: dict[tuple[int, int], tuple[list[int], frozenset[int]]] = {}
        self._hops: dict[tuple[int, int], int] = {}
        for c, die in enumerate(prob.channel_die):
            self.channels_of[die].append(c)
        #: R5: the channels with a queue, ascending (every refill offers each a push); per die,
        #: its channels whose queue is not empty (queues only shrink: a die stays unfed once it
        #: is); whether some die is unfed; per (die, unit), the needed dies R5 may send to
        self.chan_order: list[int] = []
        self.fed = [0] * self.n
        self.any_unfed = False
        self._targets: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}

    # --- bookkeeping ---
    def at(self, t: float, fn: Callable[..., None], a: object, b: object) -> None:
        """At ``t``, call ``fn(self, a, b)`` (a plain function of the class, not a closure or a
        bound method: either would tie the simulation into reference cycles)."""
        heappush(self.heap, (t, next(self.seq), fn, a, b))

    def take_slot(self, d: _Die) -> int:
        if not d.free:
            raise ScheduleError(f"FSE-DP scheduler: die {d.id} has no free slot (internal)")
        d.held += 1
        if d.held > d.peak:
            d.peak = d.held
        return d.free.pop()

    def trip(self, unit: Unit, j: int) -> Trip:
        trip = Trip(len(self.trips), unit, j, SliceRef(self.p.layer, unit.expert, j))
        self.trips.append(trip)
        return trip

    def route_of(self, die: int, unit: Unit) -> tuple[list[int], frozenset[int]]:
        """:func:`route` from ``die`` through ``unit``'s needed dies, once per (die, unit): R5
        asks it for every candidate die of every push (do not change what it returns)."""
        key = (die, id(unit))  # a unit lives as long as the simulation
        hit = self._routes.get(key)
        if hit is None:
            hit = self._routes[key] = route(
                len(self.walk), self.ends, self.positions[die], unit.tokens
            )
        return hit

    def set_path(self, trip: Trip, die: int) -> None:
        trip.path, trip.compute_at = self.route_of(die, trip.unit)
        trip.last = len(trip.path) - 1

    # --- planning ---
    def plan(self) -> None:
        """The trips in the central load order, queued where they start, R4's routed (the
        compiled scheduler plans in arrays: :func:`.fsedp_compiled._plan`)."""
        for u, j in central_order(self.p):
            if not u.tokens:
                continue
            trip = self.trip(u, j)
            if self.naive:
                continue
            if self.p.r5:
                self.chan_queue.setdefault(trip.channel, deque()).append(trip)
                continue
            home = self.p.channel_die[trip.channel]
            self.set_path(trip, home)
            self.dies[home].queue.append(trip)
        if self.naive:
            per_slice, self.trips = self.trips, []
            for d in range(self.n):
                for trip in per_slice:
                    if d in trip.unit.tokens:
                        t = self.trip(trip.unit, trip.slice)
                        t.path, t.compute_at, t.last = [self.positions[d][0]], {0}, 0
                        self.dies[d].queue.append(t)

    # --- R4 / R5: loads ---
    def locals_of(self, d: _Die) -> int:
        """Slots of slices this die loaded itself: loading, loaded, or started and not freed."""
        return d.loading + len(d.ready) + d.started

    def pull(self, d: _Die) -> None:
        """R4: pull the die's next slice from DRAM while a prefetch slot is free."""
        while d.queue and d.free and self.locals_of(d) < self.prefetch[d.id]:
            self.load(d, d.queue.popleft())

    def load(self, d: _Die, trip: Trip) -> None:
        trip.slot = self.take_slot(d)
        d.loading += 1
        c = trip.channel
        machine = self.p.machine
        self.chan_free[c], out, hops = machine.load(c, d.id, trip.nbytes, self.now)
        if self.write:
            d.out.append(mk.load(trip.slot, c, trip.ref, trip.nbytes))
        if hops:
            self.at(out, _Sim.cross, (hops, 0), (d, trip))
        else:
            self.at(out, _Sim.loaded, d, trip)

    def loaded(self, d: _Die, trip: Trip) -> None:
        d.loading -= 1
        d.ready.append(trip)
        self.kick(d)

    def cross(self, route: tuple[tuple[Hop, ...], int], into: tuple[_Die, Trip]) -> None:
        """A load's data reaches hop ``k`` of its route ``(hops, k)`` now: claim its link
        (:meth:`loaded` into ``(die, trip)`` when it has crossed the last)."""
        hops, k = route
        end = self.p.machine.cross(hops[k], self.now)
        if k + 1 == len(hops):  # at(), inlined: the most frequent event of naive rules
            heappush(self.heap, (end, next(self.seq), _Sim.loaded, *into))
        else:
            heappush(self.heap, (end, next(self.seq), _Sim.cross, (hops, k + 1), into))

    def room(self, d: _Die) -> int:
        """Free prefetch slots of ``d``."""
        return min(self.prefetch[d.id] - (d.loading + len(d.ready) + d.started), len(d.free))

    def start_pushes(self) -> None:
        """R5's bookkeeping once the queues are filled (:meth:`plan`), then every channel's
        first pushes."""
        self.chan_order = sorted(self.chan_queue)
        for c in self.chan_order:
            self.fed[self.p.channel_die[c]] += 1
        self.any_unfed = not all(self.fed)
        for c in self.chan_order:
            self.push(c)

    def push(self, c: int) -> None:
        """R5: DRAM channel ``c`` sends its next slices while it has somewhere to send them."""
        q = self.chan_queue.get(c)
        while q:
            d = self.push_target(c, q[0])
            if d is None:
                return  # retried whenever a die's prefetch slot frees up
            trip = q.popleft()
            if not q:  # the channel is drained: its die may be unfed now
                home = self.p.channel_die[c]
                self.fed[home] -= 1
                self.any_unfed = self.any_unfed or not self.fed[home]
            self.set_path(trip, d.id)
            self.chan_out[c] = self.chan_out.get(c, 0) + 1
            self.load(d, trip)
            self.at(self.chan_free[c], _Sim.release_channel, c, None)

    def push_target(self, c: int, trip: Trip) -> _Die | None:
        """Where R5 sends ``trip`` from channel ``c`` now (module docstring), or None."""
        home = self.dies[self.p.channel_die[c]]
        if self.room(home) > 0:
            return home
        if self.chan_out.get(c, 0) > 0:
            return None  # the channel is still reading: its own die may free a slot meanwhile
        if not self.any_unfed:
            return None  # every die's free slot is its own channel's next load
        fed, dies = self.fed, self.dies
        best: tuple[tuple[int, int, int, int], _Die] | None = None
        for die, hops, length, pos in self.targets(home.id, trip.unit):
            if fed[die]:
                continue  # the slot is its own channel's next load
            d = dies[die]
            room = self.room(d)
            if room <= 0:
                continue
            key = (-room, hops, length, pos)
            if best is None or key < best[0]:
                best = (key, d)
        return None if best is None else best[1]

    def targets(self, home: int, unit: Unit) -> list[tuple[int, int, int, int]]:
        """The dies R5 may send ``unit``'s slices to from a channel of ``home`` when each has
        room and is unfed: the needed dies other than ``home`` whose walk to the last needed
        die is no longer than ``home``'s, as ``(die, hops from home, walk length, cycle
        position)``, in cycle order; once per (home, unit)."""
        key = (home, id(unit))  # a unit lives as long as the simulation
        out = self._targets.get(key)
        if out is None:
            longest = len(self.route_of(home, unit)[0])
            out = self._targets[key] = [
                (die, self.hops(home, die), length, pos)
                for pos, die in enumerate(self.p.order)
                if die != home
                and die in unit.tokens
                and (length := len(self.route_of(die, unit)[0])) <= longest
            ]
        return out

    def hops(self, a: int, b: int) -> int:
        """``Problem.hops``, asked once per pair of dies."""
        n = self._hops.get((a, b))
        if n is None:
            n = self._hops[(a, b)] = self.p.hops(a, b)
        return n

    def release_channel(self, c: int, _: None) -> None:
        self.chan_out[c] -= 1
        self.push(c)

    def refill(self, d: _Die) -> None:
        if self.pushes:
            queues, out, dies, home = self.chan_queue, self.chan_out, self.dies, self.p.channel_die
            for c in self.chan_order:
                # what push() would find nothing to do for is not asked (most refills): a
                # drained channel, or one whose die has no room while it still reads or while
                # no die is unfed (push_target())
                if queues[c] and (
                    self.room(dies[home[c]]) > 0 or (self.any_unfed and not out.get(c, 0))
                ):
                    self.push(c)
        else:
            self.pull(d)

    # --- R1 / R2 / R3: compute and forward ---
    def kick(self, d: _Die) -> None:
        """Start the die's next compute (R1 before R2) and its next forwards, if possible."""
        inbox, ready = d.inbox, d.ready
        while inbox or ready:  # most kicks find both empty
            if inbox and not d.computing:
                self.compute(d, inbox.popleft())  # R1
            elif ready:
                trip = ready[0]
                if 0 in trip.compute_at and (d.computing or inbox):
                    break  # its compute waits; a pass-through start needs none
                ready.popleft()  # R2: a new trajectory starts here
                d.started += 1
                self.arrive(d, self.visit(d, trip))
            else:
                break
        P = self.P
        for lane in d.lanes:
            # what forward() would find nothing to do for is not asked (most kicks): a lane
            # already sending, with nothing to send, or whose successor is full (backpressure)
            if (
                not lane.sending
                and lane.succ.pipeline < P
                and (lane.outbox or (lane.entry and self.active < self.cap))
            ):
                self.forward(d, lane)

    def visit(self, d: _Die, trip: Trip) -> _Visit:
        """The trip's stay on its entry die ``d`` (:meth:`forward` makes the others)."""
        trip.open += 1
        if trip.last == 0:
            trip.ended = True
        return _Visit(trip, d, trip.slot, 0, self.lanes[trip.path[0]])

    def arrive(self, d: _Die, v: _Visit) -> None:
        """R1: a slice held here is computed (if the die has tokens for it) and, unless this is
        the trajectory's end, forwarded at once: the two overlap, the weights are read-only."""
        trip, hop = v.trip, v.hop
        if hop in trip.compute_at:
            v.busy += 1
            d.inbox.append(v)
        else:
            self.pass_throughs += 1
        if hop < trip.last:
            v.busy += 1
            (v.lane.outbox if hop else v.lane.entry).append(v)

    def compute(self, d: _Die, v: _Visit) -> None:
        d.computing = True
        trip = v.trip
        if self.write:
            mk.slice_ops(d.out, v.slot, trip.unit.tokens[d.id])
        end = self.now
        for dur in trip.unit.compute(d.id, trip.slice):  # op by op, as the interpreter adds
            end += dur
        heappush(self.heap, (end, next(self.seq), _Sim.computed, d, v))  # at(), inlined

    def computed(self, d: _Die, v: _Visit) -> None:
        d.computing = False
        self.release(d, v)
        self.kick(d)

    def release(self, d: _Die, v: _Visit) -> None:
        """One use of the visit's slot is over; R3: free it after the last."""
        v.busy -= 1
        if v.busy:
            return
        if self.write:
            d.out.append(mk.free(v.slot))
        d.held -= 1
        d.free.append(v.slot)
        trip = v.trip
        trip.open -= 1
        if trip.ended and trip.open == 0 and trip.entered:
            self.active -= 1
            if self.active == self.cap - 1:
                for other in self.dies:  # the in-flight cap was binding: anyone may start
                    if other is not d:
                        self.kick(other)
        if v.hop == 0:
            d.started -= 1
            self.refill(d)  # R4: a prefetch slot is free again
        else:
            lane = v.lane
            lane.pipeline -= 1
            self.kick(self.dies[lane.pred])  # its predecessor may forward again

    def forward(self, d: _Die, lane: _Lane) -> None:
        """Send the lane's next slice on (received ones first, they hold the walk's slots) to
        the successor's lane (a trip's path is consecutive positions); the caller checked that
        the lane is idle and has one, and that the successor has room (backpressure)."""
        v = (lane.outbox if lane.outbox else lane.entry).popleft()
        trip = v.trip
        hop = v.hop + 1
        if not trip.entered:
            trip.entered = True
            self.active += 1
        lane.sending = True
        nlane = lane.succ
        nlane.pipeline += 1
        nxt = self.dies[nlane.die]
        if not nxt.free:  # take_slot(), inlined
            raise ScheduleError(f"FSE-DP scheduler: die {nxt.id} has no free slot (internal)")
        slot = nxt.free.pop()
        held = nxt.held = nxt.held + 1
        if held > nxt.peak:
            nxt.peak = held
        trip.open += 1  # visit(), inlined: every hop makes one
        if hop == trip.last:
            trip.ended = True
        nv = _Visit(trip, nxt, slot, hop, nlane)
        nbytes = trip.nbytes
        if self.write:
            d.out.append(mk.send(nxt.id, nbytes, v.slot))
            nxt.out.append(mk.recv(d.id, nbytes, slot, trip.ref))
        link_free, end = self.send(d.id, nxt.id, nbytes, self.now)
        heap, seq = self.heap, self.seq  # at(), inlined: two events per hop
        heappush(heap, (link_free, next(seq), _Sim.sent, d, lane))
        heappush(heap, (end, next(seq), _Sim.hopped, v, nv))

    def sent(self, d: _Die, lane: _Lane) -> None:
        """The link is free for the lane's next forward: :meth:`kick` of ``d``, which can find
        nothing else to do (module docstring, "Kicks")."""
        lane.sending = False
        if lane.succ.pipeline < self.P and (lane.outbox or (lane.entry and self.active < self.cap)):
            self.forward(d, lane)

    def hopped(self, v: _Visit, nv: _Visit) -> None:
        """The slice of ``v`` has arrived as ``nv`` on the next die: :meth:`kick` that die (the
        one it left has nothing new to do: module docstring, "Kicks")."""
        self.arrive(nv.die, nv)
        if v.busy > 1:  # release(), whose first step this is, when the slot is still in use
            v.busy -= 1
        else:
            self.release(v.die, v)
        self.kick(nv.die)

    # --- the run ---
    def run(self) -> Schedule:
        self.plan()
        if self.pushes:
            self.start_pushes()
        else:
            for d in self.dies:
                self.pull(d)
        heap = self.heap
        while heap:
            t, _, fn, a, b = heappop(heap)
            self.now = t
            fn(self, a, b)
        stuck = [d.id for d in self.dies if d.queue or d.ready or d.inbox or d.held]
        stuck += [self.walk[q] for q, lane in enumerate(self.lanes) if lane.outbox or lane.entry]
        left = sum(len(q) for q in self.chan_queue.values())
        if stuck or left:
            raise ScheduleError(
                f"FSE-DP scheduler stalled on layer {self.p.layer} (dies {sorted(set(stuck))}, "
                f"{left} slices not loaded)"
            )
        streams = self.out
        paths = [((tr.unit.expert, tr.slice), [self.walk[q] for q in tr.path]) for tr in self.trips]
        return Schedule(
            streams, paths, self.now, {d.id: d.peak for d in self.dies}, self.pass_throughs
        )


def route(
    W: int, ends: list[tuple[int, int]], starts: list[int], needed: Iterable[int]
) -> tuple[list[int], frozenset[int]]:
    """The positions of a walk of ``W`` a slice entering at one of ``starts`` takes to its last
    needed die, and the hops of that route where it is computed (each needed die's first
    visit). From each start, a needed die is first met at the nearer ahead of its first and
    last position (``ends``: a die meets the walk at most twice; one off it, never: the route
    is then the whole walk); the route ends at the needed die met last; the shortest wins (ties:
    the first start). ``tests/test_fsedp_sched.py`` checks it against the walk step by step."""
    best: tuple[int, int, list[int]] | None = None
    for q0 in starts:
        steps, at = 0, []
        for d in needed:
            a, b = ends[d]
            if a < 0:
                steps = W - 1
                continue
            a, b = (a - q0) % W, (b - q0) % W
            if b < a:
                a = b
            at.append(a)
            if a > steps:
                steps = a
        if best is None or steps < best[0]:
            best = (steps, q0, at)
    assert best is not None
    steps, q0, at = best
    return [(q0 + s) % W for s in range(steps + 1)], frozenset(at)


def check_fits(prob: Problem) -> int:
    """The free buffer slots per die :func:`schedule` plays ``prob`` with (the fewest any die
    has); raises the :class:`ScheduleError` it would raise before playing a step: unknown rules,
    or fewer slots than the trajectory needs (:func:`~moec.ir.stream.params.fsedp_min_slots`)."""
    k = min(len(prob.slots.get(d, [])) for d in range(prob.num_dies))
    if prob.rules not in RULES:
        raise ScheduleError(f"unknown FSE-DP rules {prob.rules!r}, expected one of {RULES}")
    need = fsedp_min_slots(list(prob.order), prob.closed, prob.rules)
    if k < need:
        raise ScheduleError(
            f"does not fit SRAM: FSE-DP with rules {prob.rules} needs at least {need} free "
            f"buffer slots per die at layer {prob.layer} on this trajectory, found {k}"
        )
    return k


def schedule(prob: Problem, streams: bool = True) -> Schedule:
    """Simulate the FSE-DP rules on ``prob`` and return each die's instruction stream; with
    ``streams`` false, the same schedule without its instructions (every die's stream empty:
    for :attr:`Schedule.estimate_s` and the other figures alone, which do not depend on them).
    Played by the reference (:class:`_Sim`) or its compiled copy (:mod:`.fsedp_compiled`), the
    same schedule."""
    from moec.backends.interp.expand import fsedp_compiled

    sim = _Sim(prob, streams)
    return fsedp_compiled.schedule(sim) if fsedp_compiled.wanted(prob) else sim.run()
