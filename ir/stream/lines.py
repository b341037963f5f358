"""Read one instruction line fast: a compiled pattern per text form, for the canonical spelling.

A die block's body reaches the parser as whole lines (the grammar's ``INSTR`` terminal). Feeding
each line through Lark token by token costs most of the parse time of a big program, so
:func:`decode` first tries, per form of the line's opcode (:mod:`.opcodes`), a regular
expression built from the form's operand kinds that matches exactly what ``print_program``
writes (single blanks or tabs, bare names, canonical numbers). A line that does not match
(quoted names, reserved words used as names, odd spacing, any error) returns ``None`` and the
caller parses it with the grammar's ``instr`` rule, which also produces the error messages. So
the patterns can only speed parsing up, never change what is accepted;
``tests/test_stream_roundtrip.py`` checks that both readings agree on random programs and on
every declared opcode.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from lark import Token

from moec.ir.errors import Location
from moec.ir.stream.kinds import NOT_CANONICAL
from moec.ir.stream.opcodes import OPCODES, Form, generate
from moec.ir.stream.printer import reserved

_S = r"[ \t]+"
_O = r"[ \t]*"

#: ``read(match, filename, line, col) -> instruction or None`` of one form
Reader = Callable[[re.Match[str], str, int, int], Any]


def form_pattern(form: Form) -> str:
    """The regex of a form's canonical text (one group run per operand, in order)."""
    out = form.opcode
    for p in form.parts:
        if p.keyword is None:
            out += _S + p.kind.pattern
        else:
            gap = _S if p.keyword[-1].isalnum() else _O
            out += _S + re.escape(p.keyword) + gap + p.kind.pattern
    return out + _O


def _reader(form: Form, cls: type, words: re.Pattern[str]) -> Reader:
    """A function reading one form's match, generated from its parts: an inline integer is
    ``int(g(k))``, any other operand its kind's ``decode`` (NOT_CANONICAL: give up)."""
    env: dict[str, Any] = {"cls": cls, "Location": Location, "NC": NOT_CANONICAL, "words": words}
    body = ["g = m.group"]
    args = []
    g = 1
    for k, p in enumerate(form.parts):
        if p.kind.inline is not None:
            body.append(f"v{k} = int(g({g}))")
        else:
            env[f"_d{k}"] = p.kind.decode
            body += [f"v{k} = _d{k}(m, {g}, where, words)", f"if v{k} is NC: return None"]
        args.append(f"{p.field}=v{k}")
        g += p.kind.groups
    if any(p.kind.inline is None for p in form.parts):
        body.insert(1, "where = lambda k: Location(filename, line, col + m.start(k))")
    body.append(f"return cls({', '.join(args)}, loc=Location(filename, line, col))")
    return generate("read", "m, filename, line, col", body, env)


class Decoder:
    """The compiled forms of every opcode of the table at one version."""

    def __init__(self) -> None:
        self.version = OPCODES.version
        words = reserved()
        self.forms: dict[str, list[tuple[re.Pattern[str], Reader]]] = {
            d.opcode: [(re.compile(form_pattern(f)), _reader(f, d.cls, words)) for f in d.forms]
            for d in OPCODES.defs()
        }

    def __call__(self, tok: Token, filename: str) -> Any:
        """The instruction on line ``tok`` if it is in canonical spelling, else ``None``."""
        text = str(tok)
        cut = text.find(" ")
        op = text[:cut] if cut > 0 else text.split(None, 1)[0]
        forms = self.forms.get(op)
        if forms is None:
            return None
        for pattern, read in forms:
            m = pattern.fullmatch(text)
            if m is not None:
                return read(m, filename, tok.line or 0, tok.column or 0)
        return None


_decoder: Decoder | None = None


def decoder() -> Decoder:
    """The line decoder for the current opcode table (rebuilt when the table has changed)."""
    global _decoder
    if _decoder is None or _decoder.version != OPCODES.version:
        _decoder = Decoder()
    return _decoder


def decode(tok: Token, filename: str) -> Any:
    """The instruction on line ``tok`` if it is in canonical spelling, else ``None``."""
    return decoder()(tok, filename)
