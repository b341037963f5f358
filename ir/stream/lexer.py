"""A faster drop-in for Lark's per-state lexer, so 100k-instruction programs parse in seconds.

Lark's contextual lexer matches every ignored token (whitespace, comments) as a token of its own
and updates a line counter after each one; a stream program is half whitespace, so that doubles
the lexing work. :class:`FastBasicLexer` skips all ignored text with one regex built from the
grammar's own ``%ignore`` terminals, counts newlines in C, and then matches the real token exactly
as Lark does (same scanner, same keyword callbacks, same priorities). Any input it cannot match is
handed back to Lark's own code path, so errors are Lark's, unchanged.

Plugged in through Lark's ``_plugins={"ContextualLexer": ...}`` hook (the one lark-cython uses);
:func:`lark_options` returns nothing when the installed Lark lacks the internals this relies on,
and parsing then runs on Lark's stock lexer: slower, same results.
"""

from __future__ import annotations

import re
from typing import Any

from lark import Token
from lark.lexer import BasicLexer, ContextualLexer, LexerState


class FastBasicLexer(BasicLexer):
    """Lark's BasicLexer with ignored text skipped in one regex match."""

    def __init__(self, conf: Any, comparator: Any = None) -> None:
        super().__init__(conf, comparator)
        ignore = [conf.terminals_by_name[n].pattern.to_regexp() for n in sorted(conf.ignore)]
        self._skip = re.compile("(?:" + "|".join(ignore) + ")*") if ignore else None

    def next_token(self, lex_state: LexerState, parser_state: Any = None) -> Token:
        line_ctr = lex_state.line_ctr
        text = lex_state.text
        if isinstance(text, str):  # Lark < 1.2 passes the string itself
            src, end = text, len(text)
        else:
            src, end = text.text, text.end
        pos = line_ctr.char_pos
        if self._skip is not None:
            stop = self._skip.match(src, pos, end).end()  # type: ignore[union-attr]
            if stop != pos:
                newlines = src.count("\n", pos, stop)
                if newlines:
                    line_ctr.line += newlines
                    line_ctr.line_start_pos = src.rindex("\n", pos, stop) + 1
                line_ctr.char_pos = pos = stop
                line_ctr.column = pos - line_ctr.line_start_pos + 1
        if pos >= end:
            raise EOFError(self)
        res = self.scanner.match(text, pos)
        if not res or res[1] in self.ignore_types:
            return super().next_token(lex_state, parser_state)  # Lark's path: errors
        value, type_ = res
        t = Token(type_, value, pos, line_ctr.line, line_ctr.column)
        if "\n" in value:
            line_ctr.feed(value)
        else:
            line_ctr.char_pos = pos + len(value)
            line_ctr.column += len(value)
        callback = self.callback.get(type_)
        if callback is not None:
            t = callback(t)
        lex_state.last_token = t
        return t


class FastContextualLexer(ContextualLexer):
    """Lark's contextual lexer, built from :class:`FastBasicLexer` per parser state."""

    BasicLexer = FastBasicLexer


def lark_options() -> dict[str, Any]:
    """Extra ``Lark(...)`` keyword arguments that install the fast lexer, if supported."""
    if not (hasattr(ContextualLexer, "BasicLexer") and hasattr(BasicLexer, "scanner")):
        return {}
    return {"_plugins": {"ContextualLexer": FastContextualLexer}}
