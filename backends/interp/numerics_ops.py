"""Numerics handlers: what each opcode does to real arrays (one handler per opcode).

:class:`LayerExec` runs one MoE layer's per-die instructions (the runtime expansion for this
routing, or the static program's instructions of the layer): dies execute in program order,
round robin, and the k-th send a->b is the k-th recv on b. Each instruction goes to its
numerics handler (:data:`NUMERICS`, registered against the opcode table; an opcode without one
fails this module's import), which reads and writes the executor's state:

* ``slots[die]``: the micro-slice each slot holds (``load``/``recv`` fill it, ``free`` empties);
* ``hidden[die]``: per slot, the tokens and activated intermediate of its latest ``gemm``
  (:func:`moec.ir.moe.expert_hidden` over the slice's columns: gate and up projections with
  the activation), marked done by ``act``;
* ``ybuf[die]``: partial outputs; ``accum`` adds ``gate score x expert_down(slice rows)`` (the
  down bias with slice 0 only), a shared-expert slice ``shared_ffn`` of its columns;
* ``has_x[die]``: which tokens' inputs the die holds (a ``gemm`` of a token it does not hold is
  an error; ``send x`` makes them present on the receiver, ``send y`` moves partial sums);
* ``wires``: blocks and slots in flight per (from, to).

A handler returns ``False`` when the instruction cannot run yet (a ``recv`` whose send has not
come), anything else once it has run. The layer's output for a token is its home die's partial
sum; partial sums left on any other die are an error.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import numpy as np

from moec.backends.interp.expand import tokens_of
from moec.ir.errors import ScheduleError
from moec.ir.moe import MoELayer, expert_down, expert_hidden, shared_ffn
from moec.ir.routing import LayerRouting
from moec.ir.stream.opcodes import HandlerTable
from moec.ir.stream.printer import instr as instr_text
from moec.ir.stream.program import (
    Accum,
    Act,
    Free,
    Gemm,
    Instr,
    Load,
    Recv,
    Send,
    SliceLayout,
    SliceRef,
    TokenSet,
)

#: ``handler(executor, die, instruction)``: run it; ``False``: blocked, retry later
NumericsHandler = Callable[["LayerExec", int, Any], bool | None]
#: The numerics handler of every opcode (filled below).
NUMERICS: HandlerTable[NumericsHandler] = HandlerTable("numerics")


class LayerExec:
    """Executes one MoE layer's per-die instructions on real arrays (module docstring)."""

    def __init__(
        self,
        layer: MoELayer,
        layouts: dict[tuple[str, bool], SliceLayout],
        x: np.ndarray,
        routing: LayerRouting,
    ) -> None:
        self.layer, self.x = layer, x
        T = x.shape[0]
        self.gate = np.zeros((T, layer.num_experts), dtype=np.float32)
        kept = routing.ids >= 0  # -1: a pair dropped by a runtime skip rule
        self.gate[np.nonzero(kept)[0], routing.ids[kept]] = routing.gates[kept]
        self.home = np.asarray(routing.home_die, dtype=np.int64)
        self.layouts = layouts
        self._tok: dict[TokenSet, np.ndarray] = {}
        self.ybuf = np.zeros((0, T, x.shape[1]), dtype=np.float32)
        self.has_x = np.zeros((0, T), dtype=bool)
        self.slots: list[dict[int, SliceRef]] = []
        self.hidden: list[dict[int, tuple[TokenSet, np.ndarray | None, bool]]] = []
        self.wires: dict[tuple[int, int], deque[Any]] = defaultdict(deque)

    def tok(self, ts: TokenSet) -> np.ndarray:
        a = self._tok.get(ts)
        if a is None:
            a = self._tok[ts] = tokens_of(ts)
        return a

    def cols(self, c: SliceRef) -> tuple[slice, int]:
        lay = self.layouts.get((c.layer, c.expert is None))
        if lay is None:
            raise ScheduleError(f"micro-slice {c} but layer {c.layer} has no layout")
        a, b = lay.columns[c.slice]
        return slice(a, b), c.slice

    def run(self, per_die: dict[int, list[Instr]], num_dies: int) -> np.ndarray:
        L = self.layer
        T, d = self.x.shape
        self.ybuf = np.zeros((num_dies, T, d), dtype=np.float32)
        self.has_x = np.zeros((num_dies, T), dtype=bool)
        self.has_x[self.home, np.arange(T)] = True
        self.slots = [{} for _ in range(num_dies)]
        self.hidden = [{} for _ in range(num_dies)]
        self.wires = defaultdict(deque)
        handlers = NUMERICS.by_class()
        pcs = dict.fromkeys(per_die, 0)
        progress = True
        while progress:
            progress = False
            for die in sorted(per_die):
                instrs = per_die[die]
                pc = pcs[die]
                while pc < len(instrs):
                    i = instrs[pc]
                    handler = handlers.get(type(i))
                    if handler is None:
                        raise ScheduleError(f"die {die}: not an instruction: {i!r}")
                    try:
                        if handler(self, die, i) is False:
                            break
                    except ScheduleError as err:
                        raise ScheduleError(
                            f"while executing '{instr_text(i)}' on die {die}: {err.message}",
                            err.where,
                        ) from None
                    pc += 1
                if pc != pcs[die]:
                    pcs[die] = pc
                    progress = True
        blocked = [die for die in per_die if pcs[die] < len(per_die[die])]
        if blocked:
            die = blocked[0]
            raise ScheduleError(
                f"layer {L.name}: die {die} blocks on '{instr_text(per_die[die][pcs[die]])}'"
            )
        ybuf = self.ybuf
        y = ybuf[self.home, np.arange(T)]
        ybuf[self.home, np.arange(T)] = 0.0
        left = np.argwhere(np.any(ybuf != 0.0, axis=2))
        if left.size:
            die, t = (int(v) for v in left[0])
            raise ScheduleError(
                f"layer {L.name}: partial output of token {t} left on die {die}, which is not "
                f"its home die {int(self.home[t])}"
            )
        return y


