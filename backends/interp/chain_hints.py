"""The shapes of the streamed micro-slices a block of :func:`.expand.streaming.stream_runs` made.

The expansion knows each streamed slice's shape when it makes it (its expert's shared-ness, its
slice's width, channel, bytes and token count); the builder's :func:`.slice_chain.slice_run`
would otherwise rediscover it chain by chain (check the five instructions, read the load's
fields, look its template up). :data:`BLOCKS` hands it over: per block, keyed by the id of its
first ``load`` (kept alive in the entry, so that its id stays its own), the block itself and,
per chain, the index of the block's first chain of the same shape. The builder takes a block's
entry when the instructions it walks are that block (:func:`take`), looks one template up per
shape and gives every chain its shape's; without an entry (a run made one slice at a time, an
instruction list copied or edited since) it walks chain by chain, as the reference does.

An entry keeps its block's instructions alive until a build takes it: every build ends with
:func:`clear` (:func:`.timing.run_timing`: what it did not take is stale), and so does a part
of a layered run that is dropped unbuilt (:mod:`.layered`). A later build of the same program
walks chain by chain, to the same timeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: per id of a block's first ``load``: (that load, the block's instructions, per chain the index
#: of the block's first chain of its shape)
BLOCKS: dict[int, tuple[Any, list[Any], list[int]]] = {}


def put(block: list[Any], reps: list[int]) -> None:
    """Record ``block`` (five instructions per chain) and its chains' shape representatives."""
    BLOCKS[id(block[0])] = (block[0], block, reps)


def take(ins: Sequence[Any], j: int) -> list[int] | None:
    """The shape representatives of the block that starts at ``ins[j]``, if ``ins[j:]`` starts
    with that block, instruction for instruction (its entry is dropped: taken once)."""
    hit = BLOCKS.get(id(ins[j]))
    if hit is None or hit[0] is not ins[j]:
        return None
    block = hit[1]
    if ins[j : j + len(block)] != block:
        return None
    del BLOCKS[id(ins[j])]
    return hit[2]


def clear() -> None:
    """Drop every entry (their blocks' instructions are no longer kept alive here)."""
    BLOCKS.clear()
