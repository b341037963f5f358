"""Expert residency between iterations: keep micro-slices in SRAM instead of streaming them again.

A weight-streaming accelerator in decode loads the same hot experts step after step. With
residency, each die keeps copies of the micro-slices it loaded from DRAM in the SRAM the program
does not use, and a later iteration's load of a slice the die still holds moves no DRAM bytes.

* **Capacity** per die: its SRAM minus the program's buffer slots (the streaming pool) minus an
  activation reserve of every MoE layer's inputs and outputs for all tokens (``2 x T x hidden``
  elements per layer, an upper bound of what a die holds) unless ``capacity`` is given.
* **Policy** (named): ``lru`` admits every slice it loads and evicts the least recently used;
  ``popularity`` counts how often each slice was needed so far on the die and admits a slice
  only by evicting slices needed less often (ties: the resident stays), so a cold expert does not
  push out a hot one.
* **What is charged**: a hit keeps its ``load`` (it still waits for its slot, in order) with
  ``bytes 0``: no DRAM or link bytes and no channel occupancy; it still pays the channel's access
  latency, a conservative stand-in for the SRAM-to-slot copy. A miss is an ordinary load.
* **Where a slice is resident**: on the die that loaded it. Strategies that load a slice on the
  same die every iteration (EP, TP, Hydra) hit on every iteration after the first when capacity
  allows; FSE-DP, where the die that pulls a slice from DRAM depends on the iteration's routing,
  hits only when the same die pulls it again. A copy on another die is not used (that would be a
  D2D transfer the expansion does not emit).

A hit's ``load ... bytes 0`` makes the content's precision unreadable from its bytes, so the
serving run hands the timing the program's per-expert precision tables: compute on a resident
slice is timed at its expert's precision, exactly as on the iteration that loaded it.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any

from moec.ir.cost import bytes_per_element
from moec.ir.errors import ScheduleError
from moec.ir.stream.program import HOST_CHANNEL, Instr, Load, Program, SliceRef
from moec.ir.target import Target

#: The residency policies, by name.
POLICIES = ("lru", "popularity")


def default_capacity(p: Program, target: Target, die: int) -> int:
    """Bytes die ``die`` can hold resident (see module doc)."""
    pool = next((s for s in p.slots if s.die == die), None)
    slots = pool.count * pool.nbytes if pool is not None else 0
    acts = sum(int(2 * m.tokens * m.hidden * bytes_per_element(m.dtype)) for m in p.layers)
    return max(0, target.die(die).sram_bytes - slots - acts)


class Residency:
    """The per-die resident sets of a serving run and the rewrite that applies them.

    Called as ``rewrite(iteration, die, instructions)`` by
    :func:`moec.backends.interp.serving.concatenate`, in iteration order.
    """

    def __init__(self, p: Program, target: Target, policy: str, capacity: int | None = None):
        if policy not in POLICIES:
            raise ScheduleError(
                f"unknown residency policy {policy!r}, expected one of {', '.join(POLICIES)}"
            )
        self.policy = policy
        self.capacity = {
            d: capacity if capacity is not None else default_capacity(p, target, d)
            for d in range(target.num_dies)
        }
        self.resident: dict[int, OrderedDict[tuple[str, int | None, int], int]] = {
            d: OrderedDict() for d in range(target.num_dies)
        }
        self.used: dict[int, int] = dict.fromkeys(range(target.num_dies), 0)
        self.needed: dict[tuple[int, str, int | None, int], int] = {}
        self.hits = self.misses = self.saved_bytes = self.peak = 0
        #: per iteration, the DRAM bytes of slice loads that missed
        self.miss_bytes: list[int] = []

    def _admit(self, die: int, key: tuple[str, int | None, int], nbytes: int) -> None:
        cap, res = self.capacity[die], self.resident[die]
        if nbytes > cap:
            return
        if self.policy == "lru":
            while self.used[die] + nbytes > cap:
                _, b = res.popitem(last=False)
                self.used[die] -= b
        else:
            mine = self.needed[(die, *key)]
            while self.used[die] + nbytes > cap:
                # the least needed resident (ties: the longest resident), if less needed
                victim = min(res, key=lambda k: self.needed[(die, *k)])
                if self.needed[(die, *victim)] >= mine:
                    return
                self.used[die] -= res.pop(victim)
        res[key] = nbytes
        self.used[die] += nbytes
        self.peak = max(self.peak, self.used[die])

    def __call__(self, iteration: int, die: int, instrs: list[Instr]) -> list[Instr]:
        while len(self.miss_bytes) <= iteration:
            self.miss_bytes.append(0)
        out: list[Instr] = []
        res = self.resident[die]
        for i in instrs:
            c = getattr(i, "content", None)
            if not (isinstance(i, Load) and isinstance(c, SliceRef)) or i.channel == HOST_CHANNEL:
                out.append(i)
                continue
            key = (c.layer.rpartition("#")[0] or c.layer, c.expert, c.slice)
            self.needed[(die, *key)] = self.needed.get((die, *key), 0) + 1
            if key in res:
                res.move_to_end(key)
                self.hits += 1
                self.saved_bytes += i.nbytes
                out.append(dataclasses.replace(i, nbytes=0))
                continue
            self.misses += 1
            self.miss_bytes[iteration] += i.nbytes
            out.append(i)
            self._admit(die, key, i.nbytes)
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "residency": self.policy,
            "residency_capacity_bytes_min": min(self.capacity.values(), default=0),
            "resident_bytes_peak": self.peak,
            "residency_hits": self.hits,
            "residency_misses": self.misses,
            "residency_saved_dram_bytes": self.saved_bytes,
        }


def residency_rewrite(
    p: Program, target: Target, policy: str, capacity: int | None = None
) -> Residency:
    """The rewrite of a serving run keeping slices resident by ``policy``."""
    return Residency(p, target, policy, capacity)
