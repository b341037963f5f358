"""One interpreter run: expand the runtime part, compute numbers, time the static program.

:func:`simulate` is the entry point for ``moec run``, ``moec check`` and ``moec bench``:

* **numerics** (``inputs`` given; the program must declare its weights companion): the residual
  model runs in onnx's reference evaluator and each MoE layer executes its instructions
  (:mod:`.numerics`); the routing comes from the layer's router, home dies from ``routings`` when
  given, else ``blocks``;
* **timing only** (no inputs): ``routings`` (one per MoE layer of the program, in order) drive the
  runtime expansion; a fully static program needs none.

Both take one path per MoE layer, :func:`expand_runtime`: the policy's rules rewrite the routing
(:mod:`.rules`), the strategy expands it (:mod:`.expand`), and loads of offloaded experts'
micro-slices (``annotate resident``) move to the host tier (:mod:`.offload`).

Either way the runtime part is expanded into a fully static program (``RunResult.expanded``),
which is what the timing machine (:mod:`.timing`) runs, so running ``expanded`` again gives the
same report and outputs.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moec.backends.interp.ahead import fsedp_work, scheduling
from moec.backends.interp.expand import expand_layer, layouts_for, splice
from moec.backends.interp.expand.fsedp_deferred import charge_deferred
from moec.backends.interp.layered import plan_parts, run_layered
from moec.backends.interp.numerics import check_companion, evaluate_model, load_weights
from moec.backends.interp.offload import check_declarations, offload_loads
from moec.backends.interp.online import Chosen, resolve
from moec.backends.interp.report import Report, chrome_trace, make_report
from moec.backends.interp.rules import apply_rules
from moec.backends.interp.sram import sram_overflow
from moec.backends.interp.timing import Timeline, run_timing
from moec.ir.errors import ProgramError, ScheduleError, TraceError
from moec.ir.routing import LayerRouting, RoutingTrace, validate
from moec.ir.stream.kinds import SLOT
from moec.ir.stream.opcodes import OPCODES
from moec.ir.stream.program import (
    Free,
    Instr,
    Load,
    MoE,
    MoEDecl,
    Program,
    Recv,
    Send,
    SliceLayout,
    SliceRef,
)
from moec.ir.stream.verify import named_target, verify_program
from moec.ir.target import Target


@dataclass
class RunResult:
    """What one run produced."""

    report: Report
    #: the fully static program that was timed (None: a layer-by-layer run kept none)
    expanded: Program | None
    timeline: Timeline
    routings: list[LayerRouting]
    outputs: dict[str, np.ndarray] | None = None
    chrome_trace: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def program_target(p: Program, base_dir: str | None = None) -> Target:
    """The target a program names (preset or TOML relative to ``base_dir``), with overrides;
    one that names none is an error (:func:`moec.ir.stream.verify.named_target`)."""
    target = named_target(p, base_dir)
    if target is None:
        raise ProgramError("the program names no target; pass one", p.filename)
    return target


def prepare(
    program: Program, target: Target | None, base_dir: str | None, verify: bool
) -> tuple[Target, dict[tuple[str, bool], SliceLayout]]:
    """What every run of ``program`` starts with: its target (``target``, else the one it
    names), the program verified against it (when ``verify``), its slice layouts, and each
    runtime policy's declarations checked."""
    tgt = target if target is not None else program_target(program, base_dir)
    if verify:
        verify_program(program, tgt)
    layouts = layouts_for(program, tgt)
    for r in program.runtime:
        decl = program.layer(r.layer)
        if decl is not None:
            check_declarations(program, r, decl, tgt)
    return tgt, layouts


