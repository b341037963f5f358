"""The stream program (``.msp``): moec's chiplet ISA.

Data structures in :mod:`.program`; text in and out with :func:`parse_program`,
:func:`load_program` and :func:`print_program`; checks with :func:`verify_program`; the
``moec inspect`` numbers with :func:`summarize` / :func:`render`. The format is described in
``docs/isa.md``.
"""

from moec.ir.stream.parser import load_program, parse_program
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

__all__ = [
    "FORMAT_VERSION", "OPCODES", "Accum", "Act", "Block", "Content", "Dense", "DieStream", "Free",
    "Gemm", "Instr", "IslandDecl", "Load", "MoE", "MoEDecl", "Program", "Recv", "RuntimePolicy",
    "Send", "Signal", "SkipRule", "SliceLayout", "SliceRef", "SlotPool", "SramError", "TargetRef",
    "TensorDecl", "TensorRef", "TokenSet", "Value", "Wait", "WeightsRef", "load_program",
    "parse_program", "print_program", "render", "summarize", "verify_program",
]  # fmt: skip
