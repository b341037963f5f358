"""Offloaded experts: their micro-slices come from host memory, over the die's host link.

The compiler decides residency (``compiler/lower/residency.py``) and records it in the runtime
policy, ``annotate resident = [1, 0, ...]`` (1: device memory, 0: host), and declares each
offloaded expert's tensor on the host (``tensor L.e5 ... host bytes B``). Expanders place loads
on the channel a strategy picks for an expert's die; :func:`offload_loads` then moves every load
of an offloaded expert's micro-slice to the host (``load sK <- host L:e5:s0 ...``), whatever the
strategy, so EP, TP, Hydra, EPLB and FSE-DP all time offloading the same way (the timing machine
charges :func:`moec.ir.cost.host_time` on the loading die's host link). The CAEE rule reads the
same :func:`residency` for its prediction, so what it predicts is what the interpreter times.

Before/after for expert 5 offloaded::

    load s0 <- ch1 moe0:e5:s0 bytes 24576   ==>   load s0 <- host moe0:e5:s0 bytes 24576
"""

from __future__ import annotations

import dataclasses

from moec.ir.errors import ProgramError
from moec.ir.stream.program import (
    HOST_CHANNEL,
    Instr,
    Load,
    MoEDecl,
    Program,
    RuntimePolicy,
    SliceRef,
)
from moec.ir.target import Target


def residency(policy: RuntimePolicy | None, decl: MoEDecl) -> list[int] | None:
    """Per expert 1 (resident) or 0 (offloaded) from ``annotate resident``; None when absent
    or when every expert is resident. A malformed list is a located ProgramError."""
    if policy is None:
        return None
    raw = policy.annotations.get("resident")
    if raw is None:
        return None
    if (
        not isinstance(raw, list)
        or len(raw) != decl.experts
        or not all(isinstance(v, int) and not isinstance(v, bool) and v in (0, 1) for v in raw)
    ):
        raise ProgramError(
            f"runtime {decl.name}: annotate resident must list {decl.experts} values 0 or 1 "
            f"(1: the expert is in device memory), found {raw!r}",
            policy.param_locs.get("resident") or policy.loc,
        )
    if all(raw):
        return None
    return [int(v) for v in raw]


def check_declarations(p: Program, policy: RuntimePolicy, decl: MoEDecl, target: Target) -> None:
    """The expert tensors ``L.e<e>`` (when declared) sit where ``annotate resident`` says, and
    the target has a host tier when anything is offloaded."""
    res = residency(policy, decl)
    if res is None:
        return
    where = policy.param_locs.get("resident") or policy.loc or p.filename
    if target.host is None:
        raise ProgramError(
            f"runtime {decl.name}: {res.count(0)} experts are offloaded, but target "
            f"{target.name} has no host tier",
            where,
        )
    for e, r in enumerate(res):
        t = p.tensor(f"{decl.name}.e{e}")
        if t is not None and (t.channel == HOST_CHANNEL) != (r == 0):
            said = "offloaded" if r == 0 else "resident"
            at = "host" if t.channel == HOST_CHANNEL else f"ch{t.channel}"
            raise ProgramError(
                f"runtime {decl.name}: annotate resident says expert {e} is {said}, but tensor "
                f"{t.name} is declared on {at}",
                where,
            )


def offload_loads(
    per_die: dict[int, list[Instr]], policy: RuntimePolicy | None, decl: MoEDecl
) -> dict[int, list[Instr]]:
    """``per_die`` with every load of an offloaded expert's micro-slice taken from the host."""
    res = residency(policy, decl)
    if res is None:
        return per_die
    out: dict[int, list[Instr]] = {}
    for die, instrs in per_die.items():
        new: list[Instr] = []
        for i in instrs:
            c = i.content if isinstance(i, Load) else None
            if (
                isinstance(i, Load)
                and isinstance(c, SliceRef)
                and c.layer == decl.name
                and c.expert is not None
                and not res[c.expert]
                and i.channel != HOST_CHANNEL
            ):
                i = dataclasses.replace(i, channel=HOST_CHANNEL)
            new.append(i)
        out[die] = new
    return out
