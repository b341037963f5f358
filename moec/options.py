"""Parsers for the ``KEY=VALUE`` options of the command line and the API (``--set``,
``--dims``). A module of its own so that commands that only run a program do not import the
compiler (and onnx) to read their options."""

from __future__ import annotations

from collections.abc import Sequence

from moec.ir.errors import MoecError

DEFAULT_TARGET = "fsedp-2x2"


def _scalar(raw: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def parse_overrides(items: Sequence[str]) -> tuple[tuple[str, int | float | str], ...]:
    """``["a=1", "b=x"]`` -> sorted ``(("a", 1), ("b", "x"))``."""
    out: dict[str, int | float | str] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise MoecError(f"expected KEY=VALUE, found {item!r}", "--set")
        out[key.strip()] = _scalar(raw.strip())
    return tuple(sorted(out.items()))


def parse_dims(items: Sequence[str]) -> dict[str, int]:
    """``["batch=2", "seq=8"]`` -> ``{"batch": 2, "seq": 8}``. A size may be 0 (an empty past
    cache); a layer that would get no tokens is refused where the tokens are inferred."""
    out: dict[str, int] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if not eq or not key.strip() or value < 0:
            raise MoecError(
                f"expected NAME=VALUE with VALUE an integer >= 0, found {item!r}", "--dims"
            )
        out[key.strip()] = value
    return out
