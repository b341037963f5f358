"""Turn Lark's exceptions into located, human :class:`ProgramError` messages.

Each error says where (``file:line:col``, the source line and a caret) and what was expected, in
the ISA's words: "unknown opcode", "'gemm' is missing operands, expected: gemm sK tokens T",
"too many operands for 'free'", "unterminated string", or the terminals the parser could take
(found by feeding each candidate to a copy of the parser state).
"""

from __future__ import annotations

from typing import Any

from lark import Token, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from moec.ir.errors import Location, ProgramError
from moec.ir.stream.opcodes import OPCODES

#: Human names of the grammar's terminals, for "expected ..." messages.
TERMINAL_NAMES: dict[str, str] = {
    "INT": "an integer",
    "FLOAT": "a float",
    "NAME": "a name",
    "STRING": "a string",
    "SLOT": "a slot (s0, s1, ...)",
    "CHAN": "a DRAM channel (ch0, ch1, ...)",
    "WHICH": "an activation block (x or y)",
    "SLICE": "a micro-slice suffix (:e3:s1 or :sh:s0)",
    "TOKENS": "'tokens' and a token set (tokens 0..15,18)",
    "COLS": "'cols' and column ranges (cols 0..63,64..127)",
    "BYTES": "'bytes N'",
    "FLOPS": "'flops N'",
    "COUNT": "'count N'",
    "TO": "'-> DIE'",
    "FROM": "'<- DIE'",
    "FROM_CHAN": "'<- chN'",
    "LBRACE": "'{'",
    "RBRACE": "'}'",
    "LSQB": "'['",
    "RSQB": "']'",
    "COMMA": "','",
    "EQUAL": "'='",
    "$END": "end of file",
}


def usage() -> dict[str, str]:
    """How each instruction is written, for "expected ..." messages (from the opcode table)."""
    return {d.opcode: d.usage() for d in OPCODES.defs()}


def _source_line(text: str, line: int) -> str:
    lines = text.splitlines()
    return lines[line - 1] if 0 < line <= len(lines) else ""


def with_context(err: ProgramError, text: str) -> ProgramError:
    """Attach the source line and a caret to a located error that has no detail yet."""
    if err.detail or not isinstance(err.where, Location) or err.where.line <= 0:
        return err
    src = _source_line(text, err.where.line)
    caret = " " * (max(err.where.column, 1) - 1) + "^"
    err.detail = f"  {src}\n  {caret}"
    return err


def _expected(names: set[str] | frozenset[str]) -> str:
    human = []
    for n in sorted(names):
        if n in TERMINAL_NAMES:
            human.append(TERMINAL_NAMES[n])
        elif n.lower() in OPCODES:
            human.append(f"'{n.lower()}'")
        elif n.isupper() and n.isalpha():
            human.append(f"'{n.lower()}'")
        else:
            human.append(n)
    human = sorted(set(human))
    if len(human) > 14:
        human = human[:14] + ["..."]
    return ", ".join(human)


def _found(tok: Token) -> str:
    if tok.type == "$END":
        return "end of file"
    kind = TERMINAL_NAMES.get(tok.type, "")
    kind = kind.removeprefix("an ").removeprefix("a ")
    return f"{kind} {str(tok)!r}" if kind and not kind.startswith("'") else repr(str(tok))


def _instruction_of_line(text: str, line: int) -> str | None:
    """The opcode that starts source line ``line``, if one does."""
    words = _source_line(text, line).split()
    return words[0] if words and words[0] in OPCODES else None


def _parse_stack(err: UnexpectedToken) -> list[Any]:
    state = getattr(err, "state", None)
    return list(getattr(state, "value_stack", None) or [])


def _accepts(err: UnexpectedToken) -> set[str]:
    """The terminals the parser could really take next.

    The contextual lexer reports every terminal of a (merged) LALR state; feeding each candidate
    to a copy of the parser state keeps only those that survive the pending reductions. The
    parse is already lost, so the copies may share (and disturb) its values.
    """
    state = getattr(err, "state", None)
    fallback = set(err.expected) | set(getattr(err, "accepts", None) or ())
    if state is None or not hasattr(state, "copy"):
        return fallback
    out: set[str] = set()
    for name in state.parse_conf.states[state.position]:
        if not name.isupper():
            continue
        trial = state.copy(deepcopy_values=False)
        try:
            trial.feed_token(Token(name, ""), name == "$END")
        except UnexpectedToken:
            continue
        except Exception:  # a rule callback objected to partial input: the token was accepted
            pass
        out.add(name)
    return out or fallback


def _token_error(err: UnexpectedToken, text: str, line_only: bool) -> tuple[str, int, int]:
    tok = err.token
    line, col = err.line, err.column
    forms = usage()
    if tok.type == "$END":
        line, col = _end_position(text)
    expected = _accepts(err)
    opcodes = {op.upper() for op in OPCODES}
    stack = _parse_stack(err)
    in_die = line_only or any(isinstance(v, Token) and v.type == "DIE" for v in stack)
    pending = [v for v in stack if isinstance(v, Token) and v.type in opcodes]
    if in_die and pending and not expected & opcodes:  # inside an instruction
        op_tok = pending[-1]
        op = op_tok.type.lower()
        if tok.type in opcodes or tok.type in ("RBRACE", "$END"):
            where = (op_tok.line or line, op_tok.column or col)
            return f"'{op}' is missing operands, expected: {forms[op]}", *where
        if "$END" in expected:  # the instruction is complete (a line parsed on its own)
            return f"too many operands for '{op}', expected: {forms[op]}", line, col
        return f"unexpected {_found(tok)} in '{op}', expected: {forms[op]}", line, col
    if in_die and tok.type != "$END":  # between two instructions
        word = (str(tok).split() or [""])[0]
        op_here = _instruction_of_line(text, line)
        if op_here is not None and not str(tok).startswith(op_here):
            return f"too many operands for '{op_here}', expected: {forms[op_here]}", line, col
        if tok.type == "NAME" and word in forms:
            return f"'{word}' is missing operands, expected: {forms[word]}", line, col
        return (
            f"unknown opcode {word!r}, expected one of {', '.join(OPCODES)} or '}}'",
            line,
            col,
        )
    return f"unexpected {_found(tok)}, expected {_expected(expected)}", line, col


def lark_error(
    err: UnexpectedInput, text: str, filename: str, line_only: bool = False
) -> ProgramError:
    """A :class:`ProgramError` for Lark's ``err`` on ``text`` (no source context attached yet).

    ``line_only``: ``text`` is one instruction line parsed on its own (start symbol ``instr``).
    """
    line, col = err.line, err.column
    if isinstance(err, UnexpectedToken):
        msg, line, col = _token_error(err, text, line_only)
    elif isinstance(err, UnexpectedCharacters):
        pos = err.pos_in_stream or 0
        ch = text[pos] if pos < len(text) else ""
        allowed = set(err.allowed or ())
        if ch == '"':
            msg = "unterminated string"
        elif allowed:
            msg = f"unexpected character {ch!r}, expected {_expected(allowed)}"
        else:
            msg = f"unexpected character {ch!r}"
    elif isinstance(err, UnexpectedEOF):
        line, col = _end_position(text)
        msg = f"unexpected end of file, expected {_expected(set(err.expected))}"
    else:
        msg = f"syntax error: {err}"
    return ProgramError(msg, Location(filename, line, col))


def _end_position(text: str) -> tuple[int, int]:
    lines = text.splitlines() or [""]
    return len(lines), len(lines[-1]) + 1
