"""The core instructions of the stream program, each declared once (see :mod:`.opcodes`).

Each is a frozen dataclass: its fields are typed operands, ``loc`` is where it was parsed (not
part of equality), and ``opcode`` is set by the declaration. The text forms below are the only
place their syntax is written; grammar, fast reader, printer and usage messages derive from them.
The interpreter registers one timing and one numerics handler per opcode
(``backends/interp/timing_ops.py``, ``backends/interp/numerics_ops.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moec.ir.errors import Location
from moec.ir.stream.constraints import computes_on_slice, frees_slot, load_fits, transfer_pairs
from moec.ir.stream.kinds import (
    BLOCK,
    BYTES,
    CHANNEL,
    CONTENT,
    COUNT,
    DIE,
    EVENT,
    FLOPS,
    ISLAND,
    LAYER,
    SLOT,
    TOKENS,
)
from moec.ir.stream.opcodes import Instruction, instruction, operand
from moec.ir.stream.values import Block, Content, TokenSet


@instruction("load", "load $slot <- $channel $content bytes $nbytes", verify=load_fits)
@dataclass(frozen=True, slots=True)
class Load(Instruction):
    """DRAM -> SRAM: bring ``content`` from channel ``channel`` (or the host, when it is
    :data:`~moec.ir.stream.values.HOST_CHANNEL`) into slot ``slot``."""

    slot: int = operand(SLOT)
    channel: int = operand(CHANNEL)
    content: Content = operand(CONTENT)
    nbytes: int = operand(BYTES)
    loc: Location | None = field(default=None, compare=False)


@instruction(
    "send",
    "send $slot -> $peer bytes $nbytes",
    "send $block -> $peer bytes $nbytes",
    verify=transfer_pairs,
)
@dataclass(frozen=True, slots=True)
class Send(Instruction):
    """D2D to neighbour die ``peer``: the content of ``slot``, or an activation ``block``."""

    peer: int = operand(DIE)
    nbytes: int = operand(BYTES)
    slot: int | None = operand(SLOT, default=None)
    block: Block | None = operand(BLOCK, default=None)
    loc: Location | None = field(default=None, compare=False)


@instruction(
    "recv",
    "recv $slot <- $peer $content bytes $nbytes",
    "recv $block <- $peer bytes $nbytes",
    verify=transfer_pairs,
)
@dataclass(frozen=True, slots=True)
class Recv(Instruction):
    """D2D from neighbour die ``peer``: into ``slot`` (holding ``content``), or a ``block``.

    The k-th ``send`` from die a to die b matches the k-th ``recv`` on b from a.
    """

    peer: int = operand(DIE)
    nbytes: int = operand(BYTES)
    slot: int | None = operand(SLOT, default=None)
    content: Content | None = operand(CONTENT, default=None)
    block: Block | None = operand(BLOCK, default=None)
    loc: Location | None = field(default=None, compare=False)


@instruction("gemm", "gemm $slot tokens $tokens", verify=computes_on_slice)
@dataclass(frozen=True, slots=True)
class Gemm(Instruction):
    """Gate/up projection of the micro-slice in ``slot`` for ``tokens`` (their layer inputs)."""

    slot: int = operand(SLOT)
    tokens: TokenSet = operand(TOKENS)
    loc: Location | None = field(default=None, compare=False)


@instruction("act", "act $slot tokens $tokens", verify=computes_on_slice)
@dataclass(frozen=True, slots=True)
class Act(Instruction):
    """The activation (e.g. silu(gate) * up) of the slice's hidden columns for ``tokens``."""

    slot: int = operand(SLOT)
    tokens: TokenSet = operand(TOKENS)
    loc: Location | None = field(default=None, compare=False)


@instruction("accum", "accum $slot tokens $tokens", verify=computes_on_slice)
@dataclass(frozen=True, slots=True)
class Accum(Instruction):
    """Down-projection of the slice, weighted by the gate scores, accumulated into outputs."""

    slot: int = operand(SLOT)
    tokens: TokenSet = operand(TOKENS)
    loc: Location | None = field(default=None, compare=False)


@instruction("free", "free $slot", verify=frees_slot)
@dataclass(frozen=True, slots=True)
class Free(Instruction):
    """Release slot ``slot`` (once its pending transfers are done)."""

    slot: int = operand(SLOT)
    loc: Location | None = field(default=None, compare=False)


@instruction("signal", "signal $event")
@dataclass(frozen=True, slots=True)
class Signal(Instruction):
    """Increment the package-wide event counter ``event`` by one."""

    event: str = operand(EVENT)
    loc: Location | None = field(default=None, compare=False)


@instruction("wait", "wait $event count $count")
@dataclass(frozen=True, slots=True)
class Wait(Instruction):
    """Block until event ``event`` has been signalled at least ``count`` times in total."""

    event: str = operand(EVENT)
    count: int = operand(COUNT)
    loc: Location | None = field(default=None, compare=False)


@instruction("dense", "dense $island flops $flops bytes $nbytes")
@dataclass(frozen=True, slots=True)
class Dense(Instruction):
    """This die's share of dense island ``island``: ``flops`` of compute, ``nbytes`` of DRAM."""

    island: str = operand(ISLAND)
    flops: int = operand(FLOPS)
    nbytes: int = operand(BYTES)
    loc: Location | None = field(default=None, compare=False)


@instruction("moe", "moe $layer")
@dataclass(frozen=True, slots=True)
class MoE(Instruction):
    """Placeholder: the runtime expansion of MoE layer ``layer`` runs here on this die."""

    layer: str = operand(LAYER)
    loc: Location | None = field(default=None, compare=False)


#: The core instructions as one type (an instruction declared elsewhere is an ``object`` with
#: an ``opcode``; code that must handle every opcode dispatches through the table).
Instr = Load | Send | Recv | Gemm | Act | Accum | Free | Signal | Wait | Dense | MoE
