"""Online choice at run time: the on-package scheduler picks one pre-compiled alternative.

A layer whose policy is ``strategy online`` (``docs/isa.md``, "Online choice") holds 2-4
alternatives and a decision list over routing statistics. Before the layer is expanded,
:func:`resolve` computes the statistics of the batch's top-k ids
(:func:`moec.ir.stream.online.routing_stats`, one pass), evaluates the list, and returns the
program with that layer's policy replaced by the chosen alternative; everything after it (the
skip rule, the strategy's expander, offloading) sees an ordinary policy. So a choosing program
expanded for a routing is exactly the chosen alternative's program expanded for it: the same
instructions, hence the same timing and outputs. The choice is recorded per layer
(:class:`Chosen`, in the run report under ``online_choice``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from moec.ir.routing import LayerRouting
from moec.ir.stream.online import ONLINE, RoutingStats, choose, routing_stats
from moec.ir.stream.program import Program


@dataclass(frozen=True)
class Chosen:
    """Which alternative one layer ran for one batch, and the statistics that chose it."""

    layer: str
    alternative: int
    strategy: str
    stats: RoutingStats

    def to_dict(self) -> dict[str, Any]:
        return {
            "alternative": self.alternative,
            "strategy": self.strategy,
            "stats": self.stats.as_dict(),
        }


def resolve(
    p: Program, layer: str, routing: LayerRouting, num_dies: int
) -> tuple[Program, Chosen | None]:
    """``p`` with layer ``layer``'s online policy replaced by the alternative its rule picks for
    ``routing`` (and what was chosen); ``p`` itself, and None, for any other policy."""
    policy = p.policy(layer)
    if policy is None or policy.strategy != ONLINE:
        return p, None
    decl = p.layer(layer)
    experts = decl.experts if decl is not None else routing.num_experts
    stats = routing_stats(routing.ids, experts, num_dies)
    i = choose(policy.choices, stats)
    chosen = Chosen(layer, i, policy.alternatives[i].strategy, stats)
    return with_alternatives(p, {layer: i}), chosen


def with_alternatives(p: Program, picks: dict[str, int]) -> Program:
    """``p`` with each online policy of a layer in ``picks`` replaced by that alternative."""
    runtime = [
        r.alternative(picks[r.layer]) if r.strategy == ONLINE and r.layer in picks else r
        for r in p.runtime
    ]
    return dataclasses.replace(p, runtime=runtime)


def resolve_all(
    p: Program, routings: dict[str, LayerRouting], num_dies: int
) -> tuple[Program, dict[str, Chosen]]:
    """:func:`resolve` for every layer with a routing in ``routings`` (layer name -> routing)."""
    chosen: dict[str, Chosen] = {}
    for m in p.layers:
        r = routings.get(m.name)
        if r is not None:
            p, c = resolve(p, m.name, r, num_dies)
            if c is not None:
                chosen[m.name] = c
    return p, chosen