@NUMERICS.register("load")
def load(ex: LayerExec, die: int, i: Load) -> None:
    """The slot now holds the micro-slice (a tensor load is a dense island's business)."""
    if isinstance(i.content, SliceRef):
        ex.slots[die][i.slot] = i.content


@NUMERICS.register("free")
def free(ex: LayerExec, die: int, i: Free) -> None:
    ex.slots[die].pop(i.slot, None)
    ex.hidden[die].pop(i.slot, None)


@NUMERICS.register("send")
def send(ex: LayerExec, die: int, i: Send) -> None:
    """Puts a slot's content, tokens' inputs, or partial outputs (moved, not copied) on the wire."""
    wire = ex.wires[(die, i.peer)]
    if i.block is None:
        assert i.slot is not None
        wire.append(("slot", ex.slots[die].get(i.slot)))
        return
    toks = ex.tok(i.block.tokens)
    if i.block.which == "x":
        if not ex.has_x[die, toks].all():
            raise ScheduleError("sends inputs of tokens this die does not hold")
        wire.append(("x", toks))
    else:
        wire.append(("y", toks, ex.ybuf[die, toks].copy()))
        ex.ybuf[die, toks] = 0.0


@NUMERICS.register("recv")
def recv(ex: LayerExec, die: int, i: Recv) -> bool:
    """Takes the matching send off the wire (blocked until it is there)."""
    wire = ex.wires[(i.peer, die)]
    if not wire:
        return False
    msg = wire.popleft()
    if msg[0] == "x":
        ex.has_x[die, msg[1]] = True
    elif msg[0] == "y":
        ex.ybuf[die, msg[1]] += msg[2]
    elif i.slot is not None and isinstance(i.content, SliceRef):
        ex.slots[die][i.slot] = i.content
    return True


def _layer_slice(ex: LayerExec, die: int, slot: int) -> SliceRef | None:
    """The micro-slice of this layer in ``slot`` (None: another layer's, or nothing)."""
    c = ex.slots[die].get(slot)
    return c if c is not None and c.layer == ex.layer.name else None


@NUMERICS.register("gemm")
def gemm(ex: LayerExec, die: int, i: Gemm) -> None:
    """Gate and up projections with the activation, for the die's own (or received) tokens."""
    c = _layer_slice(ex, die, i.slot)
    if c is None:
        return
    toks = ex.tok(i.tokens)
    if not ex.has_x[die, toks].all():
        raise ScheduleError("computes tokens whose inputs are not on this die")
    cols, _ = ex.cols(c)
    h = None if c.expert is None else expert_hidden(ex.layer, c.expert, ex.x[toks], cols)
    ex.hidden[die][i.slot] = (i.tokens, h, False)


@NUMERICS.register("act")
def act(ex: LayerExec, die: int, i: Act) -> None:
    """Checks that it follows the slot's gemm of the same tokens (gemm computed it)."""
    if _layer_slice(ex, die, i.slot) is None:
        return
    got = ex.hidden[die].get(i.slot)
    if got is None or got[0] != i.tokens:
        raise ScheduleError(f"{i.opcode} of tokens without a matching gemm")
    ex.hidden[die][i.slot] = (got[0], got[1], True)


@NUMERICS.register("accum")
def accum(ex: LayerExec, die: int, i: Accum) -> None:
    """Down-projection times the gate scores, added into the die's partial outputs."""
    c = _layer_slice(ex, die, i.slot)
    if c is None:
        return
    got = ex.hidden[die].get(i.slot)
    if got is None or got[0] != i.tokens:
        raise ScheduleError(f"{i.opcode} of tokens without a matching gemm")
    if not got[2]:
        raise ScheduleError("accum before act")
    toks = ex.tok(i.tokens)
    cols, j = ex.cols(c)
    L = ex.layer
    if c.expert is None:
        ex.ybuf[die, toks] += shared_ffn(L, ex.x[toks], cols, with_gate=True)
    else:
        assert got[1] is not None
        part = expert_down(L, c.expert, got[1], cols, with_bias=(j == 0))
        ex.ybuf[die, toks] += part * ex.gate[toks, c.expert][:, None]


@NUMERICS.register("signal", "wait", "dense", "moe")
def no_numbers(ex: LayerExec, die: int, i: Any) -> None:
    """No numbers of the MoE layer: synchronization orders only time (dies run in program order
    here, a recv waits for its send), dense islands run in the reference evaluator, and an
    expansion has no placeholder left."""


NUMERICS.check()
