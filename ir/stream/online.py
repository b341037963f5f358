"""Online choice: the routing statistics a runtime rule reads, and the rule's evaluation.

A layer's runtime policy may hold 2-4 pre-compiled **alternatives** (``strategy online``; see
``docs/isa.md``, "Online choice") and a **decision list** over statistics of the batch's
routing: ``when skew >= 2.5 use 1``, ..., ``otherwise use 0``. The first line whose
conditions all hold names the alternative that runs. Every statistic is what an on-package
scheduler can compute in one pass over the batch's top-k expert ids (a counter per expert and
per die, a running maximum), so the rule could run in hardware:

======== ========================================================================================
stat     meaning (T tokens, k experts per token, E experts, D dies)
======== ========================================================================================
tokens   T, the tokens of the batch
active   experts with at least one routed token
max_load the most (token, expert) pairs routed to one expert
skew     ``max_load / (T k / E)``: the hottest expert's load over the mean (1 = uniform)
imbalance the most pairs routed to one die's experts over the mean per die (1 = balanced),
         expert e's home die being ``e mod D`` (the round-robin placement)
======== ========================================================================================

Nothing here imports onnx or the backends: the interpreter's expander and the compiler's rule
fitting both call :func:`routing_stats` and :func:`choose`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from moec.ir.errors import Location, ProgramError
from moec.ir.stream.program import Choice, Condition, RuntimePolicy

#: The statistics a rule may read, in the order the run report lists them.
STATS = ("tokens", "active", "max_load", "skew", "imbalance")
#: The comparisons a condition may use.
OPS = (">=", ">", "<=", "<")
#: How many alternatives a policy may hold.
MIN_ALTERNATIVES, MAX_ALTERNATIVES = 2, 4
#: The strategy name of a policy that chooses among alternatives.
ONLINE = "online"


@dataclass(frozen=True)
class RoutingStats:
    """The statistics of one layer's routing (module docstring)."""

    tokens: int
    active: int
    max_load: int
    skew: float
    imbalance: float

    def get(self, stat: str) -> float:
        return float(getattr(self, stat))

    def as_dict(self) -> dict[str, float]:
        return {s: getattr(self, s) for s in STATS}


def routing_stats(ids: np.ndarray, experts: int, num_dies: int) -> RoutingStats:
    """The statistics of ``ids`` ([T, k] expert ids) for a layer of ``experts`` on ``num_dies``."""
    tokens = int(ids.shape[0])
    flat = ids.reshape(-1)
    load = np.bincount(flat[flat >= 0], minlength=experts).astype(np.int64)  # -1: a dropped pair
    pairs = int(load.sum())
    max_load = int(load.max(initial=0))
    per_die = np.bincount(np.arange(experts) % num_dies, weights=load, minlength=num_dies)
    mean_expert = pairs / experts if experts else 0.0
    mean_die = pairs / num_dies if num_dies else 0.0
    return RoutingStats(
        tokens=tokens,
        active=int(np.count_nonzero(load)),
        max_load=max_load,
        skew=round(max_load / mean_expert, 6) if mean_expert > 0 else 0.0,
        imbalance=round(float(per_die.max(initial=0.0)) / mean_die, 6) if mean_die > 0 else 0.0,
    )


def holds(c: Condition, stats: RoutingStats) -> bool:
    """Whether condition ``c`` holds for ``stats``."""
    v = stats.get(c.stat)
    if c.op == ">=":
        return v >= c.value
    if c.op == ">":
        return v > c.value
    if c.op == "<=":
        return v <= c.value
    return v < c.value


def choose(choices: list[Choice] | tuple[Choice, ...], stats: RoutingStats) -> int:
    """The alternative the decision list ``choices`` picks for ``stats``: the first line whose
    conditions all hold (``otherwise`` has none, so it always does)."""
    for ch in choices:
        if all(holds(c, stats) for c in ch.conditions):
            return ch.use
    raise ValueError("a decision list must end with 'otherwise'")  # the verifier ensures it


def condition_text(c: Condition) -> str:
    """``skew >= 2.5``: a condition as the ISA writes it (the value as Python's shortest
    round-tripping float, like every float the printer writes)."""
    return f"{c.stat} {c.op} {float(c.value)!r}"


def choice_text(ch: Choice) -> str:
    """One line of a decision list as the ISA writes it."""
    if not ch.conditions:
        return f"otherwise use {ch.use}"
    return f"when {' and '.join(condition_text(c) for c in ch.conditions)} use {ch.use}"


def policies_of(r: RuntimePolicy) -> list[RuntimePolicy]:
    """The policies the expansion of ``r`` may run: each alternative of an online choice (with
    the shared precision, skip rule and annotations), else ``r`` itself."""
    if r.strategy != ONLINE:
        return [r]
    return [r.alternative(i) for i in range(len(r.alternatives))]


def check_online(r: RuntimePolicy, fallback: str) -> None:
    """An online choice is well formed (a located :class:`ProgramError` otherwise): strategy
    ``online`` exactly when there are alternatives, 2-4 of them, none itself online, no
    parameters of its own, a decision list over known statistics that ends with ``otherwise``
    and names only existing alternatives."""
    where: Location | str = r.loc if r.loc is not None else fallback
    what = f"runtime {r.layer}"
    if r.strategy != ONLINE:
        if r.alternatives or r.choices:
            line = r.alternatives[0].loc if r.alternatives else r.choices[0].loc
            raise ProgramError(
                f"{what}: alternatives and 'when'/'otherwise' lines need 'strategy {ONLINE}', "
                f"found strategy {r.strategy}",
                line or where,
            )
        return
    n = len(r.alternatives)
    if not MIN_ALTERNATIVES <= n <= MAX_ALTERNATIVES:
        raise ProgramError(
            f"{what}: strategy {ONLINE} needs {MIN_ALTERNATIVES} to {MAX_ALTERNATIVES} "
            f"alternatives, found {n}",
            where,
        )
    if r.params:
        key = sorted(r.params)[0]
        raise ProgramError(
            f"{what}: param {key} belongs in an alternative; strategy {ONLINE} takes none",
            r.param_locs.get(key) or where,
        )
    for alt in r.alternatives:
        if alt.strategy == ONLINE:
            raise ProgramError(
                f"{what}: an alternative cannot itself be {ONLINE}", alt.loc or where
            )
    if not r.choices or r.choices[-1].conditions:
        line = r.choices[-1].loc if r.choices else None
        raise ProgramError(
            f"{what}: the decision list must end with 'otherwise use N'", line or where
        )
    for ch in r.choices[:-1]:
        if not ch.conditions:
            raise ProgramError(
                f"{what}: 'otherwise' must be the last line of the decision list", ch.loc or where
            )
    for ch in r.choices:
        if not 0 <= ch.use < n:
            raise ProgramError(
                f"{what}: 'use {ch.use}' names no alternative, expected 0..{n - 1}",
                ch.loc or where,
            )
        for c in ch.conditions:
            if c.stat not in STATS:
                raise ProgramError(
                    f"{what}: unknown routing statistic {c.stat!r}, expected one of "
                    f"{', '.join(STATS)}",
                    c.loc or where,
                )
            if c.op not in OPS:
                raise ProgramError(
                    f"{what}: unknown comparison {c.op!r}, expected one of {', '.join(OPS)}",
                    c.loc or where,
                )
            if not math.isfinite(c.value):
                raise ProgramError(f"{what}: threshold {c.value!r} is not finite", c.loc or where)
