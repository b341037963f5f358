"""The stream program (``.msp``): moec's chiplet ISA as plain data.

A :class:`Program` has three parts:

* **declarations**: the target it was compiled for (:class:`TargetRef`, a preset or TOML path plus
  flat overrides), an optional companion weights file, DRAM tensors, MoE layers, micro-slice
  layouts, SRAM buffer slot pools per die and dense islands;
* **a static part**: one instruction stream per die (:class:`DieStream`), known at compile time;
* **a runtime part**: one :class:`RuntimePolicy` per MoE layer, which the on-package scheduler (the
  interpreter) expands once routing is known, at the ``moe L`` placeholder of each die's stream.

A program with no runtime part and no ``moe`` placeholders is fully static: the interpreter prints
the expansion of a runtime part as such a program.

Conventions: byte sizes are ints; token sets are :class:`TokenSet`; slot ``k`` of die ``d`` is
the k-th slot of that die's :class:`SlotPool`; micro-slice ``j`` of expert ``e`` of layer ``L``
(:class:`SliceRef`) is columns ``j`` of W_gate/W_up and rows ``j`` of W_down, as the layer's
:class:`SliceLayout` says. Instructions are frozen dataclasses with an ``opcode`` class attribute
(the interpreter dispatches on it); every parsed item keeps its source :class:`Location` in
``loc`` (not part of equality). See ``docs/isa.md`` for the text form.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from moec.ir.errors import Location
from moec.ir.stream.instructions import (
    Accum,
    Act,
    Dense,
    Free,
    Gemm,
    Instr,
    Load,
    MoE,
    Recv,
    Send,
    Signal,
    Wait,
)
from moec.ir.stream.opcodes import OPCODES
from moec.ir.stream.values import (
    HOST_CHANNEL,
    Block,
    Content,
    SliceRef,
    TensorRef,
    TokenSet,
    Value,
)

__all__ = [
    "FORMAT_VERSION", "HOST_CHANNEL", "OPCODES", "Accum", "Act", "Block", "Choice", "Condition",
    "Content", "Dense", "DieStream", "Free", "Gemm", "Instr", "IslandDecl", "Load", "MoE",
    "MoEDecl", "Program",
    "Recv", "RuntimePolicy", "Send", "Signal", "SkipRule", "SliceLayout", "SliceRef", "SlotPool",
    "TargetRef", "TensorDecl", "TensorRef", "TokenSet", "Value", "Wait", "WeightsRef",
]  # fmt: skip

#: Version of the text format this module reads and writes (the ``moec 1`` line).
FORMAT_VERSION = 1


# --- declarations --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TargetRef:
    """The target a program was compiled for: a preset name or TOML path, plus flat overrides."""

    spec: str
    overrides: tuple[tuple[str, int | float | str], ...] = ()
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class WeightsRef:
    """A companion file holding the weights (for numerics), with its SHA-256 hex digest."""

    path: str
    sha256: str
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class TensorDecl:
    """A tensor in memory: precision, shape, the channel holding it (a DRAM channel id, or
    :data:`HOST_CHANNEL` for host memory), and its byte size."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    channel: int
    nbytes: int
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class MoEDecl:
    """An MoE layer as the stream program sees it: sizes, tokens per iteration, its values.

    ``input``/``output`` name the graph values holding the layer's input and output activations;
    ``shared_ffn`` is 0 without shared experts. ``dtype`` is the default weight precision.
    """

    name: str
    experts: int
    top_k: int
    hidden: int
    ffn: int
    tokens: int
    input: str
    output: str
    shared_ffn: int = 0
    gated: bool = True
    dtype: str = "fp16"
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class SliceLayout:
    """How a layer's experts (or, with ``shared``, its shared experts) are cut into micro-slices.

    ``columns[j] = (start, stop)``: slice j covers FFN columns ``start..stop-1`` of W_gate/W_up
    and the same rows of W_down. Slices are contiguous, ordered and cover ``0..ffn-1``.
    """

    layer: str
    columns: tuple[tuple[int, int], ...]
    shared: bool = False
    loc: Location | None = field(default=None, compare=False)

    @property
    def count(self) -> int:
        return len(self.columns)

    def width(self, j: int) -> int:
        a, b = self.columns[j]
        return b - a

    @staticmethod
    def even(layer: str, ffn: int, count: int, shared: bool = False) -> SliceLayout:
        """``count`` slices of ``ffn`` columns, the first ``ffn % count`` one column wider."""
        base, extra = divmod(ffn, count)
        cols, start = [], 0
        for j in range(count):
            stop = start + base + (1 if j < extra else 0)
            cols.append((start, stop))
            start = stop
        return SliceLayout(layer, tuple(cols), shared)


@dataclass(frozen=True)
class SlotPool:
    """The SRAM buffer slots of one die: ``count`` slots of ``nbytes`` each."""

    die: int
    count: int
    nbytes: int
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class IslandDecl:
    """A dense island (the non-MoE ops between layers): total FLOPs and bytes it moves."""

    name: str
    flops: int
    nbytes: int
    loc: Location | None = field(default=None, compare=False)


@dataclass
class DieStream:
    """The static instruction stream of one die, in program order."""

    die: int
    instrs: list[Instr] = field(default_factory=list)
    loc: Location | None = field(default=None, compare=False)


