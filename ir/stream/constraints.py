"""The verifier's view of one program and one die: operand-kind checks and instruction constraints.

The verifier (:mod:`.verify`) walks each die's stream in order with a :class:`DieWalk`, which
tracks what each SRAM slot holds. For every instruction it first checks each operand by its kind
(:data:`KIND_CHECKS`: a die exists, a channel exists, a slot is one of the die's, a content is a
declared tensor or micro-slice, ...), then runs the constraints the instruction was declared
with (:func:`moec.ir.stream.opcodes.instruction`, ``verify=``): the functions below for the core
instructions (:mod:`.instructions`), or any ``check(walk, instr)`` of a new one.

Every failure is a :class:`~moec.ir.errors.ProgramError` at the instruction's ``file:line:col``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from moec.ir.errors import Location, ProgramError, ScheduleError
from moec.ir.stream import kinds as K
from moec.ir.stream.values import HOST_CHANNEL, Block, Content, SliceRef, TensorRef, TokenSet
from moec.ir.target import PRECISION_BYTES, Target

if TYPE_CHECKING:  # program.py declares its instructions with these constraints
    from moec.ir.stream.program import MoEDecl, Program

#: Precisions a tensor, layer or precision table may name.
DTYPES: tuple[str, ...] = tuple(PRECISION_BYTES)


class SramError(ProgramError, ScheduleError):
    """The static part plans more SRAM on a die than the target has."""


def at(loc: Location | None) -> str:
    """``line N`` of an earlier item, for messages."""
    return f"line {loc.line}" if loc is not None else "an earlier instruction"


@dataclass(frozen=True)
class Transfer:
    """A send or recv as the walk saw it: die, index in its stream, the instruction, payload."""

    die: int
    index: int
    instr: Any
    payload: object


class Context:
    """Program-wide lookups of the verifier and the checks of declared names."""

    def __init__(self, p: Program, target: Target | None) -> None:
        self.p = p
        self.t = target
        self.tensors = {t.name: t for t in p.tensors}
        self.layers = {m.name: m for m in p.layers}
        self.layouts = {(lay.layer, lay.shared): lay for lay in p.layouts}
        self.pools = {s.die: s for s in p.slots}
        self.islands = {i.name: i for i in p.islands}
        #: (from die, to die) -> its sends (or recvs) in program order
        self.sends: dict[tuple[int, int], list[Transfer]] = defaultdict(list)
        self.recvs: dict[tuple[int, int], list[Transfer]] = defaultdict(list)

    def fail(self, msg: str, loc: Location | None, fallback: str = "") -> ProgramError:
        return ProgramError(msg, loc if loc is not None else (fallback or self.p.filename))

    def dtype(self, dtype: str, loc: Location | None) -> None:
        if dtype not in DTYPES:
            raise self.fail(
                f"unknown precision {dtype!r}, expected one of {', '.join(DTYPES)}", loc
            )

    def die_exists(self, die: int, loc: Location | None, what: str) -> None:
        if die < 0 or (self.t is not None and die >= self.t.num_dies):
            dies = f"0..{self.t.num_dies - 1}" if self.t is not None else "non-negative ids"
            raise self.fail(f"unknown die {die} in {what}, expected {dies}", loc)

    def channel_exists(self, ch: int, loc: Location | None) -> None:
        if ch == HOST_CHANNEL:
            if self.t is not None and self.t.host is None:
                raise self.fail(
                    f"host memory named, but target {self.t.name} has no host tier "
                    "(add one with host_gbps=...)",
                    loc,
                )
            return
        if ch < 0 or (self.t is not None and ch >= len(self.t.channels)):
            n = len(self.t.channels) if self.t is not None else 0
            raise self.fail(f"unknown DRAM channel ch{ch}, expected ch0..ch{n - 1}", loc)

    def content_exists(self, c: Content, loc: Location | None) -> None:
        if isinstance(c, TensorRef):
            if c.name not in self.tensors:
                raise self.fail(f"undefined tensor {c.name}", loc)
            return
        layer = self.layers.get(c.layer)
        if layer is None:
            raise self.fail(f"undefined MoE layer {c.layer} in micro-slice {c}", loc)
        if c.expert is None and layer.shared_ffn == 0:
            raise self.fail(f"MoE layer {c.layer} has no shared experts ({c})", loc)
        if c.expert is not None and not 0 <= c.expert < layer.experts:
            raise self.fail(
                f"expert {c.expert} out of range in {c}, layer {c.layer} has {layer.experts}", loc
            )
        layout = self.layouts.get((c.layer, c.expert is None))
        if layout is None:
            kind = "shared layout" if c.expert is None else "layout"
            raise self.fail(f"micro-slice {c} but {c.layer} declares no {kind}", loc)
        if not 0 <= c.slice < layout.count:
            raise self.fail(f"slice {c.slice} out of range in {c}, layout has {layout.count}", loc)

    def tokens_fit(self, layer: MoEDecl, ts: TokenSet, loc: Location | None) -> None:
        if not ts:
            raise self.fail("empty token set", loc)
        if ts.max >= layer.tokens:
            raise self.fail(
                f"token {ts.max} out of range, layer {layer.name} has {layer.tokens} tokens "
                f"(0..{layer.tokens - 1})",
                loc,
            )

    def block(self, b: Block, loc: Location | None) -> None:
        layer = self.layers.get(b.layer)
        if layer is None:
            raise self.fail(f"undefined MoE layer {b.layer} in activation block", loc)
        if b.which not in ("x", "y"):
            raise self.fail(f"activation block must be x or y, found {b.which!r}", loc)
        self.tokens_fit(layer, b.tokens, loc)


@dataclass
class SlotState:
    """What a slot holds during the walk."""

    content: Content | None = None
    since: Location | None = None
    freed_at: Location | None = None


class DieWalk:
    """One die's stream being verified: the slots' contents, the SRAM they occupy, where we are.

    ``index`` is the position of the instruction being checked; ``where`` the fallback location
    of an instruction built in memory (no ``loc``).
    """

    def __init__(self, ctx: Context, die: int) -> None:
        self.ctx = ctx
        self.die = die
        self.pool = ctx.pools.get(die)
        self.slots: dict[int, SlotState] = {}
        self.occupied = 0
        self.sram = ctx.t.dies[die].sram_bytes if ctx.t is not None else None
        self.where = f"{ctx.p.filename}: die {die}"
        self.index = 0

    def fail(self, msg: str, loc: Location | None) -> ProgramError:
        return self.ctx.fail(msg, loc, self.where)

    def slot(self, k: int, loc: Location | None) -> SlotState:
        """Slot ``k`` of this die (it must exist)."""
        s = self.slots.get(k)
        if s is not None:
            return s
        pool, die = self.pool, self.die
        if pool is None:
            raise self.fail(f"unknown slot s{k}: die {die} declares no slots", loc)
        if not 0 <= k < pool.count:
            raise self.fail(f"unknown slot s{k} on die {die}, expected s0..s{pool.count - 1}", loc)
        s = self.slots[k] = SlotState()
        return s

    def full(self, k: int, loc: Location | None, op: str) -> SlotState:
        """Slot ``k``, which must hold something."""
        s = self.slot(k, loc)
        if s.content is None:
            if s.freed_at is not None:
                raise self.fail(
                    f"{op} uses slot s{k} on die {self.die} after it was freed at {at(s.freed_at)}",
                    loc,
                )
            raise self.fail(f"{op} uses slot s{k} on die {self.die} before it is loaded", loc)
        return s

    def fill(self, k: int, c: Content, nbytes: int, loc: Location | None, op: str) -> None:
        """Slot ``k`` (empty) now holds ``c``; the die's slots must still fit its SRAM."""
        s = self.slot(k, loc)
        pool = self.pool
        assert pool is not None
        if s.content is not None:
            raise self.fail(
                f"{op} into slot s{k} on die {self.die}, which still holds {s.content} "
                f"(since {at(s.since)}); free it first",
                loc,
            )
        if not 0 < nbytes <= pool.nbytes:
            raise self.fail(
                f"{op} of {nbytes} bytes does not fit slot s{k} of die {self.die} "
                f"({pool.nbytes} bytes)",
                loc,
            )
        s.content, s.since, s.freed_at = c, loc, None
        self.occupied += pool.nbytes
        if self.sram is not None and self.occupied > self.sram:
            assert self.ctx.t is not None
            raise SramError(
                f"does not fit SRAM: die {self.die} peaks at {self.occupied} bytes of slots "
                f"({self.occupied // pool.nbytes} x {pool.nbytes}), target {self.ctx.t.name} "
                f"has {self.sram} bytes per die",
                loc if loc is not None else self.where,
            )

    def empty(self, k: int, loc: Location | None) -> None:
        """Slot ``k`` (full) is released."""
        s = self.slot(k, loc)
        if s.content is None:
            if s.freed_at is not None:
                raise self.fail(
                    f"double free of slot s{k} on die {self.die} "
                    f"(already freed at {at(s.freed_at)})",
                    loc,
                )
            raise self.fail(f"free of slot s{k} on die {self.die} before it is loaded", loc)
        assert self.pool is not None
        s.content, s.freed_at = None, loc
        self.occupied -= self.pool.nbytes


