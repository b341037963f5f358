"""Per-layer choice for ``--strategy auto``: each MoE layer its own strategy, one static part.

The whole-program search (:func:`moec.auto.search`) times every confirmed candidate on the
whole model, and the interpreter reports each MoE layer's span (``moec bench``'s ``layers_s``).
Layers of one model can prefer different schedules (their routing skew or shapes differ), so
after the search :func:`choose_per_layer` picks, per layer, the measured candidate with the
shortest span there (ties: candidate order), and when the layers disagree builds one program
from them (:func:`merge_layers`) and times it like any candidate.

**One static part.** A program's runtime part is per layer (``runtime L``), but its static part
is shared: the target, the layers, the dense islands, the per-die streams (barriers and ``moe L``
placeholders) and one SRAM slot pool per die. :func:`merge_layers` takes layer ``L``'s tensors
(``L.<...>``), slice layouts and runtime policy from the program chosen for ``L`` and requires
everything else to be identical; the slot pool per die is the largest count and the largest
slot of the chosen programs (every layer's slices fit, and a layer may use more slots than it
was lowered with), checked by the verifier against the die's SRAM. A static part that does not
fit, or differs beyond the slots, is a :class:`LayerMergeError` naming the layer and what
differs; the search then keeps the best single strategy, and says why.

**The merged program is confirmed, not assumed.** A layer's span in the candidate's run need not
be its span in the merged program (the slot pool may be larger, SRAM at run time differs), so
the merged program is run by the interpreter and chosen only if it is faster than the best
single strategy; otherwise the best single strategy stays the winner.

Only the ``latency`` objective chooses per layer (its score is a sum of per-layer spans).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from moec.ir.errors import MoecError, ScheduleError
from moec.ir.stream import Program, SlotPool, TensorDecl, verify_program
from moec.ir.target import Target


@dataclass(frozen=True)
class LayerChoice:
    """One MoE layer's measured candidates, fastest first: ``(strategy, span in seconds)``."""

    layer: str
    ranked: list[tuple[str, float]]

    @property
    def strategy(self) -> str:
        return self.ranked[0][0]


def rank_layers(spans: Sequence[Sequence[float]]) -> list[list[int]]:
    """Per layer, the candidates (indices into ``spans``, one list of per-layer spans each)
    from the shortest span to the longest, ties by candidate order."""
    layers = len(spans[0]) if spans else 0
    return [sorted(range(len(spans)), key=lambda i: (spans[i][k], i)) for k in range(layers)]


class LayerMergeError(ScheduleError):
    """The chosen programs' static parts cannot be one (located at the layer that differs)."""


def _layer_of(name: str) -> str:
    return name.split(".", 1)[0]


def merge_layers(programs: Sequence[Program], target: Target) -> Program:
    """One program whose MoE layer ``k`` is ``programs[k]``'s (tensors, slice layouts, runtime
    policy), with one static part (module doc). Every program must lower the same module for
    the same target; a difference beyond the per-layer parts and the slot pools is a
    :class:`LayerMergeError`."""
    if not programs:
        raise LayerMergeError("per-layer choice: no program to merge")
    base = programs[0]
    if len(programs) != len(base.layers):
        raise LayerMergeError(
            f"per-layer choice: {len(programs)} programs for {len(base.layers)} MoE layers",
            base.name,
        )
    names = [m.name for m in base.layers]
    for k, p in enumerate(programs):
        where = f"{base.name}: {names[k]}"
        for what, mine, theirs in (
            ("target", p.target, base.target),
            ("MoE layers", p.layers, base.layers),
            ("dense islands", p.islands, base.islands),
            ("static streams", p.streams, base.streams),
            ("tensors outside the MoE layers", _shared_tensors(p, names),
             _shared_tensors(base, names)),
        ):  # fmt: skip
            if mine != theirs:
                raise LayerMergeError(
                    f"per-layer choice: the program chosen for {names[k]} "
                    f"({_strategy(p, names[k])}) has other {what} than the one chosen for "
                    f"{names[0]} ({_strategy(base, names[0])})",
                    where,
                )
    tensors = _shared_tensors(base, names) + [
        t for k, p in enumerate(programs) for t in p.tensors if _layer_of(t.name) == names[k]
    ]
    layouts = [lay for k, p in enumerate(programs) for lay in p.layouts if lay.layer == names[k]]
    runtime = []
    for k, p in enumerate(programs):
        policy = p.policy(names[k])
        if policy is None:
            raise LayerMergeError(f"per-layer choice: no runtime policy for {names[k]}", base.name)
        runtime.append(policy)
    merged = dataclasses.replace(
        base, tensors=tensors, layouts=layouts, slots=_slot_pools(programs), runtime=runtime
    )
    try:
        verify_program(merged, target)
    except MoecError as e:  # e.g. the larger slot pool does not fit a die's SRAM
        raise LayerMergeError(f"per-layer choice: the merged program: {e.message}", e.where) from e
    return merged


def _shared_tensors(p: Program, layers: Sequence[str]) -> list[TensorDecl]:
    return [t for t in p.tensors if _layer_of(t.name) not in layers]


def _strategy(p: Program, layer: str) -> str:
    policy = p.policy(layer)
    return policy.strategy if policy is not None else "?"


def _slot_pools(programs: Sequence[Program]) -> list[SlotPool]:
    """Per die, the most slots and the largest slot of ``programs`` (in the first's die order)."""
    pools = []
    for pool in programs[0].slots:
        others = [q for p in programs for q in p.slots if q.die == pool.die]
        pools.append(
            SlotPool(pool.die, max(q.count for q in others), max(q.nbytes for q in others))
        )
    return pools
