"""Print a :class:`~moec.ir.stream.program.Program` as canonical ``.msp`` text.

Canonical means: one fixed layout (header, target, weights, tensors, MoE layers, layouts, slot
pools, islands, die streams, runtime policies; each list in the program's order), two-space
indentation, names bare when they lex as names and JSON-quoted otherwise, floats as Python's
shortest round-tripping ``repr``. So ``print_program(parse_program(print_program(p)))`` is
byte-identical to ``print_program(p)``. Instructions are printed in the text form their
declaration gives (:mod:`.opcodes`): one f-string per form, generated from the table.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from typing import Any

from moec.ir.errors import ProgramError
from moec.ir.stream.kinds import channel_text, content_text, tokens_text
from moec.ir.stream.online import choice_text
from moec.ir.stream.opcodes import OPCODES, Form, OpDef, generate
from moec.ir.stream.program import (
    Content,
    MoEDecl,
    Program,
    RuntimePolicy,
    TokenSet,
    Value,
)

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_KEY_RE = _NAME_RE
#: Bare words that would lex as something else right after a name (besides every opcode and
#: every operand keyword of the opcode table): printed quoted.
_RESERVED_WORDS = (
    r"s[0-9]+|ch[0-9]+|[xy]|true|false|tokens|cols|bytes|flops|count|shared|threshold|sha256"
    r"|moec|program|target|weights|tensor|moe|layout|slots|island|die|runtime|strategy|param"
    r"|precision|skip|annotate|host|when|and|use|otherwise|alternative"
)


class _Printing:
    """What the printer derives from the opcode table (rebuilt when the table changes)."""

    def __init__(self) -> None:
        words = set(OPCODES)
        for d in OPCODES.defs():
            for f in d.forms:
                words |= {p.keyword for p in f.parts if p.keyword and p.keyword.isalpha()}
        self.version = OPCODES.version
        self.reserved = re.compile("|".join([_RESERVED_WORDS, *sorted(words)]))
        self.by_class: dict[type, Callable[[Any], str]] = {
            d.cls: self._instr_printer(d) for d in OPCODES.defs()
        }

    def _instr_printer(self, d: OpDef) -> Callable[[Any], str]:
        emit = {key: _form_printer(f) for key, f in d.by_presence.items()}
        if len(d.forms) == 1 and len(d.forms[0].parts) == len(d.operands):
            return next(iter(emit.values()))
        names = [n for n, _ in d.operands]

        def choose(i: Any) -> str:
            fn = emit.get(tuple(getattr(i, n) is not None for n in names))
            if fn is None:
                given = ", ".join(n for n in names if getattr(i, n) is not None)
                raise ProgramError(
                    f"cannot print {d.opcode!r}: its operands {given} fit none of its forms, "
                    f"expected: {d.usage()}",
                    i.loc,
                )
            return fn(i)

        return choose


def _form_printer(form: Form) -> Callable[[Any], str]:
    """One f-string per form, e.g. ``f"gemm s{i.slot} tokens {_t1(i.tokens, _name)}"``."""
    env: dict[str, Any] = {"_name": name}
    pieces = [form.opcode]
    for k, p in enumerate(form.parts):
        if p.kind.inline is not None:
            value = p.kind.inline.replace("{}", "{i." + p.field + "}")
        else:
            env[f"_t{k}"] = p.kind.text
            value = "{_t" + str(k) + "(i." + p.field + ", _name)}"
        pieces.append(f"{p.keyword} {value}" if p.keyword else value)
    return generate("emit", "i", [f"return f{' '.join(pieces)!r}"], env)


_printing: _Printing | None = None


def printing() -> _Printing:
    """The printer's tables for the current opcode table."""
    global _printing
    if _printing is None or _printing.version != OPCODES.version:
        _printing = _Printing()
    return _printing


def reserved() -> re.Pattern[str]:
    """Words a name may not be printed bare as (keywords, opcodes, ``s3``, ``ch0``, ...)."""
    return printing().reserved


def string(s: str) -> str:
    """A string literal (JSON escaping)."""
    return json.dumps(s, ensure_ascii=False)


def name(s: str) -> str:
    """A name, bare when it lexes as one, quoted otherwise."""
    return s if _NAME_RE.fullmatch(s) and not printing().reserved.fullmatch(s) else string(s)


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
    return tokens_text(ts)


def channel(ch: int) -> str:
    """A channel operand: ``ch3``, or ``host`` for :data:`HOST_CHANNEL`."""
    return channel_text(ch)


def content(c: Content) -> str:
    return content_text(c, name)


def instr(i: Any) -> str:
    """One instruction, without indentation, in the form its declaration gives."""
    fn = printing().by_class.get(type(i))
    if fn is None:
        raise ProgramError(f"cannot print instruction {i!r}: not a declared instruction")
    return fn(i)


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
    out += [f"  {choice_text(ch)}" for ch in r.choices]
    for i, alt in enumerate(r.alternatives):
        out += [f"  alternative {i} {{", f"    strategy {name(alt.strategy)}"]
        out += [f"    param {key(k)} = {value(alt.params[k])}" for k in sorted(alt.params)]
        out.append("  }")
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
        by_class = printing().by_class
        try:
            out += [f"  {by_class[type(i)](i)}" for i in s.instrs]
        except KeyError:
            out += [f"  {instr(i)}" for i in s.instrs]  # names the undeclared one
        out.append("}")
    for r in p.runtime:
        out.append("")
        out += _runtime(r)
    return "\n".join(out) + "\n"
