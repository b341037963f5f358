"""More SRAM never makes ``--strategy auto`` slower: the search also times what it picks with less.

A schedule the search picks with less SRAM still fits with more, and with its SRAM-dependent
choices written out (:func:`pinnings`: the micro-slice counts of the routed and the shared
experts; slots, token chunks and the rest are options already) it lowers to the same program,
only the target's SRAM differs, so it takes the same time. The search's own candidates do not
grow with SRAM: ``slices=fit``, TP's coarse chunked cut (its chunk bisected against SRAM,
:mod:`moec.coarse_tp`), the slice-count variants next to each lowering's cut and the
refinement's neighbours all move with it, and a fixed budget of interpreter runs spent in
bound order can miss the earlier winner among new candidates.

So when ``sram_mib_per_die`` raises the target's SRAM above the target's own,
:func:`moec.auto.search` first searches at the rung just below (:func:`lesser_sram`: the largest
of :func:`rungs` under the requested SRAM, or the target's own), which does the same in turn
down to the target's own SRAM, and times that winner as one more candidate (one run beyond the
budget, like the per-layer merge): the least pinned spec that lowers to the same program
(:func:`same_program`), else that program itself, which fits this SRAM too, named
``spec@<MiB>MiB`` (no option spells some cuts: ``slices=fit`` cuts DeepSeek-MoE-16B's shared
experts into fewer slices than an explicit ``shared_slices`` may take; re-lowering such a
winner's name with this SRAM gives another program, the ``.msp`` written is the one timed).
Its latency bounds the search's from above, so from the target's own SRAM up along the rungs
(2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64 ... MiB) more SRAM never makes ``auto`` slower. The
price is one search per rung: fsedp-2x2 (16 MiB) at 64 MiB also searches at 48, 32, 24 and
16 MiB.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from moec.compiler.lower import STRATEGIES, parse_strategy
from moec.compiler.lower.options import StrategyError
from moec.ir.stream import Program, TargetRef
from moec.ir.target import MIB, load_target
from moec.slice_variants import spell

if TYPE_CHECKING:
    from moec.auto import Trial

#: The override whose rise the search inherits across.
SRAM_KEY = "sram_mib_per_die"


def rungs(low: float, high: float) -> list[float]:
    """The SRAM sizes (MiB) strictly between ``low`` and ``high`` of the form 2^k or 3 x 2^k,
    ascending: the steps :func:`lesser_sram` walks down."""
    if not (0 < low < high) or not math.isfinite(high):
        return []
    out: set[float] = set()
    k = math.floor(math.log2(low)) - 1
    while 2.0**k < high:
        out.update(v for v in (2.0**k, 3 * 2.0 ** (k - 1)) if low < v < high)
        k += 1
    return sorted(out)


def lesser_sram(
    target_ref: TargetRef, base_dir: str | None = None
) -> tuple[TargetRef, float] | None:  # fmt: skip
    """``target_ref`` one SRAM rung down (module docstring) and its SRAM in MiB, or None when
    its SRAM is not raised above the target's own by ``sram_mib_per_die``."""
    given = dict(target_ref.overrides)
    if SRAM_KEY not in given:
        return None
    try:
        mib = float(given[SRAM_KEY])
    except (TypeError, ValueError):
        return None
    rest = {k: v for k, v in given.items() if k != SRAM_KEY}
    own = load_target(target_ref.spec, rest, base_dir=base_dir).dies[0].sram_bytes / MIB
    if not mib > own:
        return None
    below = rungs(own, mib)
    if not below:
        return TargetRef(target_ref.spec, tuple(sorted(rest.items()))), own
    step = below[-1]
    value: int | float = int(step) if step == int(step) else step
    return TargetRef(target_ref.spec, tuple(sorted({**rest, SRAM_KEY: value}.items()))), step


def pinnings(trial: Trial) -> list[str]:
    """``trial``'s spec as given, then with its micro-slice counts written out (``slices``, then
    ``shared_slices`` too when the layer has shared experts): the specs that may lower to its
    program with more SRAM, least pinned first (pinning the shared experts' count can also
    change how the slots share SRAM, so it comes last). Empty for a trial that is not one
    strategy (the per-layer merge); the counts are left out when the layers were cut into
    different counts (one option cannot pin them all)."""
    try:
        name, opts = parse_strategy(trial.strategy)
    except StrategyError:  # the per-layer merge: "per-layer[moe0=tp,...]"
        return []
    program = trial.program
    if name not in STRATEGIES or program is None or not program.layers:
        return []
    out = [trial.strategy]
    pin = dict(opts)
    for shared, key in ((False, "slices"), (True, "shared_slices")):
        counts = {
            lay.count for m in program.layers if (lay := program.layout(m.name, shared=shared))
        }
        if len(counts) == 1:
            pin[key] = str(counts.pop())
            out.append(spell(name, pin))
    return list(dict.fromkeys(out))


def same_program(a: Program, b: Program) -> bool:
    """True when ``a`` and ``b`` differ at most in their target (its SRAM override)."""
    return dataclasses.replace(a, target=b.target) == b
