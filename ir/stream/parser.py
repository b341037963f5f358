"""Parse ``.msp`` text into a :class:`~moec.ir.stream.program.Program`.

The grammar (``msp.lark``, package data) is loaded once, lazily, into a Lark LALR parser whose
rule callbacks build the program's dataclasses directly (a ``transformer=``), so no parse tree is
built. Positions come from the named opcode/keyword tokens rather than ``propagate_positions``.
A die block's body arrives as whole instruction lines: :func:`~moec.ir.stream.lines.decode` reads
the canonical spelling fast and every other line goes through the grammar's ``instr`` rule (a
second start symbol). Lark's exceptions never escape: every failure is a :class:`ProgramError` at
``file:line:col`` with the source line, a caret, and what was expected
(:mod:`moec.ir.stream.diagnostics`).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import re
from functools import partial
from typing import Any

from lark import (
    Lark,
    Token,
    Transformer,
    UnexpectedInput,
)

from moec.ir.errors import Location, ProgramError
from moec.ir.stream.diagnostics import lark_error, with_context
from moec.ir.stream.grammar import grammar_text
from moec.ir.stream.lexer import lark_options
from moec.ir.stream.lines import decode
from moec.ir.stream.opcodes import OPCODES, Form
from moec.ir.stream.operands import loc as _loc
from moec.ir.stream.operands import number, ranges, string
from moec.ir.stream.program import (
    FORMAT_VERSION,
    HOST_CHANNEL,
    Choice,
    Condition,
    DieStream,
    Instr,
    IslandDecl,
    MoEDecl,
    Program,
    RuntimePolicy,
    SkipRule,
    SliceLayout,
    SlotPool,
    TargetRef,
    TensorDecl,
    Value,
    WeightsRef,
)

_MOE_KEYS: dict[str, type] = {
    "experts": int,
    "top_k": int,
    "hidden": int,
    "ffn": int,
    "tokens": int,
    "input": str,
    "output": str,
    "shared_ffn": int,
    "gated": bool,
    "dtype": str,
}
_MOE_REQUIRED = ("experts", "top_k", "hidden", "ffn", "tokens", "input", "output")


class _Build(Transformer[Token, Any]):
    """Rule callbacks: each returns the program item the rule denotes."""

    def __init__(self, filename: str) -> None:
        super().__init__(visit_tokens=False)
        self.f = filename
        for d in OPCODES.defs():
            for form in d.forms:
                setattr(self, form.rule, partial(self._instruction, form, d.cls))

    def _bytes(self, tok: Token) -> int:
        return number(tok, 5, self.f)

    # --- values ---
    def name(self, c: list[Token]) -> str:
        tok = c[0]
        return string(tok, self.f) if tok.type == "STRING" else str(tok)

    def int_value(self, c: list[Token]) -> int:
        return int(c[0])

    def float_value(self, c: list[Token]) -> float:
        v = float(c[0])
        if not math.isfinite(v):
            raise ProgramError(f"number {c[0]} is not finite", _loc(self.f, c[0]))
        return v

    def str_value(self, c: list[Token]) -> str:
        return string(c[0], self.f)

    def true_value(self, c: list[Token]) -> bool:
        return True

    def false_value(self, c: list[Token]) -> bool:
        return False

    def vlist(self, c: list[Value]) -> list[Value]:
        return list(c)

    def kv(self, c: list[Any]) -> tuple[Token, Value]:
        return (c[0], c[1])

    def kvs(self, c: list[tuple[Token, Value]]) -> list[tuple[Token, Value]]:
        seen: set[str] = set()
        for key, _ in c:
            if str(key) in seen:
                raise ProgramError(f"key {key} given twice", _loc(self.f, key))
            seen.add(str(key))
        return c

    def shape(self, c: list[Token]) -> tuple[int, ...]:
        return tuple(int(t) for t in c)

    # --- header and declarations ---
    def header(self, c: list[Token]) -> tuple[int, str]:
        version = int(c[1])
        if version != FORMAT_VERSION:
            raise ProgramError(
                f"unsupported format version {version}, expected {FORMAT_VERSION}",
                _loc(self.f, c[1]),
            )
        return version, string(c[3], self.f)

    def target(self, c: list[Any]) -> TargetRef:
        overrides: list[tuple[str, int | float | str]] = []
        for key, value in c[2]:
            if isinstance(value, list | bool):
                raise ProgramError(
                    f"target override {key} must be a number or a string, found {value!r}",
                    _loc(self.f, key),
                )
            overrides.append((str(key), value))
        return TargetRef(string(c[1], self.f), tuple(overrides), _loc(self.f, c[0]))

    def target_plain(self, c: list[Token]) -> TargetRef:
        return TargetRef(string(c[1], self.f), (), _loc(self.f, c[0]))

    def weights(self, c: list[Token]) -> WeightsRef:
        digest = string(c[2], self.f)
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ProgramError(
                f"sha256 must be 64 lowercase hex digits, found {digest!r}", _loc(self.f, c[2])
            )
        return WeightsRef(string(c[1], self.f), digest, _loc(self.f, c[0]))

    def tensor(self, c: list[Any]) -> TensorDecl:
        chan = HOST_CHANNEL if str(c[4]) == "host" else int(str(c[4])[2:])
        return TensorDecl(c[1], c[2], c[3], chan, self._bytes(c[5]), _loc(self.f, c[0]))

    def moe_decl(self, c: list[Any]) -> MoEDecl:
        loc = _loc(self.f, c[0])
        fields: dict[str, Any] = {}
        for key, value in c[2]:
            want = _MOE_KEYS.get(str(key))
            if want is None:
                raise ProgramError(
                    f"unknown MoE layer key {key}, expected one of {', '.join(_MOE_KEYS)}",
                    _loc(self.f, key),
                )
            if type(value) is not want:
                raise ProgramError(
                    f"MoE layer key {key} must be {want.__name__}, found {value!r}",
                    _loc(self.f, key),
                )
            fields[str(key)] = value
        missing = [k for k in _MOE_REQUIRED if k not in fields]
        if missing:
            raise ProgramError(f"MoE layer {c[1]} is missing {', '.join(missing)}", loc)
        return MoEDecl(name=c[1], loc=loc, **fields)

    def layout(self, c: list[Any]) -> SliceLayout:
        shared = len(c) == 4
        cols = tuple((a, b + 1) for a, b in ranges(c[-1], 4, self.f))
        return SliceLayout(c[1], cols, shared, _loc(self.f, c[0]))

    def slots(self, c: list[Token]) -> SlotPool:
        return SlotPool(int(c[1]), number(c[2], 5, self.f), self._bytes(c[3]), _loc(self.f, c[0]))

    def island(self, c: list[Any]) -> IslandDecl:
        return IslandDecl(c[1], number(c[2], 5, self.f), self._bytes(c[3]), _loc(self.f, c[0]))

    def die(self, c: list[Any]) -> DieStream:
        f = self.f
        read = decode  # the module's name, so a test can switch the fast reader off
        instrs: list[Instr] = []
        for line in c[2:]:
            i = read(line, f)
            instrs.append(i if i is not None else self._instr_line(line))
        return DieStream(int(c[1]), instrs, _loc(f, c[0]))

    def _instr_line(self, line: Token) -> Instr:
        """Parse one instruction line with the grammar's ``instr`` rule, at its place."""
        text = str(line)
        row, col = line.line or 0, line.column or 0

        def moved(where: Location) -> Location:
            return Location(where.file, row + where.line - 1, col + where.column - 1)

        assert _Parsers.lark is not None
        try:
            instr: Instr = _Parsers.lark.parse(text, start="instr")  # type: ignore[assignment]
        except UnexpectedInput as err:
            e = lark_error(err, text, self.f, line_only=True)
            assert isinstance(e.where, Location)
            raise ProgramError(e.message, moved(e.where)) from None
        except ProgramError as err:
            if isinstance(err.where, Location):
                err.where = moved(err.where)
                err.args = (err.one_line(),)
            raise
        assert instr.loc is not None
        return dataclasses.replace(instr, loc=moved(instr.loc))

    def instr(self, c: list[Instr]) -> Instr:
        return c[0]

    # --- instructions: one rule per text form of the opcode table (ir/stream/grammar.py), each
    # given a callback named after its rule in __init__ ---
    def _instruction(self, form: Form, cls: type, c: list[Token]) -> Instr:
        """An instruction from the tokens of one of its forms (c[0] is the opcode terminal,
        which holds the first operand when the form glues it)."""
        f = self.f
        values: dict[str, Any] = {}
        k = 1
        for p in form.parts:
            if p.kind.lead:
                values[p.field], k = p.kind.take(c, 0, f, len(form.opcode))
            else:
                skip = len(p.keyword) if p.keyword is not None else 0
                values[p.field], k = p.kind.take(c, k, f, skip)
        instr: Instr = cls(**values, loc=_loc(f, c[0]))
        return instr

    # --- runtime part ---
    def rt_strategy(self, c: list[Any]) -> tuple[str, Token, Any]:
        return ("strategy", c[0], c[1])

    def rt_param(self, c: list[Any]) -> tuple[str, Token, Any]:
        return ("param", c[0], (c[1], c[2]))

    def rt_precision(self, c: list[Any]) -> tuple[str, Token, Any]:
        return ("precision", c[0], tuple(c[1:]))

    def rt_skip(self, c: list[Any]) -> tuple[str, Token, Any]:
        return ("skip", c[0], SkipRule(c[1], float(c[2]), _loc(self.f, c[0])))

    def rt_annotate(self, c: list[Any]) -> tuple[str, Token, Any]:
        return ("annotate", c[0], (c[1], c[2]))

    def cond(self, c: list[Any]) -> Condition:
        return Condition(str(c[0]), str(c[1]), float(c[2]), _loc(self.f, c[0]))

    def rt_when(self, c: list[Any]) -> tuple[str, Token, Any]:
        conds = tuple(x for x in c[1:-1] if isinstance(x, Condition))
        return ("choice", c[0], Choice(conds, int(c[-1]), _loc(self.f, c[0])))

    def rt_otherwise(self, c: list[Any]) -> tuple[str, Token, Any]:
        return ("choice", c[0], Choice((), int(c[2]), _loc(self.f, c[0])))

    def rt_alternative(self, c: list[Any]) -> tuple[str, Token, Any]:
        where = _loc(self.f, c[0])
        alt = self._policy(RuntimePolicy(layer="", strategy="", loc=where), c[2:], "alternative")
        return ("alternative", c[0], (int(c[1]), alt))

    def runtime(self, c: list[Any]) -> RuntimePolicy:
        loc = _loc(self.f, c[0])
        policy = RuntimePolicy(layer=c[1], strategy="", loc=loc)
        return self._policy(policy, c[2:], f"runtime {policy.layer}")

    def _policy(self, policy: RuntimePolicy, items: list[Any], what: str) -> RuntimePolicy:
        """Fill ``policy`` from its items (a runtime block's, or an alternative's)."""
        seen: set[str] = set()
        for kind, tok, payload in items:
            where = _loc(self.f, tok)
            if kind in ("strategy", "precision", "skip") and kind in seen:
                raise ProgramError(f"{kind} given twice in {what}", where)
            seen.add(kind)
            if kind == "choice":
                policy.choices.append(payload)
            elif kind == "alternative":
                index, alt = payload
                if index != len(policy.alternatives):
                    raise ProgramError(
                        f"{what}: expected alternative {len(policy.alternatives)} here "
                        f"(alternatives are numbered 0, 1, ... in order), found {index}",
                        where,
                    )
                policy.alternatives.append(alt)
            elif kind == "strategy":
                policy.strategy = payload
            elif kind == "precision":
                policy.precision = payload
                policy.precision_loc = where
            elif kind == "skip":
                policy.skip = payload
            else:
                key, value = payload
                table: dict[str, Any] = policy.params if kind == "param" else policy.annotations
                if str(key) in table:
                    raise ProgramError(f"{kind} {key} given twice", _loc(self.f, key))
                table[str(key)] = value
                policy.param_locs[str(key)] = _loc(self.f, key)
        if not policy.strategy:
            raise ProgramError(f"{what} has no strategy, expected 'strategy NAME'", policy.loc)
        return policy

    def start(self, c: list[Any]) -> Program:
        version, name = c[0]
        prog = Program(name=name, version=version, filename=self.f)
        for item in c[1:]:
            if isinstance(item, TargetRef):
                if prog.target is not None:
                    raise ProgramError("target declared twice", item.loc)
                prog.target = item
            elif isinstance(item, TensorDecl):
                prog.tensors.append(item)
            elif isinstance(item, MoEDecl):
                prog.layers.append(item)
            elif isinstance(item, SliceLayout):
                prog.layouts.append(item)
            elif isinstance(item, SlotPool):
                prog.slots.append(item)
            elif isinstance(item, IslandDecl):
                prog.islands.append(item)
            elif isinstance(item, DieStream):
                prog.streams.append(item)
            elif isinstance(item, RuntimePolicy):
                prog.runtime.append(item)
            else:
                if prog.weights is not None:
                    raise ProgramError("weights declared twice", item.loc)
                prog.weights = item
        return prog


