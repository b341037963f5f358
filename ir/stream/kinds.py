"""Operand kinds of stream-program instructions: what an operand holds and how it is written.

An instruction's operands are typed by kind, the way an IRDL operation types its operands and
attributes: a slot (``s3``), a die (``-> 1``, ``<- 0``), a channel (``<- ch2`` or ``<- host``),
a slot's content (``attn.w``, ``L:e3:s1``), an activation block (``x L tokens 0..7``), a token set
(``tokens 0..15,18``), byte, FLOP and signal counts (``bytes 4096``, ``flops 10``,
``count 2``), and the names of an event, an MoE layer or a dense island.

A :class:`Kind` carries everything the text paths need, so that the grammar, the fast line reader
and the printer are all derived from an instruction's declaration (:mod:`.opcodes`):

* ``keywords``: the keyword written with the operand as *one* token (``bytes 4096``, ``-> 1``),
  mapped to its grammar terminal; an operand without one stands alone (a name);
* ``lead``: the operand is written glued to the opcode (``gemm s0``, ``send x``), which is then
  one terminal: only as an instruction's first operand;
* ``grammar``: the grammar of a standalone operand (after the opcode terminal, for a lead kind);
* ``pattern`` / ``decode``: the canonical text as a regular expression and its reading
  (``None``-like :data:`NOT_CANONICAL` hands the line to the grammar);
* ``take``: the reading of the grammar's tokens, with located errors;
* ``text``: the canonical text.

The verifier's checks of each kind (a die exists, a channel exists, ...) are in
:mod:`.constraints`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from moec.ir.errors import Location, ProgramError
from moec.ir.stream.operands import number, operand, parse_token_set, string, token_set
from moec.ir.stream.values import HOST_CHANNEL, Block, SliceRef, TensorRef, TokenSet

if TYPE_CHECKING:  # Lark's tokens are only annotated here: a run that parses nothing skips Lark
    from lark import Token

#: What :attr:`Kind.decode` returns for text the fast reader must leave to the grammar.
NOT_CANONICAL: Final = object()

#: ``where(group)``: the location of a regex group of the line being read.
Where = Callable[[int], Location]
#: ``name(s)``: a name as printed (bare, or quoted when it would lex as something else).
Namer = Callable[[str], str]

_N = r"([A-Za-z_][A-Za-z0-9_.\-]*)"
_D = r"([0-9]+)"
_T = r"([0-9]+(?:\.\.[0-9]+)?(?:,[0-9]+(?:\.\.[0-9]+)?)*)"
_C = _N + r"(?::(?:e([0-9]+)|(sh)):s([0-9]+))?"
_SLICE_RE = re.compile(r":(?:e([0-9]+)|sh):s([0-9]+)")


@dataclass(frozen=True, eq=False)
class Kind:
    """One operand kind (see the module docstring); compared by identity.

    ``decode(m, g, where, reserved)``: the value from regex groups ``g, g+1, ...`` of a canonical
    line, or :data:`NOT_CANONICAL` (a name the printer would quote). ``take(toks, k, filename,
    skip)``: the value from grammar tokens ``toks[k:]`` and the index after them; a glued operand
    (lead or keyword) starts ``skip`` characters into ``toks[k]``. ``text(value, name)``: the
    canonical text of the value, without its keyword.
    """

    name: str
    #: the operand's placeholder in usage messages (``load sK <- chN ...``)
    usage: str
    #: the Python type of the value (documentation)
    type: Any
    pattern: str
    decode: Callable[[re.Match[str], int, Where, re.Pattern[str]], Any] = field(repr=False)
    take: Callable[[list[Token], int, str, int], tuple[Any, int]] = field(repr=False)
    text: Callable[[Any, Namer], str] = field(repr=False)
    keywords: Mapping[str, str] = field(default_factory=dict)
    lead: bool = False
    grammar: str = ""
    #: for an integer operand read from one group and printed as itself (with an optional
    #: prefix, ``s3``): the text around the value, so the printer and the fast reader generated
    #: for a form handle it inline instead of calling ``text``/``decode``
    inline: str | None = None

    @property
    def groups(self) -> int:
        """Regex groups of :attr:`pattern`."""
        return re.compile(self.pattern).groups


# --- readings shared by several kinds -------------------------------------------------------------
def _name_of(tok: Token, filename: str) -> str:
    return string(tok, filename) if tok.type == "STRING" else str(tok)


def _int_group(m: re.Match[str], g: int, where: Where, reserved: re.Pattern[str]) -> int:
    return int(m.group(g))


def _name_group(m: re.Match[str], g: int, where: Where, reserved: re.Pattern[str]) -> Any:
    name = m.group(g)
    return NOT_CANONICAL if reserved.fullmatch(name) else name


def _take_number(toks: list[Token], k: int, filename: str, skip: int) -> tuple[int, int]:
    return number(toks[k], skip, filename), k + 1


def _take_name(toks: list[Token], k: int, filename: str, skip: int) -> tuple[str, int]:
    return _name_of(toks[k], filename), k + 1


def _number_kind(name: str, keyword: str, terminal: str) -> Kind:
    return Kind(
        name, "N", int, _D, _int_group, _take_number, lambda v, n: str(v), {keyword: terminal},
        inline="{}",
    )  # fmt: skip


def _name_kind(name: str, usage: str) -> Kind:
    return Kind(
        name, usage, str, _N, _name_group, _take_name, lambda v, n: n(v), grammar="(NAME | STRING)"
    )


# --- slot --------------------------------------------------------------------------------------
def _take_slot(toks: list[Token], k: int, filename: str, skip: int) -> tuple[int, int]:
    tok = toks[k]
    arg, where = operand(tok, skip, filename)
    if arg[:1] == "s" and arg[1:].isascii() and arg[1:].isdigit():
        return int(arg[1:]), k + 1
    raise ProgramError(f"bad slot {arg!r} after '{tok.type.lower()}', expected s0, s1, ...", where)


SLOT = Kind(
    "slot", "sK", int, r"s([0-9]+)", _int_group, _take_slot, lambda v, n: f"s{v}", lead=True,
    inline="s{}",
)  # fmt: skip


# --- die and channel ---------------------------------------------------------------------------
DIE = Kind(
    "die", "DIE", int, _D, _int_group, _take_number, lambda v, n: str(v),
    {"->": "TO", "<-": "FROM"}, inline="{}",
)  # fmt: skip


def _decode_channel(m: re.Match[str], g: int, where: Where, reserved: re.Pattern[str]) -> int:
    return HOST_CHANNEL if m.group(g + 1) is not None else int(m.group(g))


def _take_channel(toks: list[Token], k: int, filename: str, skip: int) -> tuple[int, int]:
    tok = toks[k]
    arg, where = operand(tok, skip, filename)
    if arg == "host":
        return HOST_CHANNEL, k + 1
    if arg.startswith("ch"):
        return number(tok, str(tok).index("ch") + 2, filename), k + 1
    raise ProgramError(f"bad channel {arg!r} after '<-', expected ch0, ch1, ... or host", where)


def channel_text(ch: int) -> str:
    """A channel operand: ``ch3``, or ``host`` for :data:`HOST_CHANNEL`."""
    return "host" if ch == HOST_CHANNEL else f"ch{ch}"


CHANNEL = Kind(
    "channel", "chN", int, r"(?:ch([0-9]+)|(host))", _decode_channel, _take_channel,
    lambda v, n: channel_text(v), {"<-": "FROM_CHAN"},
)  # fmt: skip


# --- content of a slot ---------------------------------------------------------------------------
def _decode_content(m: re.Match[str], g: int, where: Where, reserved: re.Pattern[str]) -> Any:
    name, expert, shared, slice_ = m.group(g, g + 1, g + 2, g + 3)
    if reserved.fullmatch(name):
        return NOT_CANONICAL
    if slice_ is None:
        return TensorRef(name)
    return SliceRef(name, None if shared else int(expert), int(slice_))


def _take_content(toks: list[Token], k: int, filename: str, skip: int) -> tuple[Any, int]:
    name = _name_of(toks[k], filename)
    if k + 1 < len(toks) and toks[k + 1].type == "SLICE":
        m = _SLICE_RE.fullmatch(str(toks[k + 1]))
        assert m is not None  # the terminal's regex guarantees it
        expert = int(m.group(1)) if m.group(1) is not None else None
        return SliceRef(name, expert, int(m.group(2))), k + 2
    return TensorRef(name), k + 1


def content_text(c: SliceRef | TensorRef, name: Namer) -> str:
    if isinstance(c, SliceRef):
        e = "sh" if c.expert is None else f"e{c.expert}"
        return f"{name(c.layer)}:{e}:s{c.slice}"
    return name(c.name)


CONTENT = Kind(
    "content", "TENSOR|LAYER:eE:sJ", SliceRef | TensorRef, _C, _decode_content, _take_content,
    content_text, grammar="(NAME | STRING) SLICE?",
)  # fmt: skip


# --- tokens and activation blocks ----------------------------------------------------------------
def tokens_text(ts: TokenSet) -> str:
    if not ts:
        raise ProgramError("cannot print an empty token set")
    return ts.text()


def _decode_tokens(m: re.Match[str], g: int, where: Where, reserved: re.Pattern[str]) -> TokenSet:
    return parse_token_set(m.group(g), where(g))


def _take_tokens(toks: list[Token], k: int, filename: str, skip: int) -> tuple[TokenSet, int]:
    return token_set(toks[k], filename), k + 1


TOKENS = Kind(
    "tokens", "T", TokenSet, _T, _decode_tokens, _take_tokens, lambda v, n: tokens_text(v),
    {"tokens": "TOKENS"},
)  # fmt: skip


def _decode_block(m: re.Match[str], g: int, where: Where, reserved: re.Pattern[str]) -> Any:
    which, layer, tokens = m.group(g, g + 1, g + 2)
    if reserved.fullmatch(layer):
        return NOT_CANONICAL
    return Block(layer, "x" if which == "x" else "y", parse_token_set(tokens, where(g + 2)))


def _take_block(toks: list[Token], k: int, filename: str, skip: int) -> tuple[Block, int]:
    tok = toks[k]
    arg, where = operand(tok, skip, filename)
    if arg not in ("x", "y"):
        raise ProgramError(
            f"bad activation block {arg!r} after '{tok.type.lower()}', expected x (layer "
            "input) or y (layer output)",
            where,
        )
    layer = _name_of(toks[k + 1], filename)
    return Block(layer, "x" if arg == "x" else "y", token_set(toks[k + 2], filename)), k + 3


BLOCK = Kind(
    "block", "x|y LAYER tokens T", Block, rf"([xy])[ \t]+{_N}[ \t]+tokens[ \t]+{_T}",
    _decode_block, _take_block,
    lambda b, n: f"{b.which} {n(b.layer)} tokens {tokens_text(b.tokens)}",
    lead=True, grammar="(NAME | STRING) TOKENS",
)  # fmt: skip


# --- counts and names ----------------------------------------------------------------------------
BYTES = _number_kind("bytes", "bytes", "BYTES")
FLOPS = _number_kind("flops", "flops", "FLOPS")
COUNT = _number_kind("count", "count", "COUNT")
EVENT = _name_kind("event", "EVENT")
LAYER = _name_kind("layer", "LAYER")
ISLAND = _name_kind("island", "ISLAND")

#: Every operand kind, by name.
KINDS: dict[str, Kind] = {
    k.name: k
    for k in (SLOT, DIE, CHANNEL, CONTENT, TOKENS, BLOCK, BYTES, FLOPS, COUNT, EVENT, LAYER, ISLAND)
}
