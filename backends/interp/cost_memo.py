"""The op-graph builder's memoized costs, and the route of a load (:mod:`.opgraph`).

What :class:`CostMemo` holds depends only on the target and a shape, never on the routing, so
a layer-by-layer run hands one memo from part to part (:class:`~.timing.Carry`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moec.ir.target import PRECISION_BYTES, Target

__all__ = ["CostMemo", "LoadPath", "precision_of"]


@dataclass(frozen=True)
class LoadPath:
    """How a load from one channel (or the host) reaches one die."""

    #: the channel's (or the die's host link's) resource id
    res: int
    #: the channel's id, or ``HOST_CHANNEL``
    channel: int
    latency: float
    #: per hop of the route: (link resource, link source die, destination die, latency)
    hops: tuple[tuple[int, int, int, float], ...]


def precision_of(nbytes: int, elements: int, default: str) -> str:
    """The precision whose element size makes ``elements`` weigh ``nbytes``, else ``default``."""
    if elements <= 0 or int(round(elements * PRECISION_BYTES.get(default, 0))) == nbytes:
        return default
    for name, size in PRECISION_BYTES.items():
        if int(round(elements * size)) == nbytes:
            return name
    return default


class CostMemo:
    """The builder's memoized costs: what depends only on the target and a shape, never on the
    routing (a compute op's duration and joules per die, tokens and geometry; a transfer's per
    link and bytes; a read's route, holds and joules per channel, die and bytes). A
    layer-by-layer run hands one memo to every part (:class:`~.timing.Carry`), so the layers of
    a model compute the shapes they repeat once; the values are the same floats either way."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.load_paths: dict[tuple[int, int], LoadPath] = {}
        self.reads: dict[tuple[int, int, int], tuple[float, list[tuple[float, float]]]] = {}
        #: per (channel, die, bytes): :meth:`~.opgraph.Builder.read_plan`
        self.plans: dict[tuple[int, int, int], Any] = {}
        #: compute op durations by shape (:meth:`~.opgraph.Builder.compute_cost`)
        self.compute: dict[tuple[Any, ...], float] = {}
        #: per (src, dst, bytes): a transfer's link resource, hold, latency and its joules
        self.transfers: dict[tuple[int, int, int], tuple[Any, ...]] = {}
        #: per slice opcode, die, geometry and precisions: its duration and energy parts
        self.slices: dict[tuple[Any, ...], tuple[float, tuple[tuple[int, float], ...]]] = {}
        #: the same for a whole micro-slice (:data:`~.opgraph.SLICE_UNIT`), and the bytes of its ``h``
        self.units: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        #: per (op kind, channel, die, bytes): the ops of a read (:meth:`~.opgraph.Builder.read`)
        self.read_ops: dict[tuple[int, int, int, int], tuple[Any, ...]] = {}
        #: per (die, slice geometry): a streamed micro-slice's templates by (channel, bytes,
        #: token counts) (:func:`~.slice_chain._lookup`: no layer in them, so every part's)
        self.chains: dict[tuple[Any, ...], dict[tuple[int, ...], tuple[Any, ...]]] = {}