def check_routings(
    p: Program, target: Target, routings: list[LayerRouting] | RoutingTrace, where: str = "trace"
) -> dict[str, LayerRouting]:
    """Match routings to the program's MoE layers by position; a mismatch is a TraceError."""
    trace = (
        routings
        if isinstance(routings, RoutingTrace)
        else RoutingTrace(p.name, target.num_dies, list(routings))
    )
    shapes = [(m.experts, m.top_k) for m in p.layers]
    tokens = {m.tokens for m in p.layers}
    validate(
        trace, shapes, tokens.pop() if len(tokens) == 1 else None, num_dies=target.num_dies,
        where=where,
    )  # fmt: skip
    out = {}
    for m, lr in zip(p.layers, trace.layers, strict=True):
        if lr.tokens != m.tokens:
            raise TraceError(
                f"layer {m.name} is compiled for {m.tokens} tokens, the trace has {lr.tokens}",
                where,
            )
        out[m.name] = lr
    return out


def layer_instructions(p: Program) -> dict[str, dict[int, list[Instr]]]:
    """Per MoE layer and die, the static instructions that touch the layer: loads and recvs of
    its micro-slices, its activation blocks, and any instruction whose slot operand (by the
    opcode table) holds one of its micro-slices."""
    out: dict[str, dict[int, list[Instr]]] = {m.name: {} for m in p.layers}
    slot_of = {d.cls: n for d in OPCODES.defs() for n, kind in d.operands if kind is SLOT}
    for st in p.streams:
        holds: dict[int, str] = {}
        for i in st.instrs:
            layer: str | None = None
            if isinstance(i, Load | Recv) and isinstance(i.content, SliceRef):
                layer = i.content.layer
                holds[i.slot] = layer  # type: ignore[index]
            elif isinstance(i, Send | Recv) and i.block is not None:
                layer = i.block.layer
            elif isinstance(i, Free):
                layer = holds.pop(i.slot, None)
            elif type(i) in slot_of and not isinstance(i, Load | Recv):  # a use of the slot
                layer = holds.get(getattr(i, slot_of[type(i)]))
            if layer is not None and layer in out:
                out[layer].setdefault(st.die, []).append(i)
    return out


def first_layers(p: Program, n: int) -> Program:
    """``p`` cut to its first ``n`` MoE layers: the later layers' declarations, tensors
    (``L.*``), layouts, policies and placeholders removed; dense islands and barriers kept."""
    if not 0 < n <= len(p.layers):
        raise ProgramError(f"cannot take the first {n} of {len(p.layers)} MoE layers", p.filename)
    keep = {m.name for m in p.layers[:n]}
    drop = {m.name for m in p.layers[n:]}

    def kept(i: Instr) -> bool:
        return not (isinstance(i, MoE) and i.layer in drop)

    return dataclasses.replace(
        p,
        layers=p.layers[:n],
        tensors=[t for t in p.tensors if t.name.split(".", 1)[0] not in drop],
        layouts=[lay for lay in p.layouts if lay.layer in keep],
        runtime=[r for r in p.runtime if r.layer in keep],
        streams=[
            dataclasses.replace(st, instrs=[i for i in st.instrs if kept(i)]) for st in p.streams
        ],
        source=None,
    )


def expand_runtime(
    p: Program,
    target: Target,
    m: MoEDecl,
    routing: LayerRouting,
    layouts: dict[tuple[str, bool], SliceLayout],
    chosen: dict[str, Chosen] | None = None,
) -> tuple[LayerRouting, dict[int, list[Instr]]]:
    """One MoE layer's runtime part for ``routing``: an online policy picks its alternative
    (:func:`~.online.resolve`, recorded in ``chosen``), the policy's rules rewrite the routing
    (:func:`~.rules.apply_rules`), the strategy expands it, offloaded experts load from the host
    (:func:`~.offload.offload_loads`). Returns the rewritten routing and the per-die
    instructions; the numerics and the timing-only run both come through here."""
    p, pick = resolve(p, m.name, routing, target.num_dies)
    if pick is not None and chosen is not None:
        chosen[m.name] = pick
    r = apply_rules(p, target, m.name, routing)
    per_die = expand_layer(p, target, m, r, layouts[(m.name, False)], layouts.get((m.name, True)))
    return r, offload_loads(per_die, p.policy(m.name), m)


