"""What a layer-by-layer run knows is ahead of it, told to the compiled kernels' decisions.

The FSE-DP scheduler (:mod:`.expand.fsedp_compiled`) and the event loop (:mod:`.event_loop`)
each start a process on their Python reference and switch to their numba kernel once the work
played, plus the work a caller said is ahead (their ``expect``), pays for loading it (the
rent-or-buy rule). A whole-model run knows before its first layer how many FSE-DP layers of
what size it will schedule: :func:`fsedp_work` counts their micro-slices times dies (the
scheduler's measure of work) from the program's slice layouts and the routings, so a run of
many layers plays its first layer with the kernel, while a one-layer point too small to pay
for it does not load it. (The event loop's share is said by :mod:`.layered`, part by part:
the first MoE part's instructions, times the MoE parts to come.) Which implementation runs
never changes a number: both pairs are the same computation to the bit (their tests compare
them).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np

from moec.backends.interp.expand import fsedp_compiled
from moec.ir.routing import LayerRouting
from moec.ir.stream import Program, SliceLayout
from moec.ir.target import Target


def fsedp_work(
    p: Program, target: Target, layouts: Mapping[tuple[str, bool], SliceLayout],
    routings: Mapping[str, LayerRouting],
) -> int:  # fmt: skip
    """About the micro-slices times dies the FSE-DP scheduler plays for ``p``'s layers under
    ``routings`` (those with a routing): per FSE-DP layer, its routed experts with tokens times
    their slice count, plus the shared experts' slices, times the dies. An estimate (a skip or
    buffering rule may drop pairs before the scheduler sees them), used to pick an
    implementation, never a number."""
    work = 0
    for m in p.layers:
        r, pol, lay = routings.get(m.name), p.policy(m.name), layouts.get((m.name, False))
        if r is None or pol is None or pol.strategy != "fsedp" or lay is None:
            continue
        ids = np.asarray(r.ids)
        slices = int(np.unique(ids[ids >= 0]).size) * len(lay.columns)
        shared = layouts.get((m.name, True))
        if m.shared_ffn and shared is not None:
            slices += len(shared.columns)
        work += slices * target.num_dies
    return work


@contextmanager
def scheduling(work: int) -> Iterator[None]:
    """Within the block, the FSE-DP scheduler expects at least ``work`` more micro-slices times
    dies (:func:`~.expand.fsedp_compiled.expect`); after it, what a caller had said is ahead
    less what the block played (a slice choice's expectation, around one of its timings, is
    left as if the block had not spoken)."""
    before, played = fsedp_compiled.expected()
    fsedp_compiled.expect(max(before, work))
    try:
        yield
    finally:
        fsedp_compiled.expect(before - (fsedp_compiled.expected()[1] - played))
