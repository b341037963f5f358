"""Hydra (``strategy hydra``): popularity-aware expert parallelism at run time.

Hydra differs from EP only in where the compiler put the experts (``placement``, chosen from
routed-token counts by ``compiler/lower/hydra.py``); once placed, tokens travel to their experts
and back exactly as in EP, so the expansion is EP's (:mod:`.ep`), reading the same ``placement``
and ``channels`` parameters.
"""

from __future__ import annotations

from moec.backends.interp.expand import ExpandContext, register
from moec.backends.interp.expand.ep import expand as expand_ep
from moec.ir.stream.program import Instr


@register("hydra")
def expand(ctx: ExpandContext) -> dict[int, list[Instr]]:
    """EP's expansion with Hydra's placement."""
    return expand_ep(ctx)