def check_fit(tl: Timeline, target: Target, program: Program, allow_overflow: bool) -> None:
    """SRAM is a hard limit: a run whose peak (slots and activations) exceeds a die's SRAM is a
    one-line :class:`ScheduleError` (:func:`~.sram.sram_overflow`) located at the program's file
    (its name when it has none), unless the overflow is allowed; then the timeline's
    ``sram_over_bytes`` says by how much."""
    why = sram_overflow(target, tl.peak_sram, tl.peak_sram_slots, tl.peak_sram_activations)
    if why is not None and not allow_overflow:
        where = program.filename if program.filename != "<string>" else program.name
        raise ScheduleError(why, where)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block, restored after.

    A run allocates millions of small, long-lived objects (instructions, ops, edges) and no
    reference cycles worth collecting; each collection of the older generations rescans them
    all, which made a whole-model run's time grow faster than its number of layers (issue 19:
    175 s with the collector, 79 s without, same reports). Nested uses are safe."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def simulate(
    program: Program,
    *,
    target: Target | None = None,
    routings: list[LayerRouting] | RoutingTrace | None = None,
    inputs: dict[str, np.ndarray] | None = None,
    base_dir: str | None = None,
    record_trace: bool = False,
    verify: bool = True,
    verified: bool = False,
    allow_overflow: bool = False,
    layered: bool = False,
    until_layer: str | None = None,
    limit: float | None = None,
) -> RunResult:
    """Run ``program``: numerics when ``inputs`` are given, timing always (see module doc).

    ``verify``: check the program and the expanded program (:func:`verify_program`);
    ``verified``: the caller has already checked ``program`` against this target, so only the
    expanded program is checked. A run whose slots and activations together exceed a die's
    SRAM is a :class:`ScheduleError` unless ``allow_overflow`` (then the report carries
    ``sram_over_bytes``).

    ``layered``: time the program one layer at a time (:mod:`.layered`; memory flat in the
    number of layers, same report) when it has that shape and no trace is asked for; the
    result then has no expanded program (``expanded`` is None) and its timeline no per-op
    data (``timeline.summary`` instead).

    ``until_layer`` (a layered timing-only run): time only the parts up to and including the one
    holding that MoE layer; the report covers those parts alone (a compiler measuring one
    layer of a whole model, e.g. ``moec.fsedp_slices``). Ignored by a run that is not layered.

    ``limit`` (a timing-only run): stop with :class:`~.event_loop.PastLimit` as soon as the
    first MoE layer's latency is provably above ``limit`` seconds (a compiler that only needs
    to know whether a candidate beats its fastest so far, e.g. ``moec.fsedp_slices``)."""
    with gc_paused():
        return _simulate(
            program, target, routings, inputs, base_dir, record_trace, verify, verified,
            allow_overflow, layered, until_layer, limit,
        )  # fmt: skip


def _run_parts(
    program: Program,
    tgt: Target,
    layouts: dict[tuple[str, bool], SliceLayout],
    given: dict[str, LayerRouting],
    verify: bool,
    allow_overflow: bool,
    chosen: dict[str, Chosen],
    until_layer: str | None = None,
    limit: float | None = None,
) -> tuple[Timeline | None, list[LayerRouting]]:
    """A timing-only run layer by layer (:func:`~.layered.run_layered`), each layer expanded
    when its part is timed; (None, []) when the program is not cut that way. With
    ``until_layer`` only the parts up to the one holding that layer are timed."""
    parts = plan_parts(program)
    if parts is None:
        return None, []
    if until_layer is not None:
        last = next((j for j, pt in enumerate(parts) if until_layer in pt.layers), None)
        if last is not None:
            parts = parts[: last + 1]
            timed = {n for pt in parts for n in pt.layers}
            given = {k: v for k, v in given.items() if k in timed}
    rewritten: dict[str, LayerRouting] = {}

    def expansion(name: str) -> dict[int, list[Instr]]:
        m, r = program.layer(name), given.get(name)
        if m is None or r is None or program.policy(name) is None:
            return {}
        rewritten[name], per_die = expand_runtime(program, tgt, m, r, layouts, chosen)
        return per_die

    verify_parts = verify and not program.is_static
    # the FSE-DP layers ahead: the scheduler may play the first with its kernel (same numbers)
    with scheduling(fsedp_work(program, tgt, layouts, given)):
        tl = run_layered(
            program, tgt, parts, layouts, expansion, verify_parts, allow_overflow, limit
        )  # fmt: skip
    used = [rewritten.get(m.name, given[m.name]) for m in program.layers if m.name in given]
    return tl, used


