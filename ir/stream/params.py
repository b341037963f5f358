"""Typed runtime-policy parameters: one frozen dataclass per strategy family.

A runtime policy writes its strategy's options as ``param KEY = VALUE`` lines
(:attr:`RuntimePolicy.params <moec.ir.stream.program.RuntimePolicy>` keeps them as written, so
the text form is unchanged). :func:`strategy_params` reads them into the strategy's dataclass,
checking each value against its field's :class:`ParamType` (type, length, range) and the
family's cross-field rules, with defaults filled in; a bad value is a :class:`ProgramError` at the
parameter's ``file:line:col``. The verifier runs it on every policy (with the target, when it
knows one); the interpreter's expanders read their parameters only through it.

    param placement = [0, 1, 2, 3, 0, 1, 2, 3]   ->   EPParams(placement=(0, 1, 2, 3, 0, 1, 2, 3),
    param slice_bytes = [24576]                                 slice_bytes=(24576,), ...)

Lengths and ranges come from the layer and the target (:class:`ParamContext`): ``experts``,
``dies``, ``channels``, and the micro-slice counts of the layer's layouts; what is unknown (no
target, an undeclared layout) is not checked. A strategy without a family here (a new one) is not
checked: its expander reads ``params`` itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from moec.ir.errors import Location, ProgramError
from moec.ir.stream.program import MoEDecl, RuntimePolicy, SliceLayout
from moec.ir.target import Target

#: FSE-DP's rule sets and central load orders (``backends/interp/expand/fsedp*.py``).
FSEDP_RULES: tuple[str, ...] = ("r1-r4", "naive")
FSEDP_ORDERS: tuple[str, ...] = ("natural", "paired", "balanced")
#: TP's slice orders (``backends/interp/expand/tp_order.py``): ascending expert id, or hot
#: slices spread among cold ones against the die's compute backlog.
TP_ORDERS: tuple[str, ...] = ("natural", "balanced")
#: The skip rules the interpreter's scheduler knows (``skip RULE threshold T``, T in 0..1).
SKIP_RULES: tuple[str, ...] = ("caee", "second")
#: How the compiler may have found an FSE-DP trajectory (the ``cycle`` record).
FSEDP_CYCLES: tuple[str, ...] = ("spiral", "rowmajor")

P = TypeVar("P", bound="StrategyParams")


@dataclass(frozen=True)
class ParamContext:
    """What lengths and ranges depend on (None: unknown, not checked)."""

    layer: str
    experts: int
    dies: int | None = None
    channels: int | None = None
    slices: int | None = None
    shared_slices: int | None = None
    #: whether the layer has shared experts
    shared: bool = False
    target: Target | None = None

    def size(self, what: str | None) -> int | None:
        return None if what is None else getattr(self, what)


class _Bad(Exception):
    """A value outside its type (the caller says which parameter, where)."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class ParamType:
    """The values one parameter takes: :meth:`convert` returns the typed value or raises."""

    def describe(self, ctx: ParamContext) -> str:
        raise NotImplementedError

    def convert(self, raw: object, ctx: ParamContext) -> Any:
        raise NotImplementedError


@dataclass(frozen=True)
class Int(ParamType):
    """An integer ``>= lo``."""

    lo: int = 0

    def describe(self, ctx: ParamContext) -> str:
        return f"an integer >= {self.lo}"

    def convert(self, raw: object, ctx: ParamContext) -> int:
        if not _is_int(raw) or raw < self.lo:  # type: ignore[operator]
            raise _Bad
        return int(raw)  # type: ignore[call-overload]


@dataclass(frozen=True)
class Number(ParamType):
    """A number (int or float) in ``lo..hi``, as a float."""

    lo: float
    hi: float

    def describe(self, ctx: ParamContext) -> str:
        return f"a number in {self.lo:g}..{self.hi:g}"

    def convert(self, raw: object, ctx: ParamContext) -> float:
        if not isinstance(raw, int | float) or isinstance(raw, bool):
            raise _Bad
        if not self.lo <= raw <= self.hi:
            raise _Bad
        return float(raw)


class Bool(ParamType):
    def describe(self, ctx: ParamContext) -> str:
        return "true or false"

    def convert(self, raw: object, ctx: ParamContext) -> bool:
        if not isinstance(raw, bool):
            raise _Bad
        return raw


class Text(ParamType):
    def describe(self, ctx: ParamContext) -> str:
        return "a string"

    def convert(self, raw: object, ctx: ParamContext) -> str:
        if not isinstance(raw, str):
            raise _Bad
        return raw


