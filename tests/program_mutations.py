"""Seeded mutations of compiled stream programs, for the fuzz tests of the verifier and ``run``.

Each mutation edits one line of a program's text the way a hand edit or a bad generator would:
a number replaced by an edge value, a line deleted, duplicated or moved, an opcode swapped, a
slot, die, channel or token set pushed out of range, a runtime parameter given a value of the
wrong type or range, a tensor's shape changed. :func:`mutants` yields ``(description, text)``
pairs deterministically from a seed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator

OPCODES = ("load", "send", "recv", "gemm", "act", "accum", "free", "signal", "wait", "dense", "moe")
_NUMBER = re.compile(r"(?<![A-Za-z_.])-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")
_EDGE_NUMBERS = ("0", "1", "-1", "2147483648", "100000000000000000000", "3", "1e20", "0.5")
_BAD_VALUES = ('"bogus"', "[]", "[1, 2]", "3.5", "true", "-1", "0", '[["x"]]', "1e30")


def _number(rng: random.Random, line: str) -> str | None:
    hits = list(_NUMBER.finditer(line))
    if not hits:
        return None
    m = rng.choice(hits)
    new = rng.choice(_EDGE_NUMBERS)
    return line[: m.start()] + new + line[m.end() :]


def _operand(rng: random.Random, line: str) -> str | None:
    subs = [
        (r"\bs\d+\b", lambda: f"s{rng.choice([99, 4, 0, 100000])}"),
        (r"\bch\d+\b", lambda: f"ch{rng.choice([9, 4, 99])}"),
        (r"-> ?\d+", lambda: f"-> {rng.choice([0, 7, 99])}"),
        (r"<- ?\d+", lambda: f"<- {rng.choice([0, 7, 99])}"),
        (r"tokens [0-9.,]+", lambda: f"tokens {rng.choice(['0..99999', '5,5', '3..1', '0'])}"),
        (r":e\d+:", lambda: f":e{rng.choice([999, 8, 0])}:"),
        (r":s\d+\b", lambda: f":s{rng.choice([999, 1, 0])}"),
    ]
    rng.shuffle(subs)
    for pattern, make in subs:
        if re.search(pattern, line):
            return re.sub(pattern, make(), line, count=1)
    return None


def _opcode(rng: random.Random, line: str) -> str | None:
    stripped = line.lstrip()
    first = stripped.split(" ", 1)[0]
    if first not in OPCODES:
        return None
    indent = line[: len(line) - len(stripped)]
    return indent + rng.choice([o for o in OPCODES if o != first]) + stripped[len(first) :]


def _param(rng: random.Random, line: str) -> str | None:
    m = re.match(r"(\s*(?:param|annotate) [A-Za-z_]+ = ).*", line)
    if m:
        return m.group(1) + rng.choice(_BAD_VALUES)
    m = re.match(r"(\s*skip [A-Za-z_]+ threshold ).*", line)
    if m:
        return m.group(1) + rng.choice(["-1", "2", "1e30", "0"])
    m = re.match(r"(\s*precision \[).*", line)
    if m:
        return m.group(1) + rng.choice(['"fp8"]', "fp16]", "]"])
    return None


def _shape(rng: random.Random, line: str) -> str | None:
    m = re.match(r"(tensor \S+ \S+ )\[[^\]]*\](.*)", line)
    if not m:
        return None
    return m.group(1) + rng.choice(["[3, 1e20, 64]", "[0, 32, 64]", "[3, 32]", "[]"]) + m.group(2)


def mutants(text: str, seed: int, count: int) -> Iterator[tuple[str, str]]:
    """``count`` mutants of ``text``, each one edit, reproducible from ``seed``."""
    rng = random.Random(seed)
    lines = text.splitlines()
    editable = [i for i, line in enumerate(lines) if line.strip() and not line.startswith("moec ")]
    ops = ("number", "operand", "opcode", "param", "shape", "delete", "duplicate", "move")
    made = 0
    attempts = 0
    while made < count and attempts < count * 50:
        attempts += 1
        op = rng.choice(ops)
        i = rng.choice(editable)
        out = list(lines)
        if op == "delete":
            del out[i]
        elif op == "duplicate":
            out.insert(i, lines[i])
        elif op == "move":
            j = rng.choice(editable)
            out.insert(j, out.pop(i))
        else:
            edit = {"number": _number, "operand": _operand, "opcode": _opcode, "param": _param,
                    "shape": _shape}[op](rng, lines[i])  # fmt: skip
            if edit is None or edit == lines[i]:
                continue
            out[i] = edit
        made += 1
        yield f"{op} at line {i + 1}: {lines[i].strip()[:60]!r}", "\n".join(out) + "\n"
