"""A die's run of streamed micro-slices as instructions, made a column at a time.

EP, TP, Hydra and EPLB stream an expert's micro-slices on a die as five instructions each,
``load`` into the next slot (round robin), ``gemm``, ``act``, ``accum``, ``free``
(:func:`stream_runs`). A whole model is hundreds of thousands of slices, and making their
instructions one constructor call at a time (:func:`stream_slices_reference`) was most of the
expansion: a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``.

:func:`stream_runs` makes the same objects, for a die's runs one after the other, a column at
a time instead: :func:`make` allocates the objects and sets each field over all of them through
the field's slot descriptor (one C-level ``map`` per field); the compute steps, shared per (slot, token set), are made the same way when missing; slice
assignment interleaves the five columns. Same values, same order, same sharing (tests compare
the two on the tiny goldens and on real layers).

    a run of 6 slices of e3 on slots [0, 1, 2], cursor at 1:
      slots  = [1, 2, 0, 1, 2, 0]
      loads  = make(Load, 6, slots, channels, make(SliceRef, 6, ...), bytes, [None] * 6)
      gemms  = [gemm s1, gemm s2, gemm s0] * 2      (act, accum, free alike)
      block[0::5] = loads; block[1::5] = gemms; ...
"""

from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import repeat
from typing import TYPE_CHECKING, Any, TypeVar

from moec.backends.interp import chain_hints
from moec.ir.stream.program import Accum, Act, Free, Gemm, Instr, Load, SliceRef, TokenSet

if TYPE_CHECKING:
    from moec.backends.interp.expand import ExpandContext

T = TypeVar("T")

#: Runs shorter than this many slices are made one slice at a time (the columns' fixed cost
#: is about that of three slices).
BATCH = 4

_new = object.__new__
_drain: Callable[[Iterable[Any]], None] = deque(maxlen=0).extend
_setters: dict[type, tuple[Callable[[Any, Any], None], ...]] = {}


