"""``skip caee threshold t``: cost-aware expert execution (CAEE, arXiv 2606.29982) at runtime.

Per layer and iteration, before the expansion:

1. **predict** each device's time from the cost model (:mod:`moec.ir.cost`, the same target the
   interpreter times): for every expert with tokens on a device, bringing its weights in (read
   from the device's nearest DRAM/HBM channel when resident, over the host link when offloaded:
   the policy's ``annotate resident = [...]``, 1 per resident expert, written by the lowering
   for ``resident=F`` or ``caee-prune{resident=F}`` and read through
   :func:`moec.backends.interp.offload.residency`, the same reading the interpreter uses to move
   those loads to the host link; without it every expert is resident), at its precision (the policy's precision table); the compute of its (token, expert)
   pairs (on the calibrated model, :func:`moec.ir.cost.slice_compute_time` of the whole expert:
   a fixed part per active expert, the array's per-fold fill and drain and the issue costs, and
   a marginal part per pair); and the activations of remote tokens (x out, y back: over the
   route's slowest link on the ideal machine, as two transfers with setup, framing and latency
   on the calibrated one).
   Weight streaming overlaps compute, transfers do not:
   ``time_d = max(sum load, sum compute) + sum transfers``.
   An expert's device is the policy's ``placement`` (EP, Hydra); strategies without one (TP,
   FSE-DP, EPLB replicas) are predicted as if experts were placed round-robin, ``e % D``.
2. **prune on the straggler only**: the device with the largest predicted time (ties: lowest id).
   Candidates are (token, expert) pairs on it that are not the token's first choice (column 0),
   as single pairs (the lowest gate of each expert) or all such pairs of one expert at once (which
   also saves its weight load when none of its pairs remain). Each step takes the candidate with
   the lowest benefit / cost, benefit = the gate weight dropped, cost = the predicted time saved;
   it stops when the device no longer sets the makespan (its time is at most the next device's)
   or when the next drop would take the device's kept gate mass below ``threshold`` x its
   original gate mass.
3. **compensate**: each token's dropped weight goes onto its experts that still run (top-1
   always does), never onto an expert that would need a new load: every receiver is loaded
   this iteration anyway (it keeps at least this token), so an offloaded expert only ever
   receives weight when its host load happens regardless, and one whose pairs were all dropped
   receives none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moec.backends.interp.offload import residency
from moec.backends.interp.rules import register
from moec.ir.cost import (
    bytes_per_element,
    compute_time,
    dram_occupancy,
    host_occupancy,
    route_data_time,
    slice_compute_time,
    transfer_time,
)
from moec.ir.routing import LayerRouting
from moec.ir.stream.params import EPParams, strategy_params
from moec.ir.stream.program import MoEDecl, RuntimePolicy
from moec.ir.target import Target


@dataclass(frozen=True)
class ExpertCosts:
    """Predicted costs of one layer's experts on a target."""

    device: np.ndarray  # [E] int: where each expert runs
    load_s: np.ndarray  # [E]: seconds to bring its weights to its device
    pair_s: np.ndarray  # [E]: compute seconds of one (token, expert) pair
    move_s: np.ndarray  # [D, D]: seconds to move one token's x there and y back (home, device)
    #: [E]: compute seconds an active expert costs whatever its tokens (calibrated model: the
    #: array's per-fold weight fill and drain, issue; 0 on an ideal target)
    fixed_s: np.ndarray | None = None


def expert_costs(policy: RuntimePolicy, decl: MoEDecl, target: Target) -> ExpertCosts:
    """The cost model's numbers for every expert of ``decl`` under ``policy``: each expert runs
    on its EP/Hydra ``placement`` die, or, for strategies without one, on die ``e % D``."""
    E, D = decl.experts, target.num_dies
    params = strategy_params(policy, decl, target)
    if isinstance(params, EPParams):
        device = np.asarray(params.placement, dtype=np.int64)
    else:
        device = np.arange(E, dtype=np.int64) % D
    resident = residency(policy, decl)
    mats = 3 if decl.gated else 2
    params = mats * decl.hidden * decl.ffn
    load = np.zeros(E)
    pair = np.zeros(E)
    fixed = np.zeros(E)
    for e in range(E):
        prec = policy.precision[e] if policy.precision else decl.dtype
        nbytes = params * bytes_per_element(prec)
        d = int(device[e])
        offloaded = resident is not None and not resident[e]
        # Occupancy, as the interpreter times it: access latency overlaps the next load.
        if offloaded and target.host is not None:
            load[e] = host_occupancy(target, nbytes, d)
        else:
            load[e] = dram_occupancy(target, target.nearest_channel(d), nbytes)
        if target.ideal:
            pair[e] = compute_time(target, d, 2.0 * params, prec)
        else:
            # the array's fill and drain per fold and the issue costs come once per active
            # expert, each further token adds its marginal cycles
            one = slice_compute_time(target, d, 1, decl.hidden, decl.ffn, decl.gated, prec)
            pair[e] = (
                slice_compute_time(target, d, 2, decl.hidden, decl.ffn, decl.gated, prec) - one
            )
            fixed[e] = one - pair[e]
    act = 2 * decl.hidden * bytes_per_element(decl.dtype)
    move = np.zeros((D, D))
    for h in range(D):
        for d in range(D):
            if h != d and target.ideal:  # x there and y back at the route's slowest link
                move[h, d] = route_data_time(target, h, d, act)
            elif h != d:  # x there and y back, each a transfer of its own
                move[h, d] = transfer_time(target, h, d, act / 2) + transfer_time(
                    target, d, h, act / 2
                )
    return ExpertCosts(device, load, pair, move, fixed)


