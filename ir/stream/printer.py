"""Print a :class:`~moec.ir.stream.program.Program` as canonical ``.msp`` text.

Canonical means: one fixed layout (header, target, weights, tensors, MoE layers, layouts, slot
pools, islands, die streams, runtime policies; each list in the program's order), two-space
indentation, names bare when they lex as names and JSON-quoted otherwise, floats as Python's
shortest round-tripping ``repr``. So ``print_program(parse_program(print_program(p)))`` is
byte-identical to ``print_program(p)``.
"""

from __future__ import annotations

import json
import math
import re

from moec.ir.errors import ProgramError
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
    RuntimePolicy,
    Send,
    Signal,
    SliceRef,
    TokenSet,
    Value,
    Wait,
)

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_KEY_RE = _NAME_RE
#: Bare words that would lex as something else right after a name: printed quoted.
RESERVED = re.compile(
    r"s[0-9]+|ch[0-9]+|[xy]|true|false|tokens|cols|bytes|flops|count|shared|threshold|sha256"
    r"|moec|program|target|weights|tensor|moe|layout|slots|island|die|runtime|strategy|param"
    r"|precision|skip|annotate|load|send|recv|gemm|act|accum|free|signal|wait|dense|host"
)


def string(s: str) -> str:
    """A string literal (JSON escaping)."""
    return json.dumps(s, ensure_ascii=False)


def name(s: str) -> str:
    """A name, bare when it lexes as one, quoted otherwise."""
    return s if _NAME_RE.fullmatch(s) and not RESERVED.fullmatch(s) else string(s)


def key(s: str) -> str:
    if not _KEY_RE.fullmatch(s):
        raise ProgramError(f"parameter key {s!r} is not a valid name ([A-Za-z_][A-Za-z0-9_.-]*)")
    return s


def number(v: int | float) -> str:
    if isinstance(v, bool):
        raise ProgramError(f"expected a number, found {v!r}")
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ProgramError(f"cannot print non-finite number {v!r}")
        return repr(v)
    return str(v)


def value(v: Value) -> str:
    """A typed value: ``true``/``false``, int, float, string, or ``[v, ...]``."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return number(v)
    if isinstance(v, str):
        return string(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(value(x) for x in v) + "]"
    raise ProgramError(f"cannot print value {v!r} of type {type(v).__name__}")


def tokens(ts: TokenSet) -> str:
    if not ts:
        raise ProgramError("cannot print an empty token set")
    return ts.text()


def channel(ch: int) -> str:
    """A channel operand: ``ch3``, or ``host`` for :data:`HOST_CHANNEL`."""
    return "host" if ch == HOST_CHANNEL else f"ch{ch}"


def content(c: Content) -> str:
    if isinstance(c, SliceRef):
        e = "sh" if c.expert is None else f"e{c.expert}"
        return f"{name(c.layer)}:{e}:s{c.slice}"
    return name(c.name)


def _block(b: Block) -> str:
    return f"{b.which} {name(b.layer)} tokens {tokens(b.tokens)}"


def instr(i: Instr) -> str:
    """One instruction, without indentation."""
    if isinstance(i, Load):
        return f"load s{i.slot} <- {channel(i.channel)} {content(i.content)} bytes {i.nbytes}"
    if isinstance(i, Send):
        if i.block is not None:
            return f"send {_block(i.block)} -> {i.peer} bytes {i.nbytes}"
        return f"send s{i.slot} -> {i.peer} bytes {i.nbytes}"
    if isinstance(i, Recv):
        if i.block is not None:
            return f"recv {_block(i.block)} <- {i.peer} bytes {i.nbytes}"
        if i.content is None:
            raise ProgramError(f"recv into slot s{i.slot} has no content", i.loc)
        return f"recv s{i.slot} <- {i.peer} {content(i.content)} bytes {i.nbytes}"
    if isinstance(i, Gemm | Act | Accum):
        return f"{i.opcode} s{i.slot} tokens {tokens(i.tokens)}"
    if isinstance(i, Free):
        return f"free s{i.slot}"
    if isinstance(i, Signal):
        return f"signal {name(i.event)}"
    if isinstance(i, Wait):
        return f"wait {name(i.event)} count {i.count}"
    if isinstance(i, Dense):
        return f"dense {name(i.island)} flops {i.flops} bytes {i.nbytes}"
    if isinstance(i, MoE):
        return f"moe {name(i.layer)}"
    raise ProgramError(f"cannot print instruction {i!r}")


def _moe_decl(m: MoEDecl) -> str:
    fields = [
        f"experts = {m.experts}",
        f"top_k = {m.top_k}",
        f"hidden = {m.hidden}",
        f"ffn = {m.ffn}",
        f"shared_ffn = {m.shared_ffn}",
        f"gated = {value(m.gated)}",
        f"dtype = {string(m.dtype)}",
        f"tokens = {m.tokens}",
        f"input = {string(m.input)}",
        f"output = {string(m.output)}",
    ]
    return f"moe {name(m.name)} {{ {', '.join(fields)} }}"


def _runtime(r: RuntimePolicy) -> list[str]:
    out = [f"runtime {name(r.layer)} {{", f"  strategy {name(r.strategy)}"]
    for k in sorted(r.params):
        out.append(f"  param {key(k)} = {value(r.params[k])}")
    if r.precision:
        out.append(f"  precision [{', '.join(name(p) for p in r.precision)}]")
    if r.skip is not None:
        out.append(f"  skip {name(r.skip.rule)} threshold {number(float(r.skip.threshold))}")
    for k in sorted(r.annotations):
        out.append(f"  annotate {key(k)} = {value(list(r.annotations[k]))}")
    out.append("}")
    return out


def print_program(p: Program) -> str:
    """The canonical text of ``p`` (ends with a newline)."""
    out = [f"moec {p.version}", f"program {string(p.name)}"]
    decls: list[str] = []
    if p.target is not None:
        if p.target.overrides:
            kvs = ", ".join(f"{key(k)} = {value(v)}" for k, v in p.target.overrides)
            decls.append(f"target {string(p.target.spec)} {{ {kvs} }}")
        else:
            decls.append(f"target {string(p.target.spec)}")
    if p.weights is not None:
        decls.append(f"weights {string(p.weights.path)} sha256 {string(p.weights.sha256)}")
    if decls:
        out += ["", *decls]
    if p.tensors:
        out.append("")
        for t in p.tensors:
            shape = ", ".join(str(d) for d in t.shape)
            out.append(
                f"tensor {name(t.name)} {name(t.dtype)} [{shape}] {channel(t.channel)} bytes {t.nbytes}"
            )
    if p.layers or p.layouts:
        out.append("")
        out += [_moe_decl(m) for m in p.layers]
        for lay in p.layouts:
            cols = TokenSet(tuple((a, b - 1) for a, b in lay.columns))
            shared = " shared" if lay.shared else ""
            out.append(f"layout {name(lay.layer)}{shared} cols {tokens(cols)}")
    if p.slots:
        out.append("")
        out += [f"slots die {s.die} count {s.count} bytes {s.nbytes}" for s in p.slots]
    if p.islands:
        out.append("")
        out += [f"island {name(i.name)} flops {i.flops} bytes {i.nbytes}" for i in p.islands]
    for s in p.streams:
        out += ["", f"die {s.die} {{"]
        out += [f"  {instr(i)}" for i in s.instrs]
        out.append("}")
    for r in p.runtime:
        out.append("")
        out += _runtime(r)
    return "\n".join(out) + "\n"