def _fields(cls: type) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot descriptors' setters of ``cls``'s fields, in field order (a frozen ``slots``
    dataclass without ``__post_init__``: its ``__init__`` only sets the fields)."""
    hit = _setters.get(cls)
    if hit is None:
        if not dataclasses.is_dataclass(cls) or "__slots__" not in vars(cls):
            raise TypeError(f"{cls.__name__} is not a dataclass with slots")
        if hasattr(cls, "__post_init__"):
            raise TypeError(f"{cls.__name__} has __post_init__: make() would skip it")
        hit = _setters[cls] = tuple(getattr(cls, f.name).__set__ for f in dataclasses.fields(cls))
    return hit


def make(cls: type[T], n: int, *columns: Iterable[Any]) -> list[T]:
    """``[cls(*row) for row in zip(*columns)]`` for ``n`` rows: every field given, in field
    order (``repeat(v, n)`` for a constant), each set over all rows in one pass."""
    setters = _fields(cls)
    if len(columns) != len(setters):
        raise TypeError(f"{cls.__name__} has {len(setters)} fields, make() got {len(columns)}")
    objs = list(map(_new, repeat(cls, n)))
    for setter, values in zip(setters, columns, strict=True):
        _drain(map(setter, objs, values))
    return objs


#: One run of micro-slices: (expert (None: the shared experts), its channel or each slice's
#: channel by slice index, its tokens, its slices).
Run = tuple[int | None, int | Sequence[int], TokenSet, Sequence[int]]


def _steps(
    ctx: ExpandContext, runs: Sequence[Run], order: list[int]
) -> list[tuple[Gemm, Act, Accum, Free]]:  # fmt: skip
    """The ``gemm``, ``act``, ``accum`` and ``free`` of each slice of ``runs``, whose slots are
    ``order``: memoized on ``ctx`` per token set and slot, the missing ones made in one
    :func:`make` per class."""
    memos, made_s, made_ts, made_in = [], [], [], []
    at = 0
    for _, _, ts, js in runs:
        entry = ctx._steps.get(id(ts))
        if entry is None:
            entry = ctx._steps[id(ts)] = (ts, {})
        memo = entry[1]
        seg = order[at : at + len(js)]
        at += len(js)
        for s in dict.fromkeys(seg):
            if s not in memo:
                memo[s] = None  # type: ignore[assignment]  # made below
                made_s.append(s)
                made_ts.append(ts)
                made_in.append(memo)
        memos.append((memo, seg))
    if made_s:
        m = len(made_s)
        made = zip(
            make(Gemm, m, made_s, made_ts, repeat(None, m)),
            make(Act, m, made_s, made_ts, repeat(None, m)),
            make(Accum, m, made_s, made_ts, repeat(None, m)),
            make(Free, m, made_s, repeat(None, m)),
            strict=True,
        )
        for memo, s, steps in zip(made_in, made_s, made, strict=True):
            memo[s] = steps
    out: list[tuple[Gemm, Act, Accum, Free]] = []
    for memo, seg in memos:
        out += map(memo.__getitem__, seg)
    return out


def _per_slice(values: tuple[int, ...], js: Sequence[int]) -> Sequence[int]:
    """``values[j]`` of each slice ``j`` of ``js``."""
    if isinstance(js, range) and js.step == 1:
        return values[js.start : js.stop]
    return list(map(values.__getitem__, js))


def stream_runs(
    out: list[Instr], ctx: ExpandContext, slots: list[int], cursor: list[int], runs: Sequence[Run]
) -> None:  # fmt: skip
    """Load, compute and free the micro-slices of each of ``runs`` in turn on one die: a run
    ``(expert, channel, ts, js)`` streams slices ``js`` of ``expert`` (None: the shared
    experts) from ``channel`` (or slice ``j`` from ``channel[j]``) for tokens ``ts``, each
    through the next of ``slots`` (``cursor[0]`` counts the slices streamed so far): ``load``,
    ``gemm``, ``act``, ``accum``, ``free``. All the loads are made in one :func:`make` per
    class, the steps by :func:`_steps`.

    Instructions are frozen values, so the slices that use one slot for one token set share
    one ``gemm``, ``act``, ``accum`` and ``free`` object (memoized on ``ctx``): the same
    program, with two objects made per slice (its ``load`` and the ``load``'s micro-slice)
    rather than six. Nothing that keys instructions by identity sees a shared one: serving
    copies every instruction it hosts (:func:`moec.backends.interp.serving.concatenate`),
    and the catch-up steps (:mod:`.fsedp_deferred`) are FSE-DP's only."""
    n = sum(len(r[3]) for r in runs)
    if n < BATCH:
        for expert, channel, ts, js in runs:
            stream_slices_reference(out, ctx, slots, cursor, expert, channel, ts, js)
        return
    nslots = len(slots)
    k = cursor[0] % nslots
    cursor[0] += n
    cycle = slots[k:] + slots[:k]
    order = (cycle * -(-n // nslots))[:n]
    chain = itertools.chain.from_iterable
    refs = make(
        SliceRef, n, repeat(ctx.layer.name, n), chain(repeat(r[0], len(r[3])) for r in runs),
        chain(r[3] for r in runs),
    )  # fmt: skip
    chs = list(
        chain(
            repeat(ch, len(js)) if isinstance(ch, int) else map(ch.__getitem__, js)
            for _, ch, _, js in runs
        )
    )
    sizes = list(chain(_per_slice(ctx.expert_slice_bytes(r[0]), r[3]) for r in runs))
    block: list[Instr] = [None] * (5 * n)  # type: ignore[list-item]
    block[0::5] = make(Load, n, order, chs, refs, sizes, repeat(None, n))
    for q, column in enumerate(zip(*_steps(ctx, runs, order), strict=True), start=1):
        block[q::5] = column
    out += block
    if 0 not in sizes:  # a slice that moves no bytes is timed by the handlers
        _hint(block, runs, ctx.slice_widths, chs, sizes)


def _hint(
    block: list[Instr], runs: Sequence[Run], widths: tuple[tuple[int, ...], tuple[int, ...]],
    chs: list[int], sizes: list[int],
) -> None:  # fmt: skip
    """Hand the builder each chain's shape (:mod:`moec.backends.interp.chain_hints`): per
    chain, the index of the block's first chain with the same shared-ness, slice width,
    channel, bytes and token count (``widths``: per slice, the routed experts' and the shared
    experts'), found in one C-level pass. That key is as fine as the builder's template key
    (:func:`moec.backends.interp.slice_chain._lookup`): the block is one layer's, whose
    slices of one width and shared-ness have one geometry."""
    chain = itertools.chain.from_iterable
    keys = zip(
        chain(repeat(r[0] is None, len(r[3])) for r in runs),
        chain(_per_slice(widths[r[0] is None], r[3]) for r in runs), chs, sizes,
        chain(repeat(r[2].size, len(r[3])) for r in runs), strict=True,
    )  # fmt: skip
    first: dict[tuple[Any, ...], int] = {}
    chain_hints.put(block, list(map(first.setdefault, keys, itertools.count())))


def stream_slices_reference(
    out: list[Instr], ctx: ExpandContext, slots: list[int], cursor: list[int],
    expert: int | None, channel: int | Sequence[int], ts: TokenSet, js: Sequence[int],
) -> None:  # fmt: skip
    """One run of :func:`stream_runs`, one slice and one constructor call at a time (the
    reference the tests compare with)."""
    name = ctx.layer.name
    nbytes = ctx.expert_slice_bytes(expert)
    nslots = len(slots)
    k = cursor[0]
    entry = ctx._steps.get(id(ts))
    if entry is None:
        entry = ctx._steps[id(ts)] = (ts, {})
    memo = entry[1]
    chs = repeat(channel) if isinstance(channel, int) else map(channel.__getitem__, js)
    for j, ch in zip(js, chs, strict=False):  # ``repeat`` has no end
        s = slots[k % nslots]
        k += 1
        out.append(Load(s, ch, SliceRef(name, expert, j), nbytes[j]))
        steps = memo.get(s)
        if steps is None:
            steps = memo[s] = (Gemm(s, ts), Act(s, ts), Accum(s, ts), Free(s))
        out += steps
    cursor[0] = k
