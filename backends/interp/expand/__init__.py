"""Runtime expansion: the on-package scheduler turns each ``moe L`` placeholder into instructions.

``EXPANDERS`` maps a :class:`~moec.ir.stream.program.RuntimePolicy`'s ``strategy`` to an
:data:`Expander`, a function ``expand(ctx) -> {die: [instructions]}`` whose lists replace that
die's ``moe L`` placeholder. Every module of this package registers its strategy with
:func:`register` and is imported on first use, so adding a strategy is adding a file
(``backends/interp/expand/<name>.py``) next to its lowering (``compiler/lower/<name>.py``).

:func:`expand_program` expands every layer for given routings and returns a fully static
:class:`Program`: the same declarations and static instructions, the placeholders replaced, the
runtime part removed (and a slice layout added for a layer that declares none), which
``print_program`` prints and ``verify_program`` accepts.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import pkgutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TypeVar

import numpy as np

from moec.backends.interp import relay_records
from moec.backends.interp.online import resolve_all
from moec.ir.cost import bytes_per_element
from moec.ir.errors import ProgramError, ScheduleError
from moec.ir.routing import LayerRouting
from moec.ir.stream.layouts import free_slots_at, largest_slice, micro_slice_bytes
from moec.ir.stream.layouts import layouts_for as _layouts_for
from moec.ir.stream.params import StrategyParams, strategy_params
from moec.ir.stream.program import (
    Accum,
    Act,
    Free,
    Gemm,
    Instr,
    MoE,
    MoEDecl,
    Program,
    RuntimePolicy,
    SliceLayout,
    SlotPool,
    TokenSet,
)
from moec.ir.target import Target

P = TypeVar("P", bound=StrategyParams)


@dataclass
class ExpandContext:
    """Everything an expander may read for one MoE layer of one iteration.

    The policy's parameters are read through :meth:`typed` (the strategy family's dataclass of
    :mod:`moec.ir.stream.params`, checked against this layer, layout and target).
    """

    program: Program
    layer: MoEDecl
    policy: RuntimePolicy
    target: Target
    routing: LayerRouting
    pools: dict[int, SlotPool]
    #: per die, the slots that are free at the layer's ``moe`` placeholder (ascending)
    free_slots: dict[int, list[int]]
    layout: SliceLayout
    shared_layout: SliceLayout | None
    #: :meth:`slice_bytes` per (expert, slice): a layer asks for each slice's bytes once per
    #: placement of its expert and again in its load-order estimate
    _slice_bytes: dict[tuple[int | None, int], int] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    #: :meth:`expert_slice_bytes` per expert
    _expert_bytes: dict[int | None, tuple[int, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    #: :meth:`expert_slice_bytes` per precision (None: the shared experts')
    _bytes_of: dict[str | None, tuple[int, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    #: per id of a token set: the set (kept alive, so that its id stays its own) and, per slot,
    #: the ``gemm``, ``act``, ``accum`` and ``free`` that :func:`stream_runs` issues for it
    _steps: dict[int, tuple[TokenSet, dict[int, tuple[Gemm, Act, Accum, Free]]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @property
    def where(self) -> str:
        return f"{self.program.filename}: runtime {self.layer.name}"

    def precision(self, expert: int | None) -> str:
        """The precision of an expert (its precision-table entry, else the layer's dtype)."""
        if expert is not None and self.policy.precision:
            return self.policy.precision[expert]
        return self.layer.dtype

    @cached_property
    def params(self) -> StrategyParams | None:
        """The policy's typed parameters (None for a strategy without a typed family)."""
        layouts = {(self.layer.name, False): self.layout}
        if self.shared_layout is not None:
            layouts[(self.layer.name, True)] = self.shared_layout
        return strategy_params(self.policy, self.layer, self.target, layouts, self.program.filename)

    def typed(self, family: type[P]) -> P:
        """The parameters as ``family`` (an expander of that family asks for its own)."""
        params = self.params
        if not isinstance(params, family):
            raise ProgramError(
                f"runtime {self.layer.name}: strategy {self.policy.strategy} does not take "
                f"{family.__name__}",
                self.policy.loc or self.where,
            )
        return params

    @cached_property
    def slice_widths(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Each micro-slice's width (FFN columns): the routed experts' slices', then the shared
        experts' (none without them)."""
        shared = self.shared_layout
        return (
            tuple(map(self.layout.width, range(self.layout.count))),
            tuple(map(shared.width, range(shared.count))) if shared is not None else (),
        )

    def slice_bytes(self, expert: int | None, j: int) -> int:
        """Bytes of micro-slice ``j`` (W_gate/W_up columns and W_down rows) at its precision
        (memoized: the context's layer, policy and layouts do not change)."""
        key = (expert, j)
        hit = self._slice_bytes.get(key)
        if hit is None:
            lay = self.layout if expert is not None else self.shared_layout
            hit = micro_slice_bytes(self.layer, self.policy, self.params, lay, expert, j)
            self._slice_bytes[key] = hit
        return hit

    def expert_slice_bytes(self, expert: int | None) -> tuple[int, ...]:
        """:meth:`slice_bytes` of each of ``expert``'s micro-slices (None: the shared experts'),
        in slice order (memoized)."""
        hit = self._expert_bytes.get(expert)
        if hit is None:
            # a routed expert's bytes depend on its precision alone (micro_slice_bytes): experts
            # of one precision share one tuple
            key = self.precision(expert) if expert is not None else None
            hit = self._bytes_of.get(key)
            if hit is None:
                lay = self.layout if expert is not None else self.shared_layout
                count = lay.count if lay is not None else 0
                hit = self._bytes_of[key] = tuple(self.slice_bytes(expert, j) for j in range(count))
            self._expert_bytes[expert] = hit
        return hit

    def activation_bytes(self, tokens: int) -> int:
        """Bytes of ``tokens`` activation rows (at the layer's dtype)."""
        return int(math.ceil(tokens * self.layer.hidden * bytes_per_element(self.layer.dtype)))

    def slots_of(self, die: int) -> list[int]:
        """The slots the expansion may use on ``die``; none is a ScheduleError."""
        slots = self.free_slots.get(die, [])
        if not slots:
            raise ScheduleError(
                f"does not fit SRAM: layer {self.layer.name} needs a buffer slot on die {die}, "
                "which has no free slot at its 'moe' placeholder",
                self.where,
            )
        return slots


# the streamed micro-slices' instructions (imported here: the expanders take them from here)
from moec.backends.interp.expand.streaming import (  # noqa: E402
    stream_runs,
    stream_slices_reference,
)

__all__ = [
    "EXPANDERS", "ExpandContext", "Expander", "expand_layer", "expand_program", "expanders",
    "layer_context", "layouts_for", "register", "splice", "stream_runs",
    "stream_slices_reference", "token_set", "token_sets", "tokens_of",
]  # fmt: skip

Expander = Callable[[ExpandContext], dict[int, list[Instr]]]
EXPANDERS: dict[str, Expander] = {}
_loaded = False


def register(strategy: str) -> Callable[[Expander], Expander]:
    """Decorator: make ``fn`` the expander of ``strategy``."""

    def deco(fn: Expander) -> Expander:
        EXPANDERS[strategy] = fn
        return fn

    return deco


def expanders(strategy: str | None = None) -> dict[str, Expander]:
    """The registry: ``strategy``'s module is imported on demand (``fsedp-paired`` ->
    ``fsedp_paired``); without one, or when that module does not register it, every module."""
    global _loaded
    if strategy is not None and strategy not in EXPANDERS:
        module = strategy.replace("-", "_")
        if module in {m.name for m in pkgutil.iter_modules(__path__)}:
            importlib.import_module(f"{__name__}.{module}")
    if (strategy is None or strategy not in EXPANDERS) and not _loaded:
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True
    return EXPANDERS


def tokens_of(ts: TokenSet) -> np.ndarray:
    """A token set as a sorted int64 array."""
    if not ts.ranges:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(a, b + 1, dtype=np.int64) for a, b in ts.ranges])