# --- runtime part --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SkipRule:
    """Which (token, expert) pairs the scheduler may drop: ``rule`` (e.g. ``caee``, ``threshold``)
    with its ``threshold``."""

    rule: str
    threshold: float
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Condition:
    """``STAT OP VALUE`` in an online choice's decision list, e.g. ``skew >= 2.5``; the
    statistics are :data:`moec.ir.stream.online.STATS`."""

    stat: str
    op: str
    value: float
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Choice:
    """One line of a decision list: ``when C and C ... use N``, or ``otherwise use N`` (no
    conditions); the first line whose conditions all hold names the alternative that runs."""

    conditions: tuple[Condition, ...]
    use: int
    loc: Location | None = field(default=None, compare=False)


@dataclass
class RuntimePolicy:
    """What the on-package scheduler does for one MoE layer once routing is known.

    ``params`` are the strategy's options as written (``param KEY = VALUE``: placement,
    trajectory, load order, slack, ...): new strategies add parameters, not grammar. Their typed
    view, one dataclass per strategy family, is :func:`moec.ir.stream.params.strategy_params`,
    which checks every value's type, length and range (a located error); the verifier and the
    interpreter's expanders read parameters only through it. ``precision`` has one entry per
    expert (empty: the layer's dtype everywhere); ``annotations`` map a name (e.g.
    ``importance``) to one value per expert.

    **Online choice** (strategy ``online``): ``alternatives`` are 2-4 pre-compiled policies
    (a strategy and its parameters each) sharing this program's static part, and ``choices``
    the decision list over routing statistics that picks one per batch
    (:mod:`moec.ir.stream.online`); precision, skip rule and annotations stay here, shared by
    every alternative (:meth:`alternative` merges them in).
    """

    layer: str
    strategy: str
    params: dict[str, Value] = field(default_factory=dict)
    precision: tuple[str, ...] = ()
    skip: SkipRule | None = None
    annotations: dict[str, list[Value]] = field(default_factory=dict)
    loc: Location | None = field(default=None, compare=False)
    #: Where each ``param``/``annotate`` key was written (parsed programs only), so a strategy
    #: can report a bad parameter at its line: ``ProgramError(msg, policy.param_locs.get(k))``.
    param_locs: dict[str, Location] = field(default_factory=dict, compare=False, repr=False)
    #: Where the ``precision`` table was written (parsed programs only).
    precision_loc: Location | None = field(default=None, compare=False, repr=False)
    #: Online choice: the alternatives, in index order, and the decision list.
    alternatives: list[RuntimePolicy] = field(default_factory=list)
    choices: list[Choice] = field(default_factory=list)

    def alternative(self, i: int) -> RuntimePolicy:
        """Alternative ``i`` as a policy of its own: its strategy and parameters with this
        policy's layer, precision, skip rule and annotations."""
        alt = self.alternatives[i]
        return replace(
            alt, layer=self.layer, precision=self.precision, skip=self.skip,
            annotations=self.annotations, precision_loc=self.precision_loc,
            alternatives=[], choices=[],
        )  # fmt: skip


# --- the program ---------------------------------------------------------------------------------
@dataclass
class Program:
    """A whole stream program. Lists keep declaration order; the printer sorts nothing."""

    name: str
    target: TargetRef | None = None
    weights: WeightsRef | None = None
    tensors: list[TensorDecl] = field(default_factory=list)
    layers: list[MoEDecl] = field(default_factory=list)
    layouts: list[SliceLayout] = field(default_factory=list)
    slots: list[SlotPool] = field(default_factory=list)
    islands: list[IslandDecl] = field(default_factory=list)
    streams: list[DieStream] = field(default_factory=list)
    runtime: list[RuntimePolicy] = field(default_factory=list)
    version: int = FORMAT_VERSION
    filename: str = "<string>"
    #: The text it was parsed from, if any (verifier errors quote its lines).
    source: str | None = field(default=None, repr=False, compare=False)

    # lookups (linear scans build small dicts; callers in hot loops should cache them)
    def tensor(self, name: str) -> TensorDecl | None:
        return next((t for t in self.tensors if t.name == name), None)

    def layer(self, name: str) -> MoEDecl | None:
        return next((m for m in self.layers if m.name == name), None)

    def layout(self, layer: str, shared: bool = False) -> SliceLayout | None:
        return next((s for s in self.layouts if s.layer == layer and s.shared == shared), None)

    def slot_pool(self, die: int) -> SlotPool | None:
        return next((s for s in self.slots if s.die == die), None)

    def island(self, name: str) -> IslandDecl | None:
        return next((i for i in self.islands if i.name == name), None)

    def stream(self, die: int) -> DieStream | None:
        return next((s for s in self.streams if s.die == die), None)

    def policy(self, layer: str) -> RuntimePolicy | None:
        return next((r for r in self.runtime if r.layer == layer), None)

    @property
    def is_static(self) -> bool:
        """True when there is no runtime part and no ``moe`` placeholder."""
        return not self.runtime and not any(
            isinstance(i, MoE) for s in self.streams for i in s.instrs
        )

    def num_instructions(self) -> int:
        return sum(len(s.instrs) for s in self.streams)

    def rebased(self, src_dir: str, dst_dir: str) -> Program:
        """This program as written into ``dst_dir`` when its relative file references (the
        weights companion, a target TOML file) are relative to ``src_dir``: they point at the
        same files from the new place."""

        def move(path: str) -> str:
            if os.path.isabs(path):
                return path
            return os.path.relpath(
                os.path.join(os.path.abspath(src_dir), path), os.path.abspath(dst_dir)
            )

        weights, target = self.weights, self.target
        if weights is not None:
            weights = replace(weights, path=move(weights.path))
        if target is not None and (target.spec.endswith(".toml") or "/" in target.spec):
            target = replace(target, spec=move(target.spec))
        return replace(self, weights=weights, target=target)
