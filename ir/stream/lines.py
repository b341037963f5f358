"""Read one instruction line fast: a compiled pattern per opcode for the canonical spelling.

A die block's body reaches the parser as whole lines (the grammar's ``INSTR`` terminal). Feeding
each line through Lark token by token costs most of the parse time of a big program, so
:func:`decode` first tries a regular expression per opcode that matches exactly what
``print_program`` writes (single blanks or tabs, bare names, canonical numbers). A line that does
not match (quoted names, reserved words used as names, odd spacing, any error) returns ``None``
and the caller parses it with the grammar's ``instr`` rule, which also produces the error
messages. So the patterns can only speed parsing up, never change what is accepted;
``tests/test_stream_roundtrip.py`` checks that both readings agree on random programs.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from lark import Token

from moec.ir.errors import Location
from moec.ir.stream.operands import parse_token_set
from moec.ir.stream.printer import RESERVED
from moec.ir.stream.program import (
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
    Recv,
    Send,
    Signal,
    SliceRef,
    TensorRef,
    Wait,
)

_S = r"[ \t]+"
_O = r"[ \t]*"
_N = r"([A-Za-z_][A-Za-z0-9_.\-]*)"
_D = r"([0-9]+)"
_T = r"([0-9]+(?:\.\.[0-9]+)?(?:,[0-9]+(?:\.\.[0-9]+)?)*)"
_C = _N + r"(?::(?:e([0-9]+)|(sh)):s([0-9]+))?"

_PATTERNS: dict[str, list[tuple[str, str]]] = {
    "load": [("load", rf"load{_S}s{_D}{_S}<-{_O}ch{_D}{_S}{_C}{_S}bytes{_S}{_D}{_O}")],
    "send": [
        ("send_slot", rf"send{_S}s{_D}{_S}->{_O}{_D}{_S}bytes{_S}{_D}{_O}"),
        ("send_block", rf"send{_S}([xy]){_S}{_N}{_S}tokens{_S}{_T}{_S}->{_O}{_D}{_S}bytes{_S}{_D}{_O}"),
    ],
    "recv": [
        ("recv_slot", rf"recv{_S}s{_D}{_S}<-{_O}{_D}{_S}{_C}{_S}bytes{_S}{_D}{_O}"),
        ("recv_block", rf"recv{_S}([xy]){_S}{_N}{_S}tokens{_S}{_T}{_S}<-{_O}{_D}{_S}bytes{_S}{_D}{_O}"),
    ],
    "gemm": [("gemm", rf"gemm{_S}s{_D}{_S}tokens{_S}{_T}{_O}")],
    "act": [("act", rf"act{_S}s{_D}{_S}tokens{_S}{_T}{_O}")],
    "accum": [("accum", rf"accum{_S}s{_D}{_S}tokens{_S}{_T}{_O}")],
    "free": [("free", rf"free{_S}s{_D}{_O}")],
    "signal": [("signal", rf"signal{_S}{_N}{_O}")],
    "wait": [("wait", rf"wait{_S}{_N}{_S}count{_S}{_D}{_O}")],
    "dense": [("dense", rf"dense{_S}{_N}{_S}flops{_S}{_D}{_S}bytes{_S}{_D}{_O}")],
    "moe": [("moe", rf"moe{_S}{_N}{_O}")],
}  # fmt: skip
_COMPILED = {op: [(form, re.compile(p)) for form, p in forms] for op, forms in _PATTERNS.items()}

_COMPUTE: dict[str, Callable[..., Instr]] = {"gemm": Gemm, "act": Act, "accum": Accum}


def _content(m: re.Match[str], first: int) -> Content | None:
    """The content written from group ``first`` on (name, expert, 'sh', slice)."""
    name, expert, shared, slice_ = m.group(first, first + 1, first + 2, first + 3)
    if RESERVED.fullmatch(name):
        return None
    if slice_ is None:
        return TensorRef(name)
    return SliceRef(name, None if shared else int(expert), int(slice_))


def decode(tok: Token, filename: str) -> Instr | None:
    """The instruction on line ``tok`` if it is in canonical spelling, else ``None``."""
    text = str(tok)
    op = text[: text.find(" ")] if " " in text else text.split(None, 1)[0]
    forms = _COMPILED.get(op)
    if forms is None:
        return None
    for form, pattern in forms:
        m = pattern.fullmatch(text)
        if m is not None:
            return _build(form, m, tok, filename)
    return None


def _build(form: str, m: re.Match[str], tok: Token, filename: str) -> Instr | None:
    line, col = tok.line or 0, tok.column or 0
    loc = Location(filename, line, col)
    g = m.group
    if form in _COMPUTE:
        tokens = parse_token_set(g(2), Location(filename, line, col + m.start(2)))
        return _COMPUTE[form](int(g(1)), tokens, loc)
    if form == "load":
        content = _content(m, 3)
        return None if content is None else Load(int(g(1)), int(g(2)), content, int(g(7)), loc)
    if form == "send_slot":
        return Send(int(g(2)), int(g(3)), slot=int(g(1)), loc=loc)
    if form == "recv_slot":
        content = _content(m, 3)
        if content is None:
            return None
        return Recv(int(g(2)), int(g(7)), slot=int(g(1)), content=content, loc=loc)
    if form in ("send_block", "recv_block"):
        if RESERVED.fullmatch(g(2)):
            return None
        which = "x" if g(1) == "x" else "y"
        block = Block(
            g(2), which, parse_token_set(g(3), Location(filename, line, col + m.start(3)))
        )
        kind = Send if form == "send_block" else Recv
        return kind(int(g(4)), int(g(5)), block=block, loc=loc)
    if form == "free":
        return Free(int(g(1)), loc)
    name = g(1)
    if RESERVED.fullmatch(name):
        return None
    if form == "signal":
        return Signal(name, loc)
    if form == "wait":
        return Wait(name, int(g(2)), loc)
    if form == "dense":
        return Dense(name, int(g(2)), int(g(3)), loc)
    return MoE(name, loc)
