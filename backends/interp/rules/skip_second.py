"""``skip second threshold beta``: skip a token's lower-ranked experts far below its first.

For each token, every expert after the first (column 0 of the routing, the router's first
choice) whose gate weight is below ``beta x`` the first's is dropped; the dropped weight goes to
the token's kept experts in proportion to their gates (:func:`moec.backends.interp.rules.compensate`),
so the token's gate sum is unchanged: for a router that renormalizes its top-k weights this is
exactly renormalizing over the kept experts, as a router with a smaller k would. ``beta`` comes
from calibration (``skip-second{beta=auto}``: per layer, the median ratio second/first gate).
"""

from __future__ import annotations

import numpy as np

from moec.backends.interp.rules import register
from moec.ir.routing import LayerRouting
from moec.ir.stream.program import MoEDecl, RuntimePolicy
from moec.ir.target import Target


def skip_mask(ids: np.ndarray, gates: np.ndarray, beta: float) -> np.ndarray:
    """Pairs at rank >= 1 whose gate is below ``beta`` x the rank-0 gate."""
    g = np.asarray(gates, np.float64)
    drop = (g < beta * g[:, :1]) & (np.asarray(ids) >= 0)
    drop[:, 0] = False
    return drop


@register("second")
def rule(policy: RuntimePolicy, decl: MoEDecl, routing: LayerRouting, target: Target) -> np.ndarray:
    assert policy.skip is not None
    return skip_mask(routing.ids, routing.gates, float(policy.skip.threshold))
