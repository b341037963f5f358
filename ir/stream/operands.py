"""Operands of ``.msp`` instructions: numbers, token sets, strings, with exact locations.

A keyword and its operand are one terminal (``bytes 4096``, ``tokens 0..15,18``); these helpers
split it, check the operand and raise :class:`ProgramError` at the operand's own column.
"""

from __future__ import annotations

import json
import operator
import re
from typing import TYPE_CHECKING

from moec.ir.errors import Location, ProgramError
from moec.ir.stream.values import TokenSet

if TYPE_CHECKING:  # Lark's tokens are only annotated here: a run that parses nothing skips Lark
    from lark import Token


def loc(filename: str, tok: Token) -> Location:
    return Location(filename, tok.line or 0, tok.column or 0)


_TOKSET_RE = re.compile(r"[0-9]+(?:\.\.[0-9]+)?(?:,[0-9]+(?:\.\.[0-9]+)?)*")


def operand(tok: Token, skip: int, filename: str) -> tuple[str, Location]:
    """The operand of a keyword terminal (``bytes 42`` -> ``42``) and where it starts."""
    text = str(tok)
    arg = text[skip:].lstrip(" \t")
    return arg, Location(filename, tok.line or 0, (tok.column or 0) + len(text) - len(arg))


def number(tok: Token, skip: int, filename: str) -> int:
    arg, loc = operand(tok, skip, filename)
    if arg.isascii() and arg.isdigit():
        return int(arg)
    keyword = str(tok)[:skip].strip()
    raise ProgramError(
        f"bad number {arg!r} after '{keyword}', expected a non-negative integer", loc
    )


def ranges(tok: Token, skip: int, filename: str) -> list[tuple[int, int]]:
    """The inclusive ranges of a keyword's token-set operand (``cols 0..15,18``), as written."""
    return parse_ranges(*operand(tok, skip, filename))


def parse_ranges(arg: str, where: Location) -> list[tuple[int, int]]:
    """Inclusive ranges of token-set text ``arg`` (``0..15,18``) in written order."""
    if not _TOKSET_RE.fullmatch(arg):
        raise ProgramError(
            f"bad token set {arg!r}, expected indices and ranges like 0..15,18,20..31 (no spaces)",
            where,
        )
    if ".." not in arg:
        values = list(map(int, arg.split(",")))
        return list(zip(values, values, strict=True))
    out: list[tuple[int, int]] = []
    for part in arg.split(","):
        a, _, b = part.partition("..")
        lo = int(a)
        hi = int(b) if b else lo
        if hi < lo:
            raise ProgramError(f"empty range {part} in token set: {lo} > {hi}", where)
        out.append((lo, hi))
    return out


def token_set(tok: Token, filename: str) -> TokenSet:
    """A TOKENS operand (``tokens 0..15,18``) as a canonical :class:`TokenSet`."""
    return parse_token_set(*operand(tok, 6, filename))


def parse_token_set(arg: str, where: Location) -> TokenSet:
    """Token-set text as a canonical :class:`TokenSet`; a token listed twice is an error."""
    if ".." not in arg and arg.replace(",", "").isdigit() and arg.isascii() and ",," not in arg:
        # the common case, single indices: canonical when each exceeds the previous by 2 or
        # more (sorted, no duplicate, no two adjacent); checked with C-level maps
        try:
            values = list(map(int, arg.split(",")))
        except ValueError:  # a leading or trailing comma: parse_ranges says so
            values = []
        if values and all(map(operator.lt, map((1).__add__, values), values[1:])):
            return TokenSet(tuple(zip(values, values, strict=True)))
    spans = parse_ranges(arg, where)
    if all(a > pb + 1 for (_, pb), (a, _) in zip(spans, spans[1:], strict=False)):
        return TokenSet(tuple(spans))
    ts = TokenSet.normalize(spans)  # unsorted or adjacent: accept it unless a token repeats
    if sum(b - a + 1 for a, b in spans) != len(ts):
        raise ProgramError(f"token set {arg} lists a token twice", where)
    return ts


def string(tok: Token, filename: str) -> str:
    try:
        value = json.loads(str(tok), strict=False)
    except json.JSONDecodeError as err:
        raise ProgramError(f"bad string {tok}: {err.msg}", loc(filename, tok)) from None
    assert isinstance(value, str)
    return value