class _Parsers:
    """One Lark parser per filename would rebuild tables; instead the transformer is swapped.
    The parser is rebuilt when the opcode table has changed since it was built."""

    lark: Lark | None = None
    build: _Build | None = None
    version = -1


def _parser(filename: str) -> Lark:
    if _Parsers.lark is None or _Parsers.version != OPCODES.version:
        _Parsers.version = OPCODES.version
        _Parsers.build = _Build(filename)
        _Parsers.lark = Lark(
            grammar_text(),
            parser="lalr",
            lexer="contextual",
            transformer=_Parsers.build,
            maybe_placeholders=False,
            start=["start", "instr"],
            **lark_options(),
        )
    assert _Parsers.build is not None
    _Parsers.build.f = filename
    return _Parsers.lark


def parse_program(text: str, filename: str = "<string>") -> Program:
    """Parse ``.msp`` text; raise :class:`ProgramError` with file:line:col on any error."""
    lark = _parser(filename)
    # The parse allocates a few objects per token and frees none, which makes the cyclic garbage
    # collector rescan the growing heap again and again (over half the time of a big program);
    # nothing built here is cyclic, so it is paused for the parse.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        prog = lark.parse(text, start="start")
    except UnexpectedInput as err:
        raise with_context(lark_error(err, text, filename), text) from None
    except ProgramError as err:
        raise with_context(err, text) from None
    finally:
        if gc_was_on:
            gc.enable()
    assert isinstance(prog, Program)
    prog.source = text
    return prog


def load_program(path: str | os.PathLike[str]) -> Program:
    """Read and parse a ``.msp`` file."""
    filename = os.fspath(path)
    try:
        with open(filename, encoding="utf-8") as f:
            text = f.read()
    except OSError as err:
        raise ProgramError(f"cannot read stream program: {err.strerror}", filename) from None
    except UnicodeDecodeError as err:
        raise ProgramError(f"stream program is not UTF-8 text: {err.reason}", filename) from None
    return parse_program(text, filename)
