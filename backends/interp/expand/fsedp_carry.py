"""FSE-DP token buffering across iterations: deferred pairs join the next iteration's streams.

In one iteration (:mod:`.fsedp`) the deferred (token, expert) pairs run in a catch-up step so
that the iteration still yields every output. In a serving run the paper's intent is possible:
iteration i defers its coldest experts' pairs (whole experts, at most ``slack x tokens`` pairs,
:func:`~.fsedp.deferred_experts`, chosen among iteration i's own pairs only) and iteration i+1
computes them **in its own trajectories**: a deferred pair of expert e rides on the micro-slices
of e that iteration i+1 streams anyway (one DRAM load serves both iterations' tokens), or, when
i+1 does not need e, on a trip of e made for the deferred pairs alone. A pair is deferred once
(carried pairs are never deferred again), so it waits exactly one iteration; the last iteration
of a run drains its deferred pairs in a catch-up step as :mod:`.fsedp` does.

The carried pairs are *virtual tokens* of the host layer: token ``T + j`` (``T`` the layer's
tokens) is carried pair j, homed on its token's die, routed to its one expert; the host layer of
the serving program is declared with ``T + len(carried)`` tokens, so its activations (the
deferred tokens' inputs and outputs, held until they ran) are counted in SRAM.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from moec.backends.interp.expand import ExpandContext, free_slots_at
from moec.backends.interp.expand.fsedp import (
    _problem,
    _units,
    deferred_experts,
    natural_order,
    paired_order,
)
from moec.backends.interp.expand.fsedp_deferred import deferred_event
from moec.backends.interp.expand.fsedp_engine import Engine
from moec.backends.interp.expand.fsedp_sched import schedule
from moec.backends.interp.offload import offload_loads
from moec.ir.errors import ProgramError
from moec.ir.routing import LayerRouting
from moec.ir.stream.params import FSEDPParams, strategy_params
from moec.ir.stream.program import Instr, MoEDecl, Program, Signal, SliceLayout, Wait
from moec.ir.target import Target


@dataclass(frozen=True)
class Carried:
    """A deferred pair: its token (in its origin iteration), the token's home die, the expert
    and its gate weight."""

    token: int
    die: int
    expert: int
    gate: float


@dataclass
class CarryExpansion:
    """One layer's expansion in a serving run: per die its instructions, the pairs it defers
    to the next iteration, and the carried pairs it computed as tokens ``T, T+1, ...``."""

    per_die: dict[int, list[Instr]]
    deferred: list[Carried]
    computed: list[Carried]


def buffering_slack(p: Program, layer: str) -> float:
    """The layer's FSE-DP token-buffering slack (0: not buffered)."""
    policy, decl = p.policy(layer), p.layer(layer)
    if policy is None or decl is None:
        return 0.0
    params = strategy_params(policy, decl, filename=p.filename)
    return float(params.slack) if isinstance(params, FSEDPParams) else 0.0


def expand_with_carry(
    p: Program,
    target: Target,
    m: MoEDecl,
    routing: LayerRouting,
    layouts: dict[tuple[str, bool], SliceLayout],
    carried: list[Carried],
    last: bool,
) -> CarryExpansion:
    """The layer's instructions for ``routing`` plus the ``carried`` pairs (see module doc);
    ``last``: drain this iteration's deferred pairs in a catch-up step instead of deferring."""
    base = routing
    policy = p.policy(m.name)
    if policy is None:
        raise ProgramError(f"MoE layer {m.name} has no runtime policy", m.loc or p.filename)
    ctx = ExpandContext(
        program=p, layer=m, policy=policy, target=target, routing=base,
        pools={s.die: s for s in p.slots}, free_slots=free_slots_at(p, m.name),
        layout=layouts[(m.name, False)], shared_layout=layouts.get((m.name, True)),
    )  # fmt: skip
    params = ctx.typed(FSEDPParams)
    t = ctx.target
    E, C, T = m.experts, len(t.channels), base.tokens
    order = params.trajectory if params.trajectory is not None else tuple(range(t.num_dies))
    channels = list(params.channels) if params.channels is not None else [e % C for e in range(E)]
    ids = np.asarray(base.ids)
    load = np.bincount(ids[ids >= 0], minlength=E).astype(np.int64).tolist()
    late = deferred_experts(load, T, params.slack) if params.slack > 0 else []
    deferred = [
        Carried(tok, int(base.home_die[tok]), int(e), float(base.gates[tok, j]))
        for tok in range(T) for j, e in enumerate(ids[tok].tolist()) if e in late
    ]  # fmt: skip
    # own pairs of deferred experts masked out (-1: not computed here), carried pairs appended
    k = max(m.top_k, 1)
    own = np.where(np.isin(ids, late), -1, ids)
    extra = np.full((len(carried), k), -1, dtype=np.int64)
    extra[:, 0] = [c.expert for c in carried]
    aug = dataclasses.replace(
        base,
        ids=np.concatenate([own, extra]),
        gates=np.concatenate([base.gates, np.zeros((len(carried), k), np.float32)]),
        home_die=np.concatenate([base.home_die, [c.die for c in carried]]).astype(np.int64),
    )
    actx = dataclasses.replace(ctx, routing=aug)
    work = np.bincount(aug.ids[aug.ids >= 0], minlength=E).astype(np.int64).tolist()
    experts = paired_order(work) if params.order == "paired" else natural_order(work)
    home = np.asarray(aug.home_die, dtype=np.int64)
    engine = Engine(p, t)
    units = _units(actx, engine, experts, home, channels, True)
    main = schedule(_problem(actx, engine, units, order, params.closed, params.rules,
                             params.r5, params.order))  # fmt: skip
    out = {d: list(main.streams.get(d, [])) for d in range(t.num_dies)}
    if last and late:  # drain: the catch-up step of a single iteration
        lo = paired_order([load[e] if e in late else 0 for e in range(E)])
        if params.order != "paired":
            lo = sorted(lo)
        engine = Engine(p, t)  # after the barrier: an idle package again
        units = _units(ctx, engine, lo, np.asarray(base.home_die), channels, False)
        catchup = schedule(_problem(ctx, engine, units, order, params.closed, params.rules,
                                    params.r5, params.order))  # fmt: skip
        ev = deferred_event(m.name)
        for d in out:
            out[d] += [Signal(ev), Wait(ev, len(out))]
            out[d].extend(catchup.streams.get(d, []))
        deferred_out: list[Carried] = []
    else:
        deferred_out = deferred
    return CarryExpansion(offload_loads(out, p.policy(m.name), m), deferred_out, list(carried))
