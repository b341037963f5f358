"""Check a stream program before anyone runs it.

:func:`verify_program` raises :class:`ProgramError` at the offending item's ``file:line:col``:

* every referenced tensor, layer, layout, slice, island, slot, die, channel and event exists;
* each die's slots are loaded (or received) before use, not loaded while occupied, and freed at
  most once per load;
* per-die SRAM planned by the static part (occupied slots x slot size) never exceeds the target's
  SRAM (:class:`SramError`, also a :class:`ScheduleError`, "does not fit SRAM"); activations are
  not checked here: their lifetimes depend on timing, so the compiler reserves room for them
  (``compiler/lower/slots.py``) and the interpreter charges them (``docs/isa.md``, "SRAM");
* the k-th ``send`` from die a to die b matches the k-th ``recv`` on b from a (same bytes, same
  payload) and a, b are neighbours on the target;
* the static synchronization cannot deadlock: sends never block, a ``recv`` waits for its send, a
  ``wait`` for its count of ``signal``s; an abstract run of all dies must reach every stream's end.

The runtime part is checked for consistency (one policy per layer, tables sized by expert count,
strategy parameters typed: :func:`moec.ir.stream.params.strategy_params`); what the expansion
does at a ``moe`` placeholder is the interpreter's business: it may use only the slots that are
free there and must leave them free.

The per-die walk is table-driven: each instruction's operands must fit one of its text forms,
each operand passes its kind's check, then the constraints its declaration lists run
(:mod:`.constraints`, :mod:`.opcodes`); one check function per instruction class is compiled
from the table. The cross-die checks (send/recv matching, deadlock) follow.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from moec.ir.cost import bytes_per_element
from moec.ir.errors import Location, ProgramError, ScheduleError, TargetError
from moec.ir.stream.constraints import (
    DTYPES,
    KIND_CHECKS,
    Context,
    DieWalk,
    SramError,
    Transfer,
    at,
)
from moec.ir.stream.layouts import free_slots_by_layer, largest_slice, layouts_for
from moec.ir.stream.online import check_online, policies_of
from moec.ir.stream.opcodes import OPCODES, OpDef, generate
from moec.ir.stream.params import SKIP_RULES, StrategyParams, strategy_params
from moec.ir.stream.printer import instr as instr_text
from moec.ir.stream.program import (
    Block,
    Free,
    Instr,
    Load,
    MoE,
    Program,
    Recv,
    RuntimePolicy,
    Send,
    Signal,
    SliceLayout,
    Wait,
)
from moec.ir.target import Target, load_target

__all__ = [
    "DTYPES", "SramError", "named_target", "peak_sram", "resolve_target", "verify_fit",
    "verify_program",
]  # fmt: skip

#: The largest MoE layer a program may declare (far above any published model: DeepSeek-V3 has
#: 256 experts, hidden 7168), so that a typo or a corrupt number is an error, not an allocation
#: of terabytes.
LAYER_LIMITS = {
    "experts": 1 << 16, "top_k": 1 << 10, "hidden": 1 << 20, "ffn": 1 << 22,
    "shared_ffn": 1 << 22, "tokens": 1 << 24,
}  # fmt: skip

#: ``check(walk, instr)``: every check of one instruction, in order
_Check = Callable[[DieWalk, Any], None]


def named_target(p: Program, base_dir: str | None = None) -> Target | None:
    """The target the program names (a TOML file relative to ``base_dir``, by default the
    program file's folder), with its overrides; None when it names none. A bad one raises
    :func:`~moec.ir.target.load_target`'s :class:`TargetError`."""
    if p.target is None:
        return None
    base = base_dir
    if base is None and os.path.exists(p.filename):
        base = os.path.dirname(os.path.abspath(p.filename))
    return load_target(p.target.spec, dict(p.target.overrides), base_dir=base)


def resolve_target(p: Program) -> Target | None:
    """:func:`named_target`, a bad target being a :class:`ProgramError` at the program's
    ``target`` line (the verifier's view)."""
    try:
        return named_target(p)
    except TargetError as err:
        where = p.target.loc if p.target is not None and p.target.loc is not None else p.filename
        raise ProgramError(f"bad target: {err.message}", where) from None


def _compile(d: OpDef) -> _Check:
    """One function running an instruction's checks: its operands fit one of its forms, each
    operand passes its kind's check, then the declared constraints. Generated per instruction
    (e.g. ``_k0(w, i.slot, loc, "gemm"); _k1(w, i.tokens, loc, "gemm"); _c0(w, i)``)."""
    env: dict[str, Any] = {"d": d, "fits_none": _fits_none, "forms": set(d.by_presence)}
    body = ["loc = i.loc"]
    always = frozenset.intersection(*(f.fields for f in d.forms))
    if len(d.forms) > 1 or always != {n for n, _ in d.operands}:
        given = ", ".join(f"i.{n} is not None" for n, _ in d.operands)
        body.append(f"if ({given},) not in forms: raise fits_none(w, d, i)")
    for k, (n, kind) in enumerate(d.operands):
        if KIND_CHECKS[kind] is None:
            continue
        env[f"_k{k}"] = KIND_CHECKS[kind]
        call = f"_k{k}(w, i.{n}, loc, {d.opcode!r})"
        body.append(call if n in always else f"if i.{n} is not None: {call}")
    for k, c in enumerate(d.constraints):
        env[f"_c{k}"] = c
        body.append(f"_c{k}(w, i)")
    return generate("check", "w, i", body, env)


def _fits_none(w: DieWalk, d: OpDef, i: Any) -> ProgramError:
    given = ", ".join(n for n, _ in d.operands if getattr(i, n) is not None)
    return w.fail(
        f"{d.opcode} with operands {given} fits none of its forms, expected: {d.usage()}", i.loc
    )


_checks: tuple[int, dict[type, _Check]] = (-1, {})


def _instruction_checks() -> dict[type, _Check]:
    """Per instruction class, its compiled checks (rebuilt when the opcode table changes)."""
    global _checks
    if _checks[0] != OPCODES.version:
        _checks = (OPCODES.version, {d.cls: _compile(d) for d in OPCODES.defs()})
    return _checks[1]


class _Verifier(Context):
    def unique(self, kind: str, items: list[tuple[object, Location | None]]) -> None:
        seen: dict[object, Location | None] = {}
        for key, loc in items:
            if key in seen:
                raise self.fail(f"{kind} {key} declared twice (first at {at(seen[key])})", loc)
            seen[key] = loc

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
            if t.shape and t.dtype in DTYPES:
                # the bytes hold the shape's elements, plus biases that ride with the weights
                # (an expert's biases are smaller than its weights)
                held = math.ceil(math.prod(t.shape) * bytes_per_element(t.dtype))
                if held == 0 or not held <= t.nbytes <= 2 * held:
                    raise self.fail(
                        f"tensor {t.name}: shape {list(t.shape)} of {t.dtype} holds {held} bytes, "
                        f"it declares {t.nbytes} (expected {held} to {2 * held}: the weights "
                        "plus their biases)",
                        t.loc,
                    )
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
            for key, limit in LAYER_LIMITS.items():
                if getattr(m, key) > limit:
                    raise self.fail(
                        f"MoE layer {m.name}: {key}={getattr(m, key)} is above moec's limit of "
                        f"{limit}",
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
        layouts: dict[tuple[str, bool], SliceLayout] | None = None
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
                    self.dtype(d, r.precision_loc or r.loc)
            for k, vals in r.annotations.items():
                if len(vals) != layer.experts:
                    raise self.fail(
                        f"annotation {k} of {r.layer} has {len(vals)} values, "
                        f"expected {layer.experts} (one per expert)",
                        r.loc,
                    )
            if r.skip is not None:
                if r.skip.rule not in SKIP_RULES:
                    raise self.fail(
                        f"runtime {r.layer}: unknown skip rule {r.skip.rule!r}, "
                        f"expected one of {', '.join(SKIP_RULES)}",
                        r.skip.loc or r.loc,
                    )
                if not 0.0 <= r.skip.threshold <= 1.0:  # also false for NaN
                    raise self.fail(
                        f"runtime {r.layer}: skip threshold must be in 0..1, "
                        f"found {r.skip.threshold:g}",
                        r.skip.loc or r.loc,
                    )
            check_online(r, f"{self.p.filename}: runtime {r.layer}")
            if layouts is None:  # once, where the first layer's parameters ask for them
                layouts = layouts_for(self.p)
            for alt in policies_of(r):
                strategy_params(alt, layer, self.t, layouts, self.p.filename)
        policies = {r.layer for r in self.p.runtime}
        for layer_name, (die, loc) in placed.items():
            if layer_name not in policies:
                raise self.fail(
                    f"moe {layer_name} on die {die} has no runtime policy "
                    f"(expected 'runtime {layer_name} {{ ... }}')",
                    loc,
                )

    def capacity(self) -> None:
        """What each runtime part will need where it runs: a placeholder on every die with the
        slots it takes free, pools that fit SRAM, micro-slices that fit a slot."""
        if not self.p.runtime:
            return
        layouts = layouts_for(self.p)
        # one walk of the streams for every layer's placeholders and free slots (not one per
        # runtime part: that was quadratic in the layers of a whole-model program)
        places: dict[tuple[int, str], list[MoE]] = defaultdict(list)
        for st in self.p.streams:
            for i in st.instrs:
                if isinstance(i, MoE):
                    places[(st.die, i.layer)].append(i)
        free = free_slots_by_layer(self.p)
        for r in (alt for pol in self.p.runtime for alt in policies_of(pol)):
            layer = self.layers[r.layer]
            params = strategy_params(r, layer, self.t, layouts, self.p.filename)
            self.pools_fit(r)
            self.placeholders(r, layer.name, params, places, free.get(layer.name, {}))
            need, what = largest_slice(layer, r, params, layouts)
            smallest = min((s.nbytes for s in self.p.slots), default=0)
            if need > smallest:
                raise ScheduleError(
                    f"does not fit SRAM: a micro-slice of layer {layer.name} {what} needs {need} "
                    f"bytes, the smallest buffer slot holds {smallest}",
                    r.loc or self.p.filename,
                )

    def pools_fit(self, r: RuntimePolicy) -> None:
        """A runtime part may fill every free slot: each die's whole pool must fit its SRAM."""
        if self.t is None:
            return
        for pool in self.p.slots:
            if 0 <= pool.die < self.t.num_dies:
                sram = self.t.dies[pool.die].sram_bytes
                if pool.count * pool.nbytes > sram:
                    raise SramError(
                        f"does not fit SRAM: die {pool.die} declares {pool.count} slots of "
                        f"{pool.nbytes} bytes ({pool.count * pool.nbytes} bytes), which runtime "
                        f"{r.layer} may fill; target {self.t.name} has {sram} bytes per die",
                        pool.loc or self.p.filename,
                    )

    def placeholders(
        self, r: RuntimePolicy, layer: str, params: StrategyParams | None,
        placed: dict[tuple[int, str], list[MoE]], free: dict[int, list[int]],
    ) -> None:  # fmt: skip
        """Every die stream places ``layer`` exactly once, with a slot free there: the runtime
        expansion puts instructions on every die and needs a slot on each. ``placed`` holds
        each (die, layer)'s ``moe`` placeholders, ``free`` the slots free at this layer's."""
        streams = {st.die: st for st in self.p.streams}
        dies = range(self.t.num_dies) if self.t is not None else sorted(streams)
        for die in dies:
            st = streams.get(die)
            places = [] if st is None else placed.get((die, layer), [])
            if len(places) != 1:
                where = places[1].loc if len(places) > 1 else (st.loc if st is not None else r.loc)
                found = (
                    "no die stream" if st is None else f"{len(places)} 'moe {layer}' placeholders"
                )
                raise self.fail(
                    f"die {die} must place 'moe {layer}' exactly once (its runtime part runs on "
                    f"every die), found {found}",
                    where,
                )
            need = params.min_free_slots(len(dies)) if params is not None else 1
            if len(free.get(die, [])) < need:
                raise ScheduleError(
                    f"does not fit SRAM: die {die} has {len(free.get(die, []))} free buffer "
                    f"slots at 'moe {layer}', strategy {r.strategy} needs {need} there",
                    places[0].loc or self.p.filename,
                )

    # --- the per-die walk ---
    def walk(self, die: int, instrs: list[Instr]) -> None:
        checks = _instruction_checks()
        w = DieWalk(self, die)
        for n, i in enumerate(instrs):
            check = checks.get(type(i))
            if check is None:
                raise self.fail(f"not an instruction: {i!r}", None, w.where)
            w.index = n
            check(w, i)

    # --- cross-die checks ---
    def match(self) -> None:
        for key in sorted(set(self.sends) | set(self.recvs)):
            src, dst = key
            sends, recvs = self.sends.get(key, []), self.recvs.get(key, [])
            for s, r in zip(sends, recvs, strict=False):
                if s.instr.nbytes != r.instr.nbytes or s.payload != r.payload:
                    raise self.fail(
                        f"recv does not match its send (die {src} -> {dst}, at "
                        f"{at(s.instr.loc)}): sent {_describe(s)} of {s.instr.nbytes} bytes, "
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
        # A runtime part may exchange data between every pair of dies: model each layer's
        # placeholders as a barrier that opens once every die placing the layer reached it.
        placing: dict[str, int] = defaultdict(int)
        for st in streams:
            for name in {i.layer for i in st.instrs if isinstance(i, MoE)}:
                placing[name] += 1
        arrived: dict[str, set[int]] = defaultdict(set)
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
                    elif isinstance(i, MoE):
                        arrived[i.layer].add(die)
                        if len(arrived[i.layer]) < placing[i.layer]:
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
                if isinstance(i, Wait):
                    why = f"{i.event} signalled {signals[i.event]} of {i.count} times"
                elif isinstance(i, MoE):
                    why = (
                        f"its runtime part spans all dies; {len(arrived[i.layer])} of "
                        f"{placing[i.layer]} reached it"
                    )
                else:
                    why = f"die {i.peer} has not sent it"
                when = f" at {at(i.loc)}" if i.loc is not None else ""
                parts.append(f"die {st.die} blocks{when} on '{instr_text(i)}' ({why})")
            first = blocked[0][0].instrs[blocked[0][1]]
            raise self.fail("deadlock: " + "; ".join(parts), first.loc)

    def run(self) -> None:
        self.declarations()
        self.runtime()
        self.fits()
        self.match()
        self.deadlock()

    def fits(self) -> None:
        """The per-die walk (static SRAM among its checks) and each runtime part's needs."""
        for st in self.p.streams:
            self.walk(st.die, st.instrs)
        self.capacity()


def _describe(t: Transfer) -> str:
    if isinstance(t.payload, Block):
        b = t.payload
        return f"{b.which} {b.layer} tokens {b.tokens}"
    return str(t.payload)


def verify_program(p: Program, target: Target | None = None) -> None:
    """Raise :class:`ProgramError` (or :class:`SramError`) if ``p`` is not a valid program.

    ``target`` defaults to the one the program declares; with neither, checks that need a
    target (die and channel ranges, neighbours, SRAM size) are skipped.
    """
    _checked(p, target, _Verifier.run)


def _checked(p: Program, target: Target | None, checks: Callable[[_Verifier], None]) -> None:
    """Run ``checks`` on ``p``, a :class:`ProgramError` located in its source text shown there."""
    try:
        checks(_Verifier(p, target if target is not None else resolve_target(p)))
    except ProgramError as err:
        if p.source is not None and isinstance(err.where, Location):
            # imported here: the diagnostics import Lark, which a run that parses nothing skips
            from moec.ir.stream.diagnostics import with_context

            raise with_context(err, p.source) from None
        raise


def verify_fit(p: Program, target: Target | None = None) -> None:
    """The checks of :func:`verify_program` that decide whether a well-formed program fits its
    target: the per-die walk (static SRAM, :class:`SramError`, and every instruction's
    operands) and what each runtime part needs where it runs (:class:`ScheduleError`), without
    the declarations, the runtime policies' tables and parameters, send/recv matching and the
    deadlock search. For a compiler that lowers several candidates of one program and keeps
    one (``moec.fsedp_slices``): on a program that passes those other checks it raises exactly
    when :func:`verify_program` does; the candidate kept is then verified in full."""
    _checked(p, target, _Verifier.fits)


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
