"""Runtime rules: what the on-package scheduler does to a layer's routing before expansion.

A stream program's runtime policy may carry one skip rule (``skip caee threshold 0.8``,
``skip second threshold 0.35``); :func:`apply_rules` rewrites the layer's routing by it, right
before the runtime part is expanded, so the expansion (timing) and the numerics both see the
rewritten routing. A dropped (token, expert) pair gets id ``-1`` and gate 0 (expanders and the
numerics skip such pairs); its gate weight is moved onto experts that already run for that token
(:func:`compensate`), so every token's gate mass is unchanged.

Rules register by name (``RULES``): ``caee`` (:mod:`.caee`, straggler-aware pruning) and ``second``
(:mod:`.skip_second`, threshold skipping of lower-ranked experts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from moec.ir.errors import ProgramError
from moec.ir.routing import LayerRouting
from moec.ir.stream.program import MoEDecl, Program, RuntimePolicy
from moec.ir.target import Target

Rule = Callable[[RuntimePolicy, MoEDecl, LayerRouting, Target], np.ndarray]
"""A rule returns the boolean drop mask ``[T, k]`` of the routing's pairs."""

RULES: dict[str, Rule] = {}


def register(name: str) -> Callable[[Rule], Rule]:
    def deco(fn: Rule) -> Rule:
        RULES[name] = fn
        return fn

    return deco


def compensate(
    ids: np.ndarray, gates: np.ndarray, drop: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Drop the pairs in ``drop`` and give their gate weight to the token's kept experts.

    The dropped weight of a token is spread over its kept experts in proportion to their gates
    (equally when those are all zero), so each token's gate sum is preserved. A token must keep
    at least one expert. Returns new ``(ids, gates)`` with dropped ids ``-1`` and gates 0.
    """
    ids = np.array(ids, dtype=np.int64, copy=True)
    g = np.asarray(gates, dtype=np.float64)
    drop = np.asarray(drop, dtype=bool) & (ids >= 0)
    keep = (ids >= 0) & ~drop
    if np.any(drop.any(axis=1) & ~keep.any(axis=1)):
        raise ValueError("a rule dropped every expert of a token")
    moved = np.where(drop, g, 0.0).sum(axis=1)
    kept = np.where(keep, g, 0.0)
    total = kept.sum(axis=1)
    share = np.where(
        total[:, None] > 0, kept / np.where(total > 0, total, 1.0)[:, None],
        keep / np.maximum(keep.sum(axis=1), 1)[:, None],
    )  # fmt: skip
    new = np.where(keep, kept + share * moved[:, None], 0.0)
    ids[drop] = -1
    return ids, new.astype(np.float32)


def _load() -> None:
    from moec.backends.interp.rules import caee, skip_second  # noqa: F401 - registers the rules


def rewrite(
    policy: RuntimePolicy | None, decl: MoEDecl, routing: LayerRouting, target: Target
) -> LayerRouting:
    """The routing after ``policy``'s skip rule (the same object when there is none)."""
    if policy is None or policy.skip is None:
        return routing
    _load()
    fn = RULES.get(policy.skip.rule)
    if fn is None:
        raise ProgramError(
            f"runtime {decl.name}: unknown skip rule {policy.skip.rule!r}, the interpreter "
            f"knows {', '.join(sorted(RULES))}",
            policy.skip.loc or policy.loc,
        )
    drop = fn(policy, decl, routing, target)
    if not drop.any():
        return routing
    ids, gates = compensate(routing.ids, routing.gates, drop)
    return dataclasses.replace(routing, ids=ids, gates=gates)


def apply_rules(
    program: Program, target: Target, layer: str, routing: LayerRouting
) -> LayerRouting:
    """:func:`rewrite` for layer ``layer`` of ``program`` (a new routing; the input is unchanged)."""
    decl = program.layer(layer)
    if decl is None:
        return routing
    return rewrite(program.policy(layer), decl, routing, target)