def token_set(tokens: np.ndarray) -> TokenSet:
    """A sorted, duplicate-free int array as a :class:`TokenSet` (vectorized run finding)."""
    if tokens.size == 0:
        return TokenSet(())
    breaks = np.nonzero(np.diff(tokens) != 1)[0]
    firsts = np.concatenate([tokens[:1], tokens[breaks + 1]]).tolist()
    lasts = np.concatenate([tokens[breaks], tokens[-1:]]).tolist()
    return TokenSet(tuple(zip(firsts, lasts, strict=True)))


def token_sets(arrays: Sequence[np.ndarray]) -> list[TokenSet]:
    """:func:`token_set` of each array, the runs of all of them found in one pass."""
    sizes = [a.size for a in arrays]
    total = sum(sizes)
    if not total:
        return [TokenSet(()) for _ in arrays]
    flat = np.concatenate(arrays)
    starts = np.cumsum([0, *sizes[:-1]])
    first = np.empty(total, dtype=bool)
    first[0] = True
    np.not_equal(np.diff(flat), 1, out=first[1:])
    first[starts[np.asarray(sizes) > 0]] = True
    last = np.empty(total, dtype=bool)
    last[:-1] = first[1:]
    last[-1] = True
    runs = list(zip(flat[first].tolist(), flat[last].tolist(), strict=True))
    bounds = np.cumsum(first)[np.cumsum(sizes) - 1].tolist()  # runs up to each array's end
    out = []
    lo = 0
    for n, hi in zip(sizes, bounds, strict=True):
        if not n:
            out.append(TokenSet(()))
            continue
        ts = TokenSet(tuple(runs[lo:hi]))
        ts.__dict__["size"] = n  # TokenSet.size, known here (a sorted, duplicate-free array)
        out.append(ts)
        lo = hi
    return out


