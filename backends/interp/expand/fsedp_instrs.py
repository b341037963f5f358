"""The instructions the FSE-DP scheduler writes, built at a third of the cost of their constructors.

An instruction is a frozen slotted dataclass (:mod:`moec.ir.stream.instructions`); its generated
``__init__`` sets each field through ``object.__setattr__`` by name, which was about half of
what writing a schedule cost (a layer of Qwen3-30B-A3B on 8x8 dies writes about 600k
instructions). The makers here build each object as an instance of a *twin* class: the same
base (:class:`~moec.ir.stream.opcodes.Instruction`) and the same ``__slots__`` in the same
order, but not frozen, so its ``__init__`` stores the fields as plain attribute stores (the
fastest a slot is written), and then assigns the object its real class (which Python allows
between classes of one layout; :func:`_twin_of` checks the layouts match). The result is an
object of the instruction's class with the constructor's field values (every field the
scheduler does not give is its default, None), equal to the constructor's and printed the same
(``tests/test_fsedp_instrs.py`` compares them). Each call builds a new object, as the
constructor does: the timing and serving code tell instructions apart by identity.
"""

from __future__ import annotations

import dataclasses
from itertools import repeat
from typing import Any

from moec.ir.stream.opcodes import Instruction
from moec.ir.stream.program import (
    Accum,
    Act,
    Content,
    Free,
    Gemm,
    Load,
    Recv,
    Send,
    TokenSet,
)


def _twin_of(cls: type, twin: type, given: tuple[str, ...]) -> type:
    """Check that ``twin`` can stand for ``cls``: the same base and slots, and every field of
    ``cls`` but ``given`` defaulting to None (what the twin sets them to). Returns ``cls``."""
    if cls.__bases__ != twin.__bases__ or cls.__slots__ != twin.__slots__:  # type: ignore[attr-defined]
        raise TypeError(f"{twin.__name__} does not have {cls.__name__}'s layout")
    for f in dataclasses.fields(cls):
        if f.name not in given and f.default is not None:
            raise TypeError(f"{cls.__name__}.{f.name} does not default to None")
    return cls


class _SliceOp(Instruction):
    """``cls(slot, tokens)`` for ``cls`` one of :class:`Gemm`, :class:`Act`, :class:`Accum`."""

    __slots__ = ("slot", "tokens", "loc")

    def __init__(self, cls: type, slot: int, tokens: TokenSet) -> None:
        self.slot = slot
        self.tokens = tokens
        self.loc = None
        self.__class__ = cls


class _Free(Instruction):
    __slots__ = ("slot", "loc")

    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.loc = None
        self.__class__ = Free


class _Load(Instruction):
    __slots__ = ("slot", "channel", "content", "nbytes", "loc")

    def __init__(self, slot: int, channel: int, content: Content, nbytes: int) -> None:
        self.slot = slot
        self.channel = channel
        self.content = content
        self.nbytes = nbytes
        self.loc = None
        self.__class__ = Load


class _Send(Instruction):
    __slots__ = ("peer", "nbytes", "slot", "block", "loc")

    def __init__(self, peer: int, nbytes: int, slot: int) -> None:
        self.peer = peer
        self.nbytes = nbytes
        self.slot = slot
        self.block = None
        self.loc = None
        self.__class__ = Send


class _Recv(Instruction):
    __slots__ = ("peer", "nbytes", "slot", "content", "block", "loc")

    def __init__(self, peer: int, nbytes: int, slot: int, content: Content) -> None:
        self.peer = peer
        self.nbytes = nbytes
        self.slot = slot
        self.content = content
        self.block = None
        self.loc = None
        self.__class__ = Recv


_GEMM, _ACT, _ACCUM = (_twin_of(c, _SliceOp, ("slot", "tokens")) for c in (Gemm, Act, Accum))
_twin_of(Free, _Free, ("slot",))
_twin_of(Load, _Load, ("slot", "channel", "content", "nbytes"))
_twin_of(Send, _Send, ("peer", "nbytes", "slot"))
_twin_of(Recv, _Recv, ("peer", "nbytes", "slot", "content"))


def slice_ops(out: list[Any], slot: int, tokens: TokenSet) -> None:
    """Append a slice compute's ``gemm``, ``act`` and ``accum`` of ``slot`` for ``tokens``."""
    out.append(_SliceOp(_GEMM, slot, tokens))
    out.append(_SliceOp(_ACT, slot, tokens))
    out.append(_SliceOp(_ACCUM, slot, tokens))


def gemm(slot: int, tokens: TokenSet) -> Gemm:
    """``Gemm(slot, tokens)``"""
    return _SliceOp(_GEMM, slot, tokens)  # type: ignore[return-value]


def act(slot: int, tokens: TokenSet) -> Act:
    """``Act(slot, tokens)``"""
    return _SliceOp(_ACT, slot, tokens)  # type: ignore[return-value]


def accum(slot: int, tokens: TokenSet) -> Accum:
    """``Accum(slot, tokens)``"""
    return _SliceOp(_ACCUM, slot, tokens)  # type: ignore[return-value]


#: ``Free(slot)``, ``Load(slot, channel, content, nbytes)``, ``Send(peer, nbytes, slot)``,
#: ``Recv(peer, nbytes, slot, content)``: calling the twin is the maker
free: Any = _Free
load: Any = _Load
send: Any = _Send
recv: Any = _Recv


def made(name: str, *columns: list[Any]) -> Any:
    """Instructions ``name`` (``gemm``, ``act``, ``accum``, ``free``, ``load``, ``send`` or
    ``recv``) of the makers' arguments given column by column, in one pass, as a list (each
    object new, as the makers make it)."""
    if name in _SLICE:
        return list(map(_SliceOp, repeat(_SLICE[name]), *columns))
    return list(map(_TWINS[name], *columns))


_SLICE = {"gemm": _GEMM, "act": _ACT, "accum": _ACCUM}
_TWINS: dict[str, Any] = {"free": _Free, "load": _Load, "send": _Send, "recv": _Recv}
