"""The opcode table: every declared opcode round-trips through every text path, and a
declaration or handler table that contradicts the table fails when it is made.

Paths: the printer (``printer.instr``), the fast line reader (``lines.decode``), and the
grammar's ``instr`` rule (a die block parsed with the fast reader off). Instructions are drawn
per form from the operand kinds (Hypothesis), so an opcode declared later is covered too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lark import Token

from moec.ir.errors import Location
from moec.ir.stream import (
    OPCODES,
    HandlerTable,
    Instruction,
    OpcodeError,
    instruction,
    operand,
    parse_program,
)
from moec.ir.stream import kinds as K
from moec.ir.stream.diagnostics import usage
from moec.ir.stream.grammar import instruction_grammar
from moec.ir.stream.lines import decode
from moec.ir.stream.opcodes import Form, OpDef
from moec.ir.stream.printer import instr as instr_text
from moec.ir.stream.values import HOST_CHANNEL, Block, SliceRef, TensorRef, TokenSet

names = st.one_of(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,8}", fullmatch=True),
    st.sampled_from(["s1", "ch0", "x", "y", "load", "tokens", "bytes", "moe", "true", "host"]),
    st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=6),
)
counts = st.integers(0, 2**63)
token_sets = st.sets(st.integers(0, 5000), min_size=1, max_size=40).map(TokenSet.of)

#: A value of every operand kind.
VALUES: dict[K.Kind, st.SearchStrategy[Any]] = {
    K.SLOT: st.integers(0, 10**6),
    K.DIE: st.integers(0, 999),
    K.CHANNEL: st.integers(0, 999) | st.just(HOST_CHANNEL),
    K.CONTENT: st.builds(TensorRef, names)
    | st.builds(SliceRef, names, st.none() | st.integers(0, 999), st.integers(0, 999)),
    K.TOKENS: token_sets,
    K.BLOCK: st.builds(Block, names, st.sampled_from(["x", "y"]), token_sets),
    K.BYTES: counts,
    K.FLOPS: counts,
    K.COUNT: counts,
    K.EVENT: names,
    K.LAYER: names,
    K.ISLAND: names,
}


def test_every_kind_has_values() -> None:
    assert set(VALUES) == set(K.KINDS.values())


@st.composite
def instructions(draw: st.DrawFn) -> tuple[OpDef, Form, Any]:
    d = draw(st.sampled_from(OPCODES.defs()))
    form = draw(st.sampled_from(d.forms))
    values = {p.field: draw(VALUES[p.kind]) for p in form.parts}
    return d, form, d.cls(**values)


def grammar_only(text: str) -> Any:
    src = f'moec 1\nprogram "p"\ndie 0 {{\n  {text}\n}}\n'
    with mock.patch("moec.ir.stream.parser.decode", lambda tok, filename: None):
        return parse_program(src, "g.msp").streams[0].instrs[0]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instructions())
def test_every_opcode_round_trips_through_every_path(case: tuple[OpDef, Form, Any]) -> None:
    d, form, i = case
    assert d.form_of(i) is form
    text = instr_text(i)
    assert text.split()[0] == d.opcode
    fast = decode(Token("INSTR", text, line=7, column=3), "g.msp")
    if fast is None:  # only a quoted name may send a canonical line to the grammar
        assert '"' in text, text
    else:
        assert fast == i and fast.loc == Location("g.msp", 7, 3)
        assert instr_text(fast) == text
    slow = grammar_only(text)
    assert slow == i and slow.loc == Location("g.msp", 4, 3)
    assert instr_text(slow) == text
    src = f'moec 1\nprogram "p"\ndie 0 {{\n  {text}\n}}\n'
    assert parse_program(src, "g.msp").streams[0].instrs[0] == i  # both readers, as parsing does


def test_every_form_is_tried() -> None:
    """The property above draws from every form of every declared opcode."""
    forms = [(d.opcode, f.index) for d in OPCODES.defs() for f in d.forms]
    assert len(forms) >= 13 and len(set(forms)) == len(forms)


def test_derived_text_matches_the_forms() -> None:
    grammar = instruction_grammar()
    for d in OPCODES.defs():
        assert usage()[d.opcode] == d.usage()
        for f in d.forms:
            assert f"\n{f.rule}: {d.opcode.upper()}" in grammar
    assert usage()["send"] == "send sK -> DIE bytes N  or  send x|y LAYER tokens T -> DIE bytes N"
    assert usage()["load"] == "load sK <- chN TENSOR|LAYER:eE:sJ bytes N"


# --- declarations that contradict the table fail when made ---------------------------------------
def declare(opcode: str, *forms: str, cls_fields: dict[str, Any] | None = None) -> None:
    ns: dict[str, Any] = {"__annotations__": {}}
    for name, (typ, value) in (cls_fields or {}).items():
        ns["__annotations__"][name] = typ
        ns[name] = value
    ns["__annotations__"]["loc"] = "Location | None"
    ns["loc"] = field(default=None, compare=False)
    cls = dataclass(frozen=True)(type("Bad", (Instruction,), ns))
    try:
        instruction(opcode, *forms)(cls)
    finally:
        if opcode in OPCODES and OPCODES[opcode].cls is cls:  # declared after all: undo
            OPCODES.withdraw(opcode)


@pytest.mark.parametrize(
    ("opcode", "forms", "fields", "message"),
    [
        ("load", ("load $slot",), {"slot": ("int", operand(K.SLOT))}, "declared twice"),
        ("Bad", ("Bad $slot",), {"slot": ("int", operand(K.SLOT))}, "must match"),
        ("bad", ("bad $nope",), {"slot": ("int", operand(K.SLOT))}, "$nope is not an operand"),
        ("bad", ("bad $n",), {"n": ("int", operand(K.BYTES))}, "written after 'bytes'"),
        ("bad", ("bad bytes $e",), {"e": ("str", operand(K.EVENT))}, "takes no keyword"),
        ("bad", ("bad $e $s",), {"e": ("str", operand(K.EVENT)), "s": ("int", operand(K.SLOT))},
         "written only right after the opcode"),
        ("bad", ("bad $s bytes",), {"s": ("int", operand(K.SLOT))}, "has no operand after it"),
        ("bad", ("bad $s", "bad $e"),
         {"s": ("int", operand(K.SLOT, default=None)), "e": ("str", operand(K.EVENT, default=None))},
         "every form must start with a lead operand, or none"),
        ("bad", ("bad $s",), {"s": ("int", operand(K.SLOT)), "e": ("str", operand(K.EVENT))},
         "must default to None"),
        ("bad", ("bad $s",), {"s": ("int", 3)}, "is not an operand(KIND) or loc"),
        ("bad", (), {"s": ("int", operand(K.SLOT))}, "has no text form"),
        ("bad", ("bad",), {}, "a form needs an operand"),
    ],
)  # fmt: skip
def test_bad_declarations_fail(
    opcode: str, forms: tuple[str, ...], fields: dict[str, Any], message: str
) -> None:
    before = list(OPCODES)
    with pytest.raises(OpcodeError, match=re.escape(message)):
        declare(opcode, *forms, cls_fields=fields)
    assert list(OPCODES) == before


def test_instruction_must_be_a_frozen_dataclass() -> None:
    class Plain(Instruction):
        pass

    with pytest.raises(OpcodeError, match="must be a frozen dataclass"):
        instruction("plain", "plain")(Plain)


def test_handler_tables_check_against_the_table() -> None:
    table: HandlerTable[Any] = HandlerTable("energy")
    with pytest.raises(OpcodeError, match="undeclared opcode 'teleport'"):
        table.register("teleport")(lambda *a: None)
    table.register(*[op for op in OPCODES if op != "wait"])(lambda *a: None)
    assert table.missing() == ["wait"]
    with pytest.raises(OpcodeError, match=r"no energy handler for opcode 'wait'.*ENERGY\.register"):
        table.by_class()
    with pytest.raises(OpcodeError, match="two energy handlers"):
        table.register("load")(lambda *a: None)
    table.register("wait")(lambda *a: None)
    assert set(table.by_class()) == {d.cls for d in OPCODES.defs()}


def test_operands_that_fit_no_form_are_an_error() -> None:
    from moec.ir.errors import ProgramError
    from moec.ir.stream import DieStream, Program, Send, SlotPool, verify_program

    both = Send(1, 8, slot=0, block=Block("L", "x", TokenSet.of([0])))
    with pytest.raises(ProgramError, match="cannot print 'send': its operands peer, nbytes, "):
        instr_text(both)
    p = Program("p", slots=[SlotPool(0, 1, 8)], streams=[DieStream(0, [both])])
    with pytest.raises(
        ProgramError, match="send with operands peer, nbytes, slot, block fits none"
    ):
        verify_program(p)