def expand_layer(
    p: Program,
    target: Target,
    m: MoEDecl,
    routing: LayerRouting,
    layout: SliceLayout,
    shared_layout: SliceLayout | None,
) -> dict[int, list[Instr]]:
    """The instructions that replace each die's ``moe m.name`` for this routing."""
    ctx = layer_context(p, target, m, routing, layout, shared_layout)
    return expanders(ctx.policy.strategy)[ctx.policy.strategy](ctx)


def layer_context(
    p: Program,
    target: Target,
    m: MoEDecl,
    routing: LayerRouting,
    layout: SliceLayout,
    shared_layout: SliceLayout | None,
) -> ExpandContext:
    """The checked :class:`ExpandContext` of layer ``m`` for this routing: its policy names a
    known strategy, the routing has the layer's token count, its largest slice fits a slot."""
    policy = p.policy(m.name)
    if policy is None:
        raise ProgramError(f"MoE layer {m.name} has no runtime policy", m.loc or p.filename)
    fn = expanders(policy.strategy).get(policy.strategy)
    if fn is None:
        raise ProgramError(
            f"runtime {m.name}: unknown strategy {policy.strategy!r}, the interpreter knows "
            f"{', '.join(sorted(expanders()))}",
            policy.loc or p.filename,
        )
    if routing.tokens != m.tokens:
        raise ScheduleError(
            f"layer {m.name} is compiled for {m.tokens} tokens, the routing has {routing.tokens}",
            p.filename,
        )
    ctx = ExpandContext(
        program=p, layer=m, policy=policy, target=target, routing=routing,
        pools={s.die: s for s in p.slots}, free_slots=free_slots_at(p, m.name),
        layout=layout, shared_layout=shared_layout,
    )  # fmt: skip
    smallest = min((pool.nbytes for pool in ctx.pools.values()), default=0)
    layouts = {(m.name, False): layout}
    if shared_layout is not None:
        layouts[(m.name, True)] = shared_layout
    need, what = largest_slice(m, policy, ctx.params, layouts)
    if need > smallest:
        raise ScheduleError(
            f"does not fit SRAM: a micro-slice of layer {m.name} {what} needs {need} bytes, "
            f"the smallest buffer slot holds {smallest}",
            p.filename,
        )
    return ctx


def layouts_for(p: Program, target: Target | None = None) -> dict[tuple[str, bool], SliceLayout]:
    """Every layer's routed (and shared) layout (:func:`moec.ir.stream.layouts.layouts_for`)."""
    return _layouts_for(p)


def expand_program(p: Program, target: Target, routings: dict[str, LayerRouting]) -> Program:
    """The fully static program for ``routings`` (layer name -> routing); an online policy
    expands the alternative its rule picks (:func:`moec.backends.interp.online.resolve`)."""
    if p.is_static:
        return p
    p, _ = resolve_all(p, routings, target.num_dies)
    layouts = layouts_for(p, target)
    per_layer: dict[str, dict[int, list[Instr]]] = {}
    for m in p.layers:
        if p.policy(m.name) is None:
            continue
        r = routings.get(m.name)
        if r is None:
            raise ScheduleError(f"no routing for MoE layer {m.name}", p.filename)
        per_layer[m.name] = expand_layer(
            p, target, m, r, layouts[(m.name, False)], layouts.get((m.name, True))
        )
    return splice(p, per_layer, layouts)


def splice(
    p: Program,
    per_layer: dict[str, dict[int, list[Instr]]],
    layouts: dict[tuple[str, bool], SliceLayout],
) -> Program:
    """``p`` with each die's ``moe L`` replaced by ``per_layer[L][die]`` and no runtime part."""
    streams = []
    placed: set[tuple[str, int]] = set()
    for st in p.streams:
        out: list[Instr] = []
        pieces: list[Sequence[Instr]] = []  # the record streams kept whole (relay_records)
        for i in st.instrs:
            if isinstance(i, MoE):
                got = per_layer.get(i.layer, {}).get(st.die, ())
                if isinstance(got, relay_records.Chain | relay_records.RecordStream):
                    pieces += [out, got]
                    out = []
                else:
                    out.extend(got)
                placed.add((i.layer, st.die))
            else:
                out.append(i)
        instrs = relay_records.Chain([*pieces, out]) if pieces else out
        streams.append(dataclasses.replace(st, instrs=instrs))
    for layer, by_die in per_layer.items():
        for die, instrs in by_die.items():
            if instrs and (layer, die) not in placed:
                raise ScheduleError(
                    f"the expansion of {layer} puts {len(instrs)} instructions on die {die}, "
                    f"which has no 'moe {layer}' placeholder",
                    p.filename,
                )
    declared = {(lay.layer, lay.shared) for lay in p.layouts}
    extra = [lay for key, lay in layouts.items() if key not in declared]
    return dataclasses.replace(
        p, streams=streams, runtime=[], layouts=list(p.layouts) + extra, source=None
    )