# --- operand kinds ---------------------------------------------------------------------------
KindCheck = Callable[[DieWalk, Any, Location | None, str], None]


def _slot(w: DieWalk, k: int, loc: Location | None, op: str) -> None:
    w.slot(k, loc)


def _die(w: DieWalk, die: int, loc: Location | None, op: str) -> None:
    w.ctx.die_exists(die, loc, op)


def _channel(w: DieWalk, ch: int, loc: Location | None, op: str) -> None:
    w.ctx.channel_exists(ch, loc)


def _content(w: DieWalk, c: Content, loc: Location | None, op: str) -> None:
    w.ctx.content_exists(c, loc)


def _tokens(w: DieWalk, ts: TokenSet, loc: Location | None, op: str) -> None:
    if not ts:
        raise w.fail("empty token set", loc)


def _block(w: DieWalk, b: Block, loc: Location | None, op: str) -> None:
    w.ctx.block(b, loc)


def _non_negative(what: str) -> KindCheck:
    def check(w: DieWalk, n: int, loc: Location | None, op: str) -> None:
        if n < 0:
            raise w.fail(f"{op} with negative {what}: {n}", loc)

    return check


def _count(w: DieWalk, n: int, loc: Location | None, op: str) -> None:
    if n <= 0:
        raise w.fail(f"{op} count must be positive, found {n}", loc)


