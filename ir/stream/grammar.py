"""The ``.msp`` grammar: ``msp.lark`` plus the instruction rules derived from the opcode table.

``msp.lark`` (package data) holds the declarations, the die block and the runtime part. The
instructions are generated from :data:`~moec.ir.stream.opcodes.OPCODES`, so an instruction is
written down once (its declaration) and parses wherever it is declared:

* one rule per text form, ``op_<opcode>_<k>``: the opcode terminal, then per operand its
  keyword's terminal (``BYTES``, ``TO``, ...) or its kind's grammar (``(NAME | STRING)``);
* ``instr``, the second start symbol, one alternative per form;
* an opcode terminal per opcode: ``/gemm[ \\t]+[^\\s#}]+/`` when its first operand is glued to it
  (a slot, an activation block), else the keyword ``"signal"`` (the declarations' ``MOE``
  keyword serves ``moe`` too);
* ``INSTR``, a whole line starting with any opcode, which the die block takes.

For the core instructions this reproduces the hand-written grammar the format had before the
table, terminal for terminal. A form the grammar cannot take (an LALR conflict, a terminal
clash) fails when the parser is built, naming the grammar.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from moec.ir.stream.opcodes import OPCODES, Form, OpcodeError

_TERMINAL_RE = re.compile(r"^([A-Z_][A-Z0-9_]*)(?:\.\d+)?\s*:\s*(.*)$", re.M)


@cache
def static_grammar() -> str:
    """``msp.lark`` as shipped."""
    return resources.files("moec.ir.stream").joinpath("msp.lark").read_text(encoding="utf-8")


def _form_rule(form: Form) -> str:
    parts = [form.opcode.upper()]
    for p in form.parts:
        if p.kind.lead:
            if p.kind.grammar:
                parts.append(p.kind.grammar)
        elif p.keyword is not None:
            parts.append(p.kind.keywords[p.keyword])
        else:
            parts.append(p.kind.grammar)
    return f"{form.rule}: {' '.join(parts)}"


def instruction_grammar() -> str:
    """The generated part of the grammar for the current opcode table."""
    static = {m.group(1): m.group(2).strip() for m in _TERMINAL_RE.finditer(static_grammar())}
    rules: list[str] = []
    terminals: list[str] = []
    alternatives: list[str] = []
    for d in OPCODES.defs():
        term = d.opcode.upper()
        glued = d.forms[0].glued
        if term in static:
            if glued or static[term] != f'"{d.opcode}"':
                raise OpcodeError(
                    f"opcode {d.opcode!r} clashes with the grammar's terminal {term} "
                    f"({static[term]})"
                )
        elif glued:
            terminals.append(f"{term}.3: /{d.opcode}[ \\t]+[^\\s#}}]+/")
        else:
            terminals.append(f'{term}: "{d.opcode}"')
        for form in d.forms:
            for p in form.parts:
                needed = p.kind.keywords.get(p.keyword or "")
                if needed is not None and needed not in static:
                    raise OpcodeError(
                        f"terminal {needed} of operand kind {p.kind.name} is not in msp.lark"
                    )
            rules.append(_form_rule(form))
            alternatives.append(form.rule)
    opcodes = "|".join(OPCODES)
    lines = [
        "",
        "// --- generated from the opcode table (ir/stream/grammar.py) ---",
        f"instr: {' | '.join(alternatives)}",
        *rules,
        *terminals,
        # a whole line: an opcode, a blank, then anything but a newline, '#' or '}' outside
        # strings
        f'INSTR: /(?:{opcodes})[ \\t](?:"(?:[^"\\\\\\n]|\\\\.)*"|[^\\n#}}"])*/',
    ]
    return "\n".join(lines) + "\n"


def grammar_text() -> str:
    """The whole grammar: ``msp.lark`` and the instruction rules of the current table."""
    return static_grammar() + instruction_grammar()