@dataclass(frozen=True)
class Choice(ParamType):
    values: tuple[str, ...]

    def describe(self, ctx: ParamContext) -> str:
        return f"one of {', '.join(self.values)}"

    def convert(self, raw: object, ctx: ParamContext) -> str:
        if raw not in self.values:
            raise _Bad
        return str(raw)


@dataclass(frozen=True)
class Ints(ParamType):
    """A list of ``length`` integers in ``lo..hi-1`` (``length``, ``hi``: a context size).

    ``distinct``: no integer twice (a list of dies a slice visits, replicas of an expert).
    """

    length: str | None = None
    hi: str | None = None
    lo: int = 0
    distinct: bool = False

    def describe(self, ctx: ParamContext) -> str:
        n, hi = ctx.size(self.length), ctx.size(self.hi)
        count = f"{n} " if n is not None else ""
        what = "distinct " if self.distinct else ""
        span = f"in {self.lo}..{hi - 1}" if hi is not None else f">= {self.lo}"
        return f"a list of {count}{what}integers {span}"

    def convert(self, raw: object, ctx: ParamContext) -> tuple[int, ...]:
        n, hi = ctx.size(self.length), ctx.size(self.hi)
        if not isinstance(raw, list) or (n is not None and len(raw) != n):
            raise _Bad
        if raw and set(map(type, raw)) == {int}:  # plain ints (the lowering's): their range
            if min(raw) < self.lo or (hi is not None and max(raw) >= hi):
                raise _Bad
        elif not all(_is_int(v) and v >= self.lo and (hi is None or v < hi) for v in raw):
            raise _Bad
        if self.distinct and len(set(raw)) != len(raw):
            raise _Bad
        return tuple(raw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class IntLists(ParamType):
    """``length`` lists, each a non-empty :class:`Ints` of ``item``."""

    length: str
    item: Ints

    def describe(self, ctx: ParamContext) -> str:
        n = ctx.size(self.length)
        inner = self.item.describe(ctx).removeprefix("a list of ")
        return f"{n if n is not None else 'per expert'} non-empty lists of {inner}"

    def convert(self, raw: object, ctx: ParamContext) -> tuple[tuple[int, ...], ...]:
        n = ctx.size(self.length)
        if not isinstance(raw, list) or (n is not None and len(raw) != n):
            raise _Bad
        out = tuple(self.item.convert(v, ctx) for v in raw)
        if not all(out):
            raise _Bad
        return out


class Replicas(IntLists):
    """Per expert, the distinct dies holding a replica of it."""

    def __init__(self) -> None:
        super().__init__("experts", Ints(hi="dies", distinct=True))

    def describe(self, ctx: ParamContext) -> str:
        dies = f" in 0..{ctx.dies - 1}" if ctx.dies is not None else ""
        return f"{ctx.experts} lists of distinct dies{dies}"


def param(kind: ParamType, default: Any = dataclasses.MISSING) -> Any:
    """A parameter field of type ``kind`` (no default: required)."""
    return field(default=default, metadata={"param": kind})


@dataclass(frozen=True, kw_only=True)
class StrategyParams:
    """Parameters every strategy takes: the lowering's byte count of each micro-slice (biases
    ride with slice 0), used when every expert has the layer's precision."""

    slice_bytes: tuple[int, ...] | None = param(Ints("slices", lo=1), None)
    shared_slice_bytes: tuple[int, ...] | None = param(Ints("shared_slices", lo=1), None)

    def check(self, ctx: ParamContext, bad: Callable[[str, str], ProgramError]) -> None:
        """Rules across parameters; ``bad(key, message)`` makes the located error."""

    def min_free_slots(self, num_dies: int) -> int:
        """Buffer slots the expansion needs free on each die at the layer's placeholder."""
        return 1


def fsedp_walk(order: list[int], closed: bool) -> list[int]:
    """The dies a micro-slice visits in turn: the cycle itself, or an open path there and back."""
    return order if closed or len(order) <= 2 else order + order[-2:0:-1]


def fsedp_min_slots(order: list[int], closed: bool, rules: str) -> int:
    """Free slots per die FSE-DP needs: 1 for naive loading; otherwise one per visit a die gets
    on the walk (slices it holds in flight) plus one to load into."""
    if rules == "naive":
        return 1
    walk = fsedp_walk(order, closed)
    return max(walk.count(d) for d in set(walk)) + 1


@dataclass(frozen=True, kw_only=True)
class SharedExpertParams(StrategyParams):
    """EP-style strategies: how shared experts run (``split`` over the dies, each slice once,
    or ``replicated`` on every die), who computes each shared slice and from which channel,
    and the routed-token counts the compiler placed experts by (``load``, from ``load_source``:
    ``trace``, ``calibration`` or ``uniform``)."""

    shared: str = param(Choice(("split", "replicated")), "split")
    shared_owner: tuple[int, ...] | None = param(Ints("shared_slices", "dies"), None)
    shared_channels: tuple[int, ...] | None = param(Ints("shared_slices", "channels"), None)
    load: tuple[int, ...] | None = param(Ints("experts"), None)
    load_source: str | None = param(Text(), None)


@dataclass(frozen=True, kw_only=True)
class EPParams(SharedExpertParams):
    """EP and Hydra: the die of each expert and the channel holding it (default: nearest);
    ``split``: experts whose micro-slices are cut over all dies, TP-style, instead of running
    whole on their ``placement`` die (a hybrid: hot experts split, the rest whole), slice ``j``
    of each from ``split_channels[j]`` (default: the channel nearest its die); ``window`` and
    ``chunk``: chunked token dispatch, as TP's."""

    placement: tuple[int, ...] = param(Ints("experts", "dies"))
    channels: tuple[int, ...] | None = param(Ints("experts", "channels"), None)
    split: tuple[int, ...] | None = param(Ints(hi="experts", distinct=True), None)
    split_channels: tuple[int, ...] | None = param(Ints("slices", "channels"), None)
    window: int | None = param(Int(1), None)
    chunk: int | None = param(Int(1), None)

    def check(self, ctx: ParamContext, bad: Callable[[str, str], ProgramError]) -> None:
        if self.chunk is not None and self.window is None:
            raise bad("chunk", "needs window (chunked dispatch)")
        if self.window is not None and self.split:
            raise bad("window", "does not combine with split experts")


@dataclass(frozen=True, kw_only=True)
class EPLBParams(SharedExpertParams):
    """EPLB: per expert the dies holding a replica and each replica's channel; ``extra`` is
    how many replicas the compiler added."""

    replicas: tuple[tuple[int, ...], ...] = param(Replicas())
    channels: tuple[tuple[int, ...], ...] | None = param(
        IntLists("experts", Ints(hi="channels")), None
    )
    extra: int | None = param(Int(), None)

    def check(self, ctx: ParamContext, bad: Callable[[str, str], ProgramError]) -> None:
        if self.channels is not None and any(
            len(c) != len(r) for c, r in zip(self.channels, self.replicas, strict=True)
        ):
            raise bad("channels", "must give a channel per replica")


@dataclass(frozen=True, kw_only=True)
class TPParams(StrategyParams):
    """TP: the die owning each micro-slice (and each shared one) and its channel; ``window``:
    chunked token dispatch, at most that many experts' tokens on a die at once (absent: every
    token gathered on every die for the whole layer); ``order``: the order a die streams its
    slices in (``natural``: ascending expert id; ``balanced``: hot slices spread among cold
    ones, ``backends/interp/expand/tp_order.py``)."""

    owner: tuple[int, ...] = param(Ints("slices", "dies"))
    channels: tuple[int, ...] | None = param(Ints("slices", "channels"), None)
    shared_owner: tuple[int, ...] | None = param(Ints("shared_slices", "dies"), None)
    shared_channels: tuple[int, ...] | None = param(Ints("shared_slices", "channels"), None)
    window: int | None = param(Int(1), None)
    chunk: int | None = param(Int(1), None)
    order: str = param(Choice(TP_ORDERS), "natural")

    def check(self, ctx: ParamContext, bad: Callable[[str, str], ProgramError]) -> None:
        if ctx.shared and self.shared_owner is None:
            raise bad("shared_owner", "is required: the layer has shared experts")
        if self.chunk is not None and self.window is None:
            raise bad("chunk", "needs window (chunked dispatch)")


@dataclass(frozen=True, kw_only=True)
class FSEDPParams(StrategyParams):
    """FSE-DP (``backends/interp/expand/fsedp.py`` says what each does): the trajectory and
    whether it closes, each expert's first channel, the rules, the central load order, R5, and
    the token-buffering slack (``cycle`` records how the compiler found the trajectory)."""

    trajectory: tuple[int, ...] | None = param(Ints("dies", "dies"), None)
    closed: bool = param(Bool(), True)
    cycle: str | None = param(Choice(FSEDP_CYCLES), None)
    channels: tuple[int, ...] | None = param(Ints("experts", "channels"), None)
    rules: str = param(Choice(FSEDP_RULES), "r1-r4")
    order: str = param(Choice(FSEDP_ORDERS), "natural")
    r5: bool = param(Bool(), False)
    slack: float = param(Number(0.0, 1.0), 0.0)

    def min_free_slots(self, num_dies: int) -> int:
        order = list(self.trajectory) if self.trajectory is not None else list(range(num_dies))
        return fsedp_min_slots(order, self.closed, self.rules)

    def check(self, ctx: ParamContext, bad: Callable[[str, str], ProgramError]) -> None:
        t = ctx.target
        if t is None:
            return
        order = list(self.trajectory) if self.trajectory is not None else list(range(t.num_dies))
        missing = sorted(set(range(t.num_dies)) - set(order))
        steps = list(zip(order, order[1:] + (order[:1] if self.closed else []), strict=False))
        hop = next(((a, b) for a, b in steps if a != b and not t.are_neighbors(a, b)), None)
        if missing or hop is not None:
            why = f"die {missing[0]} is missing" if missing else f"dies {hop} are not neighbours"
            shape = "cycle" if self.closed else "path"
            raise bad(
                "trajectory",
                f"{order} is not a Hamiltonian {shape} of {t.name}: {why}",
            )


#: The parameter family of each strategy the interpreter expands.
FAMILIES: dict[str, type[StrategyParams]] = {
    "ep": EPParams,
    "hydra": EPParams,
    "eplb": EPLBParams,
    "tp": TPParams,
    "fsedp": FSEDPParams,
}


def param_context(
    layer: MoEDecl, target: Target | None, layouts: Mapping[tuple[str, bool], SliceLayout]
) -> ParamContext:
    routed, shared = layouts.get((layer.name, False)), layouts.get((layer.name, True))
    return ParamContext(
        layer.name, layer.experts,
        dies=target.num_dies if target is not None else None,
        channels=len(target.channels) if target is not None else None,
        slices=routed.count if routed is not None else None,
        shared_slices=shared.count if shared is not None else None,
        shared=layer.shared_ffn > 0, target=target,
    )  # fmt: skip


def strategy_params(
    policy: RuntimePolicy,
    layer: MoEDecl,
    target: Target | None = None,
    layouts: Mapping[tuple[str, bool], SliceLayout] | None = None,
    filename: str = "<program>",
) -> StrategyParams | None:
    """The typed parameters of ``policy`` (None for a strategy with no family here).

    Raises :class:`ProgramError` at the offending ``param`` line: an unknown key, a value of
    the wrong type, length or range, a missing required one, or a cross-parameter rule.
    """
    family = FAMILIES.get(policy.strategy)
    if family is None:
        return None
    ctx = param_context(layer, target, layouts or {})
    fallback = policy.loc if policy.loc is not None else f"{filename}: runtime {layer.name}"

    def where(key: str) -> Location | str:
        return policy.param_locs.get(key) or fallback

    def bad(key: str, message: str) -> ProgramError:
        return ProgramError(f"runtime {layer.name}: param {key} {message}", where(key))

    fields = {f.name: f for f in dataclasses.fields(family)}
    for key in policy.params:
        if key not in fields:
            raise bad(
                key,
                f"is not a parameter of strategy {policy.strategy}, expected one of "
                f"{', '.join(sorted(fields))}",
            )
    values: dict[str, Any] = {}
    for name, f in fields.items():
        kind: ParamType = f.metadata["param"]
        raw = policy.params.get(name)
        if raw is None:
            if f.default is dataclasses.MISSING:
                raise bad(name, f"is required: {kind.describe(ctx)}")
            continue
        try:
            values[name] = kind.convert(raw, ctx)
        except _Bad:
            raise bad(name, f"must be {kind.describe(ctx)}, found {raw!r}") from None
    typed = family(**values)
    typed.check(ctx, bad)
    return typed


def typed_as(params: StrategyParams | None, family: type[P], strategy: str) -> P:
    """``params`` as ``family`` (an expander's view); a ProgramError if the policy's strategy
    has other parameters."""
    if not isinstance(params, family):
        raise ProgramError(f"strategy {strategy} does not take {family.__name__}")
    return params