def device_times(costs: ExpertCosts, ids: np.ndarray, home: np.ndarray, D: int) -> np.ndarray:
    """Predicted time of every device for the routing ``ids`` (-1 = dropped)."""
    T, k = ids.shape
    valid = ids >= 0
    e = ids[valid]
    t = np.repeat(np.arange(T), k).reshape(T, k)[valid]
    dev = costs.device[e]
    active = np.unique(e)
    load = np.bincount(costs.device[active], weights=costs.load_s[active], minlength=D)
    work = np.bincount(dev, weights=costs.pair_s[e], minlength=D)
    if costs.fixed_s is not None and np.any(costs.fixed_s):
        work = work + np.bincount(costs.device[active], weights=costs.fixed_s[active], minlength=D)
    move = np.bincount(dev, weights=costs.move_s[home[t], dev], minlength=D)
    return np.maximum(load, work) + move


def prune_mask(
    costs: ExpertCosts, ids: np.ndarray, gates: np.ndarray, home: np.ndarray, D: int,
    threshold: float,
) -> np.ndarray:  # fmt: skip
    """The (token, expert) pairs CAEE drops on the straggler device (see the module doc)."""
    ids = np.asarray(ids, dtype=np.int64)
    home = np.asarray(home, dtype=np.int64)
    drop = np.zeros(ids.shape, dtype=bool)
    times = device_times(costs, ids, home, D)
    if D < 2 or not np.any(times > 0):
        return drop
    straggler = int(np.argmax(times))
    others = float(np.delete(times, straggler).max())
    valid = ids >= 0
    on = valid & (costs.device[np.where(valid, ids, 0)] == straggler)
    g = np.asarray(gates, np.float64)
    budget = (1.0 - threshold) * float(g[on].sum())
    # state of the straggler: kept pairs per expert, load / compute / transfer sums
    rows, cols = np.nonzero(on)
    experts = sorted(set(ids[rows, cols].tolist()))
    kept = {e: int(np.count_nonzero(ids[rows, cols] == e)) for e in experts}
    droppable: dict[int, list[tuple[float, int, int]]] = {e: [] for e in experts}
    for t, j in zip(rows.tolist(), cols.tolist(), strict=True):
        if j > 0:
            droppable[int(ids[t, j])].append((float(g[t, j]), t, j))
    for e in experts:
        droppable[e].sort()
    load = float(sum(costs.load_s[e] for e in experts))
    fixed = costs.fixed_s if costs.fixed_s is not None else np.zeros(len(costs.load_s))
    work = float(sum(costs.pair_s[e] * kept[e] + fixed[e] for e in experts))
    move = float(sum(costs.move_s[home[t], straggler] for t in rows.tolist()))
    now = max(load, work) + move
    dropped = 0.0
    while now > others * (1 + 1e-12):
        best: tuple[float, int, int] | None = None  # (benefit / saved, expert, pairs)
        for e in experts:
            cand = droppable[e]
            if not cand:
                continue
            for m in sorted({1, len(cand)}):
                benefit = sum(c[0] for c in cand[:m])
                if dropped + benefit > budget * (1 + 1e-12):
                    continue
                gone = kept[e] == m
                saved_load = costs.load_s[e] if gone else 0.0
                saved_work = m * costs.pair_s[e] + (fixed[e] if gone else 0.0)
                saved_move = sum(costs.move_s[home[c[1]], straggler] for c in cand[:m])
                after = max(load - saved_load, work - saved_work) + move - saved_move
                saved = now - after
                if saved <= 0:
                    continue
                score = benefit / saved
                if best is None or score < best[0]:
                    best = (score, e, m)
        if best is None:
            break
        _, e, m = best
        for benefit, t, j in droppable[e][:m]:
            drop[t, j] = True
            dropped += benefit
            move -= costs.move_s[home[t], straggler]
        if kept[e] == m:
            load -= costs.load_s[e]
            work -= fixed[e]
        work -= m * costs.pair_s[e]
        kept[e] -= m
        droppable[e] = droppable[e][m:]
        now = max(load, work) + move
    return drop


@register("caee")
def rule(policy: RuntimePolicy, decl: MoEDecl, routing: LayerRouting, target: Target) -> np.ndarray:
    assert policy.skip is not None
    costs = expert_costs(policy, decl, target)
    return prune_mask(
        costs, routing.ids, routing.gates, routing.home_die, target.num_dies,
        float(policy.skip.threshold),
    )  # fmt: skip
