"""The timing engine's resource state, forked for the FSE-DP scheduler: one timing engine.

The scheduler (:mod:`.fsedp_sched`) decides R1-R5 on a clock. That clock is the interpreter's
own: every step it plays is timed here by the timing machine's rules (:mod:`..timing`) on a
private copy of its resources (each DRAM channel and each direction of each D2D link, with the
time it frees), with the durations the interpreter's handlers charge, taken from the same
memoized cost plans of :class:`~..opgraph.Builder` (:meth:`~..opgraph.Builder.read_costs`,
:meth:`~..opgraph.Builder.transfer_costs`) and the compute handlers' own cost functions
(:data:`..timing_ops.SLICE_COSTS`). There is no second estimate: a load, a hop or a slice
compute the scheduler plays at time ``t`` ends when the interpreter, running the streams it
wrote, ends it, provided its inputs are ready at ``t`` in both and no other op claimed the same
resource in between (the interpreter claims a resource in the order ops become ready, the
scheduler in the order it decides; the two agree when each instruction is decided the moment
its last input is ready, which the scheduler arranges, see its docstring).

A load is its channel's hold (:func:`moec.ir.cost.dram_occupancy`), the channel latency, then
per hop a tail-reserved link hold and the hop latency, each hop claimed when the data reaches it
(:meth:`Engine.cross`, called by the scheduler at that time, as the interpreter claims it); a transfer is the link hold
(:func:`moec.ir.cost.link_occupancy`) and the link latency; a slice compute is its ``gemm``,
``act`` and ``accum`` one after the other on the die's compute unit (the scheduler keeps one
compute at a time per die, as the interpreter's program order does).
"""

from __future__ import annotations

from typing import Any

from moec.backends.interp.expand.fsedp_problem import Hop
from moec.backends.interp.opgraph import Builder
from moec.backends.interp.timing_ops import SLICE_COSTS
from moec.ir.stream.program import Program
from moec.ir.target import Target

#: the slice compute durations (:meth:`Engine.slice_compute`) of the last target an engine was
#: made for, shared by that target's engines (a whole-model run makes one a layer, and each
#: asks the same shapes): ``[target, durations]``; a target is frozen, its durations too
_COMPUTE: list[Any] = [None, {}]


class Engine:
    """The interpreter's resource state and costs for one layer's scheduling (idle at 0)."""

    def __init__(self, program: Program, target: Target) -> None:
        self.b = Builder(program, target)
        #: per resource id of the builder, the time it frees
        self.free_at = [0.0] * self.b.num_res
        if _COMPUTE[0] is not target:
            _COMPUTE[:] = [target, {}]
        self._compute: dict[tuple[Any, ...], tuple[float, ...]] = _COMPUTE[1]
        self._loads: dict[tuple[int, int, int], tuple[int, float, float, tuple[Hop, ...]]] = {}
        self._sends: dict[tuple[int, int, int], tuple[int, float, float]] = {}

    def load(
        self, channel: int, die: int, nbytes: int, ready: float
    ) -> tuple[float, float, tuple[Hop, ...]]:
        """A DRAM read into ``die`` whose inputs are ready at ``ready``, claiming its channel:
        ``(channel frees, data has left DRAM, the route's hops)``, a hop being ``(link
        resource, hold, back, latency)`` for :meth:`cross`."""
        plan = self._loads.get((channel, die, nbytes))
        if plan is None:
            plan = self.load_plan(channel, die, nbytes)
        res, occ, lat, hops = plan
        free_at = self.free_at
        s = free_at[res]
        if s < ready:
            s = ready
        chan = free_at[res] = s + occ
        return chan, (chan + lat if lat > 0.0 else chan), hops

    def load_plan(
        self, channel: int, die: int, nbytes: int
    ) -> tuple[int, float, float, tuple[Hop, ...]]:
        """What :meth:`load` claims, memoized: ``(channel resource, its hold, the channel
        latency, the route's hops)`` (the compiled scheduler reads them as arrays)."""
        key = (channel, die, nbytes)
        plan = self._loads.get(key)
        if plan is None:
            b = self.b
            lp = b.load_path(channel, die)
            occ, costs = b.read_costs(channel, die, nbytes)
            hops = tuple(
                (res, dur, back, lat)
                for (res, _, _, lat), (dur, back) in zip(lp.hops, costs, strict=True)
            )
            plan = self._loads[key] = (lp.res, occ, lp.latency, hops)
        return plan

    def send_plan(self, a: int, b: int, nbytes: int) -> tuple[int, float, float]:
        """What :meth:`send` claims, memoized: ``(link resource, its hold, its latency)``."""
        key = (a, b, nbytes)
        plan = self._sends.get(key)
        if plan is None:
            (res,), occ, lat, *_ = self.b.transfer_costs(a, b, nbytes)
            plan = self._sends[key] = (res, occ, lat)
        return plan

    def cross(self, hop: Hop, at: float) -> float:
        """The data reaches ``hop`` at ``at`` (the previous stage's end): a tail reservation of
        the link as the interpreter makes it; returns when the data has crossed."""
        res, dur, back, lat = hop
        free_at = self.free_at
        s = at - back
        if free_at[res] > s:
            s = free_at[res]
        e = free_at[res] = s + dur
        return e + lat if lat > 0.0 else e

    def send(self, a: int, b: int, nbytes: int, ready: float) -> tuple[float, float]:
        """A transfer ``a -> b`` whose sides are ready at ``ready``: ``(link frees, data
        arrives)``."""
        plan = self._sends.get((a, b, nbytes))
        if plan is None:
            plan = self.send_plan(a, b, nbytes)
        res, occ, lat = plan
        s = self.free_at[res]
        if s < ready:
            s = ready
        e = self.free_at[res] = s + occ
        return e, (e + lat if lat > 0.0 else e)

    def slice_compute(
        self, die: int, tokens: int, hidden: int, width: int, gated: bool, precision: str
    ) -> tuple[float, ...]:
        """Seconds of a micro-slice's ``gemm``, ``act`` and ``accum`` for ``tokens`` on
        ``die``, each as its timing handler charges it."""
        key = (die, tokens, hidden, width, gated, precision)
        hit = self._compute.get(key)
        if hit is None:
            t = self.b.t
            hit = self._compute[key] = tuple(
                fn(t, die, tokens, hidden, width, gated, precision) for _, fn in SLICE_COSTS
            )
        return hit