def _simulate(
    program: Program,
    target: Target | None,
    routings: list[LayerRouting] | RoutingTrace | None,
    inputs: dict[str, np.ndarray] | None,
    base_dir: str | None,
    record_trace: bool,
    verify: bool,
    verified: bool,
    allow_overflow: bool,
    layered: bool,
    until_layer: str | None = None,
    limit: float | None = None,
) -> RunResult:
    tgt, layouts = prepare(program, target, base_dir, verify and not verified)
    expansions: dict[str, dict[int, list[Instr]]] = {}
    outputs: dict[str, np.ndarray] | None = None
    tl: Timeline | None = None
    given = check_routings(program, tgt, routings) if routings is not None else None
    static_parts: dict[str, dict[int, list[Instr]]] = {}
    chosen: dict[str, Chosen] = {}  # online choice: the alternative each layer ran

    def instructions(name: str, r: LayerRouting) -> tuple[LayerRouting, dict[int, list[Instr]]]:
        m = program.layer(name)
        if m is None:
            raise ProgramError(f"the weights have MoE layer {name}, the program does not")
        if program.policy(name) is None:
            return r, static_parts.setdefault(name, {})
        r, expansions[name] = expand_runtime(program, tgt, m, r, layouts, chosen)
        return r, expansions[name]

    if inputs is not None:
        model = load_weights(program, base_dir)
        weight_layers = check_companion(program, model)
        static_parts.update(layer_instructions(program))
        home = {k: v.home_die for k, v in given.items()} if given else None
        outputs, used = evaluate_model(
            model, weight_layers, inputs, num_dies=tgt.num_dies,
            tokens={m.name: m.tokens for m in program.layers}, layouts=layouts,
            instructions=instructions, home_die=home, where=program.filename,
        )  # fmt: skip
        by_name = {r.name: r for r in used}
        missing = [m.name for m in program.layers if m.name not in by_name]
        if missing:
            raise ProgramError(f"the weights model never runs MoE layer {missing[0]}")
        used = [by_name[m.name] for m in program.layers]
    else:
        if given is None:
            if not program.is_static:
                raise TraceError(
                    "the program has a runtime part: give a routing (a trace, or synthetic) "
                    "or inputs",
                    program.filename,
                )
            given = {}
        if layered and not record_trace:
            tl, used = _run_parts(
                program, tgt, layouts, given, verify, allow_overflow, chosen, until_layer, limit
            )
        if tl is None:
            used = []
            for m in program.layers:
                r = given.get(m.name)
                if r is not None:
                    used.append(instructions(m.name, r)[0])
    if tl is None and layered and not record_trace and inputs is not None:
        parts = plan_parts(program)
        if parts is not None:
            tl = run_layered(
                program, tgt, parts, layouts, lambda name: expansions.get(name, {}),
                verify and not program.is_static, allow_overflow,
            )  # fmt: skip
    expanded: Program | None = None
    if tl is None:  # the reference: the whole expanded program in one run
        expanded = program if program.is_static else splice(program, expansions, layouts)
        if verify and expanded is not program:
            verify_program(expanded, tgt)
        tl = run_timing(expanded, tgt, limit=limit)
        charge_deferred(expanded, tl)  # token-buffered pairs belong to the next iteration
        expanded = dataclasses.replace(expanded, filename=program.filename)
    check_fit(tl, tgt, program, allow_overflow)
    report = make_report(tl, program.name)
    report.extra.update(tl.extra)
    if chosen:
        report.extra["online_choice"] = {
            m.name: chosen[m.name].to_dict() for m in program.layers if m.name in chosen
        }
    report.tokens = program.layers[0].tokens if program.layers else 0
    trace = chrome_trace(tl) if record_trace else None
    return RunResult(report, expanded, tl, used, outputs, trace)
