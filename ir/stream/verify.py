"""Check a stream program before anyone runs it.

:func:`verify_program` raises :class:`ProgramError` at the offending item's ``file:line:col``:

* every referenced tensor, layer, layout, slice, island, slot, die, channel and event exists;
* each die's slots are loaded (or received) before use, not loaded while occupied, and freed at
  most once per load;
* per-die SRAM planned by the static part (occupied slots x slot size) never exceeds the target's
  SRAM (:class:`SramError`, also a :class:`ScheduleError`, "does not fit SRAM"); activations are
  not checked here: their lifetimes depend on timing, so the compiler reserves room for them
  (``compiler/lower/common.py``) and the interpreter charges them (``docs/isa.md``, "SRAM");
* the k-th ``send`` from die a to die b matches the k-th ``recv`` on b from a (same bytes, same
  payload) and a, b are neighbours on the target;
* the static synchronization cannot deadlock: sends never block, a ``recv`` waits for its send, a
  ``wait`` for its count of ``signal``s; an abstract run of all dies must reach every stream's end.

The runtime part is checked for consistency (one policy per layer, tables sized by expert count);
what the expansion does at a ``moe`` placeholder is the interpreter's business: it may use only
the slots that are free there and must leave them free.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass

from moec.ir.errors import Location, ProgramError, ScheduleError, TargetError
from moec.ir.stream.diagnostics import with_context
from moec.ir.stream.printer import instr as instr_text
from moec.ir.stream.program import (
    HOST_CHANNEL,
    Accum,
    Act,
    Block,
    Content,
    Dense,
    Free,
    Gemm,
    Instr,
    Load,
    MoE,
    MoEDecl,
    Program,
    Recv,
    Send,
    Signal,
    SliceRef,
    TensorRef,
    TokenSet,
    Wait,
)
from moec.ir.target import PRECISION_BYTES, Target, load_target

#: Precisions a tensor, layer or precision table may name.
DTYPES: tuple[str, ...] = tuple(PRECISION_BYTES)


class SramError(ProgramError, ScheduleError):
    """The static part plans more SRAM on a die than the target has."""


@dataclass
class _Slot:
    """What a slot holds during the per-die walk."""

    content: Content | None = None
    since: Location | None = None
    freed_at: Location | None = None


@dataclass(frozen=True)
class _Transfer:
    die: int
    index: int
    instr: Send | Recv
    payload: object


def _where(loc: Location | None, fallback: str) -> str | Location:
    return loc if loc is not None else fallback


def _at(loc: Location | None) -> str:
    return f"line {loc.line}" if loc is not None else "an earlier instruction"


def resolve_target(p: Program) -> Target | None:
    """The target the program names, or None when it names none."""
    if p.target is None:
        return None
    base = os.path.dirname(p.filename) if os.path.exists(p.filename) else None
    try:
        return load_target(p.target.spec, dict(p.target.overrides), base_dir=base)
    except TargetError as err:
        raise ProgramError(f"bad target: {err.message}", _where(p.target.loc, p.filename)) from None


class _Verifier:
    def __init__(self, p: Program, target: Target | None) -> None:
        self.p = p
        self.t = target
        self.tensors = {t.name: t for t in p.tensors}
        self.layers = {m.name: m for m in p.layers}
        self.layouts = {(lay.layer, lay.shared): lay for lay in p.layouts}
        self.pools = {s.die: s for s in p.slots}
        self.islands = {i.name: i for i in p.islands}
        self.sends: dict[tuple[int, int], list[_Transfer]] = defaultdict(list)
        self.recvs: dict[tuple[int, int], list[_Transfer]] = defaultdict(list)

    def fail(self, msg: str, loc: Location | None, fallback: str = "") -> ProgramError:
        return ProgramError(msg, _where(loc, fallback or self.p.filename))

    # --- declarations ---
    def unique(self, kind: str, items: list[tuple[object, Location | None]]) -> None:
        seen: dict[object, Location | None] = {}
        for key, loc in items:
            if key in seen:
                raise self.fail(f"{kind} {key} declared twice (first at {_at(seen[key])})", loc)
            seen[key] = loc

    def dtype(self, dtype: str, loc: Location | None) -> None:
        if dtype not in DTYPES:
            raise self.fail(
                f"unknown precision {dtype!r}, expected one of {', '.join(DTYPES)}", loc
            )

    def die_exists(self, die: int, loc: Location | None, what: str) -> None:
        if die < 0 or (self.t is not None and die >= self.t.num_dies):
            dies = f"0..{self.t.num_dies - 1}" if self.t is not None else "non-negative ids"
            raise self.fail(f"unknown die {die} in {what}, expected {dies}", loc)

    def channel_exists(self, ch: int, loc: Location | None) -> None:
        if ch == HOST_CHANNEL:
            if self.t is not None and self.t.host is None:
                raise self.fail(
                    f"host memory named, but target {self.t.name} has no host tier "
                    "(add one with host_gbps=...)",
                    loc,
                )
            return
        if ch < 0 or (self.t is not None and ch >= len(self.t.channels)):
            n = len(self.t.channels) if self.t is not None else 0
            raise self.fail(f"unknown DRAM channel ch{ch}, expected ch0..ch{n - 1}", loc)

    def declarations(self) -> None:
        p = self.p
        self.unique("tensor", [(t.name, t.loc) for t in p.tensors])
        self.unique("MoE layer", [(m.name, m.loc) for m in p.layers])
        self.unique("layout of", [((x.layer, x.shared), x.loc) for x in p.layouts])
        self.unique("slot pool of die", [(s.die, s.loc) for s in p.slots])
        self.unique("island", [(i.name, i.loc) for i in p.islands])
        self.unique("stream of die", [(s.die, s.loc) for s in p.streams])
        self.unique("runtime policy of", [(r.layer, r.loc) for r in p.runtime])
        for t in p.tensors:
            self.dtype(t.dtype, t.loc)
            self.channel_exists(t.channel, t.loc)
            if t.nbytes <= 0 or any(d < 0 for d in t.shape):
                raise self.fail(f"tensor {t.name} has a negative dimension or no bytes", t.loc)
        for m in p.layers:
            self.dtype(m.dtype, m.loc)
            sizes = (m.experts, m.top_k, m.hidden, m.ffn, m.tokens)
            if min(sizes) <= 0 or m.shared_ffn < 0 or m.top_k > m.experts:
                raise self.fail(
                    f"MoE layer {m.name}: sizes must be positive and top_k <= experts, found "
                    f"experts={m.experts} top_k={m.top_k} hidden={m.hidden} ffn={m.ffn} "
                    f"tokens={m.tokens} shared_ffn={m.shared_ffn}",
                    m.loc,
                )
        for lay in p.layouts:
            layer = self.layers.get(lay.layer)
            if layer is None:
                raise self.fail(f"layout of undefined MoE layer {lay.layer}", lay.loc)
            ffn = layer.shared_ffn if lay.shared else layer.ffn
            start = 0
            for a, b in lay.columns:
                if a != start or b <= a:
                    raise self.fail(
                        f"layout of {lay.layer}: slices must be contiguous and non-empty from "
                        f"column 0, found {a}..{b - 1} where column {start} was expected",
                        lay.loc,
                    )
                start = b
            if start != ffn or not lay.columns:
                raise self.fail(
                    f"layout of {lay.layer} covers {start} columns, expected {ffn}", lay.loc
                )
        for s in p.slots:
            self.die_exists(s.die, s.loc, "slot pool")
            if s.count <= 0 or s.nbytes <= 0:
                raise self.fail(f"slot pool of die {s.die} needs count > 0 and bytes > 0", s.loc)
        for i in p.islands:
            if i.flops < 0 or i.nbytes < 0:
                raise self.fail(f"island {i.name} has negative flops or bytes", i.loc)
        for st in p.streams:
            self.die_exists(st.die, st.loc, "die stream")

    def runtime(self) -> None:
        placed = {
            i.layer: (st.die, i.loc)
            for st in self.p.streams
            for i in st.instrs
            if isinstance(i, MoE)
        }
        for r in self.p.runtime:
            layer = self.layers.get(r.layer)
            if layer is None:
                raise self.fail(f"runtime policy for undefined MoE layer {r.layer}", r.loc)
            if r.layer not in placed:
                raise self.fail(
                    f"runtime policy for {r.layer} is never placed: no die stream has 'moe {r.layer}'",
                    r.loc,
                )
            if r.precision:
                if len(r.precision) != layer.experts:
                    raise self.fail(
                        f"precision table of {r.layer} has {len(r.precision)} entries, "
                        f"expected {layer.experts} (one per expert)",
                        r.loc,
                    )
                for d in r.precision:
                    self.dtype(d, r.loc)
            for k, vals in r.annotations.items():
                if len(vals) != layer.experts:
                    raise self.fail(
                        f"annotation {k} of {r.layer} has {len(vals)} values, "
                        f"expected {layer.experts} (one per expert)",
                        r.loc,
                    )
            if r.skip is not None and not math.isfinite(r.skip.threshold):
                raise self.fail(f"skip threshold of {r.layer} is not finite", r.skip.loc)
        policies = {r.layer for r in self.p.runtime}
        for layer_name, (die, loc) in placed.items():
            if layer_name not in policies:
                raise self.fail(
                    f"moe {layer_name} on die {die} has no runtime policy "
                    f"(expected 'runtime {layer_name} {{ ... }}')",
                    loc,
                )

    # --- the per-die walk ---
    def content_exists(self, c: Content, loc: Location | None) -> None:
        if isinstance(c, TensorRef):
            if c.name not in self.tensors:
                raise self.fail(f"undefined tensor {c.name}", loc)
            return
        layer = self.layers.get(c.layer)
        if layer is None:
            raise self.fail(f"undefined MoE layer {c.layer} in micro-slice {c}", loc)
        if c.expert is None and layer.shared_ffn == 0:
            raise self.fail(f"MoE layer {c.layer} has no shared experts ({c})", loc)
        if c.expert is not None and not 0 <= c.expert < layer.experts:
            raise self.fail(
                f"expert {c.expert} out of range in {c}, layer {c.layer} has {layer.experts}", loc
            )
        layout = self.layouts.get((c.layer, c.expert is None))
        if layout is None:
            kind = "shared layout" if c.expert is None else "layout"
            raise self.fail(f"micro-slice {c} but {c.layer} declares no {kind}", loc)
        if not 0 <= c.slice < layout.count:
            raise self.fail(f"slice {c.slice} out of range in {c}, layout has {layout.count}", loc)

    def tokens_fit(self, layer: MoEDecl, ts: TokenSet, loc: Location | None) -> None:
        if not ts:
            raise self.fail("empty token set", loc)
        if ts.max >= layer.tokens:
            raise self.fail(
                f"token {ts.max} out of range, layer {layer.name} has {layer.tokens} tokens "
                f"(0..{layer.tokens - 1})",
                loc,
            )

    def block(self, b: Block, loc: Location | None) -> None:
        layer = self.layers.get(b.layer)
        if layer is None:
            raise self.fail(f"undefined MoE layer {b.layer} in activation block", loc)
        if b.which not in ("x", "y"):
            raise self.fail(f"activation block must be x or y, found {b.which!r}", loc)
        self.tokens_fit(layer, b.tokens, loc)

    def walk(self, die: int, instrs: list[Instr]) -> None:
        pool = self.pools.get(die)
        slots: dict[int, _Slot] = {}
        occupied = 0
        sram = self.t.dies[die].sram_bytes if self.t is not None else None
        where = f"{self.p.filename}: die {die}"

        def slot(k: int, loc: Location | None) -> _Slot:
            if pool is None:
                raise self.fail(f"unknown slot s{k}: die {die} declares no slots", loc, where)
            if not 0 <= k < pool.count:
                raise self.fail(
                    f"unknown slot s{k} on die {die}, expected s0..s{pool.count - 1}", loc, where
                )
            return slots.setdefault(k, _Slot())

        def full(k: int, loc: Location | None, op: str) -> _Slot:
            s = slot(k, loc)
            if s.content is None:
                if s.freed_at is not None:
                    raise self.fail(
                        f"{op} uses slot s{k} on die {die} after it was freed at {_at(s.freed_at)}",
                        loc,
                        where,
                    )
                raise self.fail(f"{op} uses slot s{k} on die {die} before it is loaded", loc, where)
            return s

        def fill(k: int, c: Content, nbytes: int, loc: Location | None, op: str) -> None:
            nonlocal occupied
            s = slot(k, loc)
            assert pool is not None
            if s.content is not None:
                raise self.fail(
                    f"{op} into slot s{k} on die {die}, which still holds {s.content} "
                    f"(since {_at(s.since)}); free it first",
                    loc,
                    where,
                )
            if not 0 < nbytes <= pool.nbytes:
                raise self.fail(
                    f"{op} of {nbytes} bytes does not fit slot s{k} of die {die} "
                    f"({pool.nbytes} bytes)",
                    loc,
                    where,
                )
            s.content, s.since, s.freed_at = c, loc, None
            occupied += pool.nbytes
            if sram is not None and occupied > sram:
                assert self.t is not None
                raise SramError(
                    f"does not fit SRAM: die {die} peaks at {occupied} bytes of slots "
                    f"({occupied // pool.nbytes} x {pool.nbytes}), target {self.t.name} has "
                    f"{sram} bytes per die",
                    _where(loc, where),
                )

        for n, i in enumerate(instrs):
            loc = i.loc
            if isinstance(i, Load):
                self.channel_exists(i.channel, loc)
                self.content_exists(i.content, loc)
                if isinstance(i.content, TensorRef):
                    t = self.tensors[i.content.name]
                    if i.nbytes != t.nbytes:
                        raise self.fail(
                            f"load of tensor {t.name} moves {i.nbytes} bytes, expected {t.nbytes}",
                            loc,
                        )
                fill(i.slot, i.content, i.nbytes, loc, "load")
            elif isinstance(i, Send | Recv):
                self.die_exists(i.peer, loc, i.opcode)
                if i.peer == die:
                    raise self.fail(f"{i.opcode} on die {die} names itself as peer", loc, where)
                if self.t is not None and not self.t.are_neighbors(die, i.peer):
                    raise self.fail(
                        f"{i.opcode} between die {die} and die {i.peer}, which are not neighbours "
                        f"(neighbours of {die}: {self.t.neighbors(die)})",
                        loc,
                        where,
                    )
                if (i.slot is None) == (i.block is None):
                    raise self.fail(
                        f"{i.opcode} needs exactly one of a slot or a block", loc, where
                    )
                if i.nbytes <= 0:
                    raise self.fail(f"{i.opcode} of {i.nbytes} bytes", loc, where)
                payload: object
                if i.block is not None:
                    self.block(i.block, loc)
                    payload = i.block
                elif isinstance(i, Send):
                    assert i.slot is not None
                    payload = full(i.slot, loc, "send").content
                else:
                    assert i.slot is not None
                    if i.content is None:
                        raise self.fail("recv into a slot must say what it receives", loc, where)
                    self.content_exists(i.content, loc)
                    fill(i.slot, i.content, i.nbytes, loc, "recv")
                    payload = i.content
                if isinstance(i, Send):
                    self.sends[(die, i.peer)].append(_Transfer(die, n, i, payload))
                else:
                    self.recvs[(i.peer, die)].append(_Transfer(die, n, i, payload))
            elif isinstance(i, Gemm | Act | Accum):
                s = full(i.slot, loc, i.opcode)
                if not isinstance(s.content, SliceRef):
                    raise self.fail(
                        f"{i.opcode} needs a micro-slice in s{i.slot}, found tensor {s.content}",
                        loc,
                        where,
                    )
                self.tokens_fit(self.layers[s.content.layer], i.tokens, loc)
            elif isinstance(i, Free):
                s = slot(i.slot, loc)
                if s.content is None:
                    if s.freed_at is not None:
                        raise self.fail(
                            f"double free of slot s{i.slot} on die {die} "
                            f"(already freed at {_at(s.freed_at)})",
                            loc,
                            where,
                        )
                    raise self.fail(
                        f"free of slot s{i.slot} on die {die} before it is loaded", loc, where
                    )
                assert pool is not None
                s.content, s.freed_at = None, loc
                occupied -= pool.nbytes
            elif isinstance(i, Signal | Wait):
                if isinstance(i, Wait) and i.count <= 0:
                    raise self.fail(f"wait count must be positive, found {i.count}", loc, where)
            elif isinstance(i, Dense):
                if i.island not in self.islands:
                    raise self.fail(f"undefined island {i.island}", loc, where)
                if i.flops < 0 or i.nbytes < 0:
                    raise self.fail("dense work with negative flops or bytes", loc, where)
            elif isinstance(i, MoE):
                if i.layer not in self.layers:
                    raise self.fail(f"undefined MoE layer {i.layer}", loc, where)
            else:
                raise self.fail(f"not an instruction: {i!r}", None, where)

    # --- cross-die checks ---
    def match(self) -> None:
        for key in sorted(set(self.sends) | set(self.recvs)):
            src, dst = key
            sends, recvs = self.sends.get(key, []), self.recvs.get(key, [])
            for s, r in zip(sends, recvs, strict=False):
                if s.instr.nbytes != r.instr.nbytes or s.payload != r.payload:
                    raise self.fail(
                        f"recv does not match its send (die {src} -> {dst}, at "
                        f"{_at(s.instr.loc)}): sent {_describe(s)} of {s.instr.nbytes} bytes, "
                        f"received {_describe(r)} of {r.instr.nbytes} bytes",
                        r.instr.loc,
                    )
            if len(sends) > len(recvs):
                s = sends[len(recvs)]
                raise self.fail(
                    f"send from die {src} to die {dst} has no matching recv on die {dst} "
                    f"({len(sends)} sends, {len(recvs)} recvs)",
                    s.instr.loc,
                )
            if len(recvs) > len(sends):
                r = recvs[len(sends)]
                raise self.fail(
                    f"recv on die {dst} from die {src} has no matching send on die {src} "
                    f"({len(sends)} sends, {len(recvs)} recvs)",
                    r.instr.loc,
                )

    def deadlock(self) -> None:
        streams = sorted(self.p.streams, key=lambda s: s.die)
        totals: dict[str, int] = defaultdict(int)
        for st in streams:
            for i in st.instrs:
                if isinstance(i, Signal):
                    totals[i.event] += 1
        for st in streams:
            for i in st.instrs:
                if isinstance(i, Wait) and i.count > totals[i.event]:
                    raise self.fail(
                        f"wait {i.event} count {i.count} can never complete: {i.event} is "
                        f"signalled {totals[i.event]} times in the whole program",
                        i.loc,
                    )
        pcs = [0] * len(streams)
        sent: dict[tuple[int, int], int] = defaultdict(int)
        got: dict[tuple[int, int], int] = defaultdict(int)
        signals: dict[str, int] = defaultdict(int)
        progress = True
        while progress:
            progress = False
            for k, st in enumerate(streams):
                instrs, pc, die = st.instrs, pcs[k], st.die
                while pc < len(instrs):
                    i = instrs[pc]
                    if isinstance(i, Recv):
                        ch = (i.peer, die)
                        if sent[ch] <= got[ch]:
                            break
                        got[ch] += 1
                    elif isinstance(i, Wait):
                        if signals[i.event] < i.count:
                            break
                    elif isinstance(i, Send):
                        sent[(die, i.peer)] += 1
                    elif isinstance(i, Signal):
                        signals[i.event] += 1
                    pc += 1
                if pc != pcs[k]:
                    pcs[k] = pc
                    progress = True
        blocked = [(st, pcs[k]) for k, st in enumerate(streams) if pcs[k] < len(st.instrs)]
        if blocked:
            parts = []
            for st, pc in blocked:
                i = st.instrs[pc]
                why = (
                    f"{i.event} signalled {signals[i.event]} of {i.count} times"
                    if isinstance(i, Wait)
                    else f"die {i.peer} has not sent it"
                )
                at = f" at {_at(i.loc)}" if i.loc is not None else ""
                parts.append(f"die {st.die} blocks{at} on '{instr_text(i)}' ({why})")
            first = blocked[0][0].instrs[blocked[0][1]]
            raise self.fail("deadlock: " + "; ".join(parts), first.loc)

    def run(self) -> None:
        self.declarations()
        self.runtime()
        for st in self.p.streams:
            self.walk(st.die, st.instrs)
        self.match()
        self.deadlock()


def _describe(t: _Transfer) -> str:
    if isinstance(t.payload, Block):
        b = t.payload
        return f"{b.which} {b.layer} tokens {b.tokens}"
    return str(t.payload)


def verify_program(p: Program, target: Target | None = None) -> None:
    """Raise :class:`ProgramError` (or :class:`SramError`) if ``p`` is not a valid program.

    ``target`` defaults to the one the program declares; with neither, checks that need a
    target (die and channel ranges, neighbours, SRAM size) are skipped.
    """
    try:
        _Verifier(p, target if target is not None else resolve_target(p)).run()
    except ProgramError as err:
        if p.source is not None and isinstance(err.where, Location):
            raise with_context(err, p.source) from None
        raise


def peak_sram(p: Program) -> dict[int, int]:
    """Per die, the most slot bytes the static part holds at once (no checks)."""
    pools = {s.die: s.nbytes for s in p.slots}
    out: dict[int, int] = {}
    for st in p.streams:
        size = pools.get(st.die, 0)
        held: set[int] = set()
        peak = 0
        for i in st.instrs:
            if isinstance(i, Load | Recv) and i.slot is not None:
                held.add(i.slot)
                peak = max(peak, len(held) * size)
            elif isinstance(i, Free):
                held.discard(i.slot)
        out[st.die] = peak
    return out