def _layer(w: DieWalk, name: str, loc: Location | None, op: str) -> None:
    if name not in w.ctx.layers:
        raise w.fail(f"undefined MoE layer {name}", loc)


def _island(w: DieWalk, name: str, loc: Location | None, op: str) -> None:
    if name not in w.ctx.islands:
        raise w.fail(f"undefined island {name}", loc)


#: The verifier's check of each operand kind (None: any value of the kind's type is valid).
KIND_CHECKS: dict[K.Kind, KindCheck | None] = {
    K.SLOT: _slot, K.DIE: _die, K.CHANNEL: _channel, K.CONTENT: _content, K.TOKENS: _tokens,
    K.BLOCK: _block, K.BYTES: _non_negative("bytes"), K.FLOPS: _non_negative("flops"),
    K.COUNT: _count, K.EVENT: None, K.LAYER: _layer, K.ISLAND: _island,
}  # fmt: skip
_unchecked = set(K.KINDS.values()) - set(KIND_CHECKS)
if _unchecked:
    raise ImportError(
        f"operand kinds without a verifier check: {sorted(k.name for k in _unchecked)}"
    )


# --- constraints of the core instructions --------------------------------------------------------
def load_fits(w: DieWalk, i: Any) -> None:
    """A tensor load moves the tensor's bytes; the slot is empty and the bytes fit it."""
    if isinstance(i.content, TensorRef):
        t = w.ctx.tensors[i.content.name]
        if i.nbytes != t.nbytes:
            raise w.fail(
                f"load of tensor {t.name} moves {i.nbytes} bytes, expected {t.nbytes}", i.loc
            )
    w.fill(i.slot, i.content, i.nbytes, i.loc, "load")


def transfer_pairs(w: DieWalk, i: Any) -> None:
    """A send/recv names a neighbour, moves bytes, and is recorded for matching with its partner
    (the k-th send a->b is the k-th recv on b from a); a recv into a slot fills it."""
    ctx, die, op, loc = w.ctx, w.die, i.opcode, i.loc
    if i.peer == die:
        raise w.fail(f"{op} on die {die} names itself as peer", loc)
    if ctx.t is not None and not ctx.t.are_neighbors(die, i.peer):
        raise w.fail(
            f"{op} between die {die} and die {i.peer}, which are not neighbours "
            f"(neighbours of {die}: {ctx.t.neighbors(die)})",
            loc,
        )
    if i.nbytes <= 0:
        raise w.fail(f"{op} of {i.nbytes} bytes", loc)
    payload: object
    is_send = op == "send"
    if i.block is not None:
        payload = i.block
    elif is_send:
        payload = w.full(i.slot, loc, "send").content
    else:
        w.fill(i.slot, i.content, i.nbytes, loc, "recv")
        payload = i.content
    if is_send:
        ctx.sends[(die, i.peer)].append(Transfer(die, w.index, i, payload))
    else:
        ctx.recvs[(i.peer, die)].append(Transfer(die, w.index, i, payload))


def computes_on_slice(w: DieWalk, i: Any) -> None:
    """The slot holds a micro-slice, and the tokens are the slice's layer's."""
    s = w.full(i.slot, i.loc, i.opcode)
    if not isinstance(s.content, SliceRef):
        raise w.fail(
            f"{i.opcode} needs a micro-slice in s{i.slot}, found tensor {s.content}", i.loc
        )
    w.ctx.tokens_fit(w.ctx.layers[s.content.layer], i.tokens, i.loc)


def frees_slot(w: DieWalk, i: Any) -> None:
    """The slot is full, and is released."""
    w.empty(i.slot, i.loc)
