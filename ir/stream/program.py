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

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal, TypeAlias

from moec.ir.errors import Location, ProgramError

#: Version of the text format this module reads and writes (the ``moec 1`` line).
FORMAT_VERSION = 1

#: The channel id of host memory, the target's optional offloading tier (``host`` in the text
#: form, ``tensor ... host bytes B`` and ``load sK <- host ...``): each die reaches it over its
#: own host link.
HOST_CHANNEL = -1

#: A typed parameter value of a runtime policy or a target override.
Value: TypeAlias = int | float | str | bool | list["Value"]


# --- token sets ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenSet:
    """A set of token indices of one iteration, kept as sorted, disjoint, non-adjacent ranges.

    ``ranges`` holds inclusive ``(first, last)`` pairs; the text form is ``0..15,18,20..31``.
    """

    ranges: tuple[tuple[int, int], ...]

    @staticmethod
    def of(tokens: Iterable[int]) -> TokenSet:
        """The set of the given token indices (any order, duplicates allowed)."""
        out: list[tuple[int, int]] = []
        for t in sorted(set(tokens)):
            if t < 0:
                raise ProgramError(f"token index {t} is negative")
            if out and out[-1][1] + 1 == t:
                out[-1] = (out[-1][0], t)
            else:
                out.append((t, t))
        return TokenSet(tuple(out))

    @staticmethod
    def span(first: int, stop: int) -> TokenSet:
        """Tokens ``first .. stop-1`` (empty when ``stop <= first``)."""
        return TokenSet(((first, stop - 1),)) if stop > first else TokenSet(())

    @staticmethod
    def normalize(ranges: Iterable[tuple[int, int]]) -> TokenSet:
        """Merge possibly overlapping or unsorted inclusive ranges into canonical form."""
        out: list[tuple[int, int]] = []
        for a, b in sorted(ranges):
            if a < 0 or b < a:
                raise ProgramError(f"bad token range {a}..{b}")
            if out and a <= out[-1][1] + 1:
                if b > out[-1][1]:
                    out[-1] = (out[-1][0], b)
            else:
                out.append((a, b))
        return TokenSet(tuple(out))

    def __iter__(self) -> Iterator[int]:
        for a, b in self.ranges:
            yield from range(a, b + 1)

    def __len__(self) -> int:
        return sum(b - a + 1 for a, b in self.ranges)

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def __contains__(self, t: object) -> bool:
        return isinstance(t, int) and any(a <= t <= b for a, b in self.ranges)

    @property
    def max(self) -> int:
        """The largest token index (-1 for the empty set)."""
        return self.ranges[-1][1] if self.ranges else -1

    def to_list(self) -> list[int]:
        return list(self)

    def text(self) -> str:
        """The canonical text form, e.g. ``0..15,18,20..31``."""
        return ",".join(str(a) if a == b else f"{a}..{b}" for a, b in self.ranges)

    def __str__(self) -> str:
        return self.text()


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


# --- what a slot holds ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SliceRef:
    """Micro-slice ``slice`` of expert ``expert`` of layer ``layer`` (``expert`` None: shared)."""

    layer: str
    expert: int | None
    slice: int

    def __str__(self) -> str:
        e = "sh" if self.expert is None else f"e{self.expert}"
        return f"{self.layer}:{e}:s{self.slice}"


@dataclass(frozen=True)
class TensorRef:
    """A whole DRAM tensor."""

    name: str

    def __str__(self) -> str:
        return self.name


Content = SliceRef | TensorRef


@dataclass(frozen=True)
class Block:
    """A block of activations of a layer: its input ``x`` or output/partial sum ``y``, by token."""

    layer: str
    which: Literal["x", "y"]
    tokens: TokenSet


# --- instructions --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Load:
    """DRAM -> SRAM: bring ``content`` from channel ``channel`` (or the host, when it is
    :data:`HOST_CHANNEL`) into slot ``slot``."""

    opcode: ClassVar[str] = "load"
    slot: int
    channel: int
    content: Content
    nbytes: int
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Send:
    """D2D to neighbour die ``peer``: the content of ``slot``, or an activation ``block``."""

    opcode: ClassVar[str] = "send"
    peer: int
    nbytes: int
    slot: int | None = None
    block: Block | None = None
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Recv:
    """D2D from neighbour die ``peer``: into ``slot`` (holding ``content``), or a ``block``.

    The k-th ``send`` from die a to die b matches the k-th ``recv`` on b from a.
    """

    opcode: ClassVar[str] = "recv"
    peer: int
    nbytes: int
    slot: int | None = None
    content: Content | None = None
    block: Block | None = None
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Gemm:
    """Gate/up projection of the micro-slice in ``slot`` for ``tokens`` (their layer inputs)."""

    opcode: ClassVar[str] = "gemm"
    slot: int
    tokens: TokenSet
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Act:
    """The activation (e.g. silu(gate) * up) of the slice's hidden columns for ``tokens``."""

    opcode: ClassVar[str] = "act"
    slot: int
    tokens: TokenSet
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Accum:
    """Down-projection of the slice, weighted by the gate scores, accumulated into outputs."""

    opcode: ClassVar[str] = "accum"
    slot: int
    tokens: TokenSet
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Free:
    """Release slot ``slot`` (once its pending transfers are done)."""

    opcode: ClassVar[str] = "free"
    slot: int
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Signal:
    """Increment the package-wide event counter ``event`` by one."""

    opcode: ClassVar[str] = "signal"
    event: str
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Wait:
    """Block until event ``event`` has been signalled at least ``count`` times in total."""

    opcode: ClassVar[str] = "wait"
    event: str
    count: int
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Dense:
    """This die's share of dense island ``island``: ``flops`` of compute, ``nbytes`` of DRAM."""

    opcode: ClassVar[str] = "dense"
    island: str
    flops: int
    nbytes: int
    loc: Location | None = field(default=None, compare=False)


@dataclass(frozen=True)
class MoE:
    """Placeholder: the runtime expansion of MoE layer ``layer`` runs here on this die."""

    opcode: ClassVar[str] = "moe"
    layer: str
    loc: Location | None = field(default=None, compare=False)


Instr = Load | Send | Recv | Gemm | Act | Accum | Free | Signal | Wait | Dense | MoE

#: Every opcode, in the order the documentation lists them.
OPCODES: tuple[str, ...] = (
    "load", "send", "recv", "gemm", "act", "accum", "free", "signal", "wait", "dense", "moe",
)  # fmt: skip


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


@dataclass
class RuntimePolicy:
    """What the on-package scheduler does for one MoE layer once routing is known.

    ``params`` are the strategy's typed options (placement, trajectory, load order, slots, slack,
    slices, r5, ...): new strategies add parameters, not grammar. ``precision`` has one entry per
    expert (empty: the layer's dtype everywhere); ``annotations`` map a name (e.g. ``importance``)
    to one value per expert.
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
