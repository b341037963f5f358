"""The stream program (``.msp``): moec's chiplet ISA.

Data structures in :mod:`.program`; every instruction is declared once in the opcode table
(:mod:`.opcodes`; the core set in :mod:`.instructions`), from which the grammar, the fast line
reader, the printer and the verifier derive. Text in and out with :func:`parse_program`,
:func:`load_program` and :func:`print_program`; checks with :func:`verify_program`; typed
runtime-policy parameters with :func:`strategy_params`; the ``moec inspect`` numbers with
:func:`summarize` / :func:`render`. The format is described in ``docs/isa.md``.
"""

from typing import TYPE_CHECKING, Any

from moec.ir.stream.opcodes import HandlerTable, Instruction, OpcodeError, instruction, operand
from moec.ir.stream.params import strategy_params
from moec.ir.stream.printer import print_program
from moec.ir.stream.program import (
    FORMAT_VERSION,
    OPCODES,
    Accum,
    Act,
    Block,
    Content,
    Dense,
    DieStream,
    Free,
    Gemm,
    Instr,
    IslandDecl,
    Load,
    MoE,
    MoEDecl,
    Program,
    Recv,
    RuntimePolicy,
    Send,
    Signal,
    SkipRule,
    SliceLayout,
    SliceRef,
    SlotPool,
    TargetRef,
    TensorDecl,
    TensorRef,
    TokenSet,
    Value,
    Wait,
    WeightsRef,
)
from moec.ir.stream.summary import render, summarize
from moec.ir.stream.verify import SramError, verify_program

if TYPE_CHECKING:
    from moec.ir.stream.parser import load_program, parse_program


def __getattr__(name: str) -> Any:
    """:func:`load_program` and :func:`parse_program`, imported on first use: the parser
    imports Lark and builds its tables' classes (about 0.1 s), which a run that parses no
    program text (``moec bench``) never needs."""
    if name in ("load_program", "parse_program"):
        from moec.ir.stream import parser

        globals().update(load_program=parser.load_program, parse_program=parser.parse_program)
        return getattr(parser, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMAT_VERSION", "OPCODES", "Accum", "Act", "Block", "Content", "Dense", "DieStream", "Free",
    "Gemm", "HandlerTable", "Instr", "Instruction", "IslandDecl", "Load", "MoE", "MoEDecl",
    "OpcodeError", "Program", "Recv", "RuntimePolicy", "Send", "Signal", "SkipRule",
    "SliceLayout", "SliceRef", "SlotPool", "SramError", "TargetRef", "TensorDecl", "TensorRef",
    "TokenSet", "Value", "Wait", "WeightsRef", "instruction", "load_program", "operand",
    "parse_program", "print_program", "render", "strategy_params", "summarize",
    "verify_program",
]  # fmt: skip
