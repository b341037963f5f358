"""The instructions the FSE-DP scheduler writes, built at half the cost of their constructors.

An instruction is a frozen slotted dataclass (:mod:`moec.ir.stream.instructions`); its generated
``__init__`` sets each field through ``object.__setattr__`` by name, which is about half of
what writing a schedule costs (a layer of Qwen3-30B-A3B on 8x8 dies writes about 600k
instructions). The makers here set the same fields through the class's slot descriptors
instead: the same class, the same field values (every field the scheduler does not give is
its default, None), so an object equal to the constructor's, printed the same
(``tests/test_fsedp_instrs.py`` compares them). Each call builds a new object, as the
constructor does: the timing and serving code tell instructions apart by identity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

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

_new = object.__new__


def _setters(cls: type, given: tuple[str, ...]) -> tuple[list[Any], list[Any]]:
    """The slot setters of ``cls``'s fields ``given`` (in that order), and of the others, each
    of which must default to None (what the makers set them to)."""
    rest = []
    for f in dataclasses.fields(cls):
        if f.name not in given:
            if f.default is not None:
                raise TypeError(f"{cls.__name__}.{f.name} does not default to None")
            rest.append(getattr(cls, f.name).__set__)
    return [getattr(cls, n).__set__ for n in given], rest


def _slot_tokens(cls: type) -> Callable[[int, TokenSet], Any]:
    (set_slot, set_tokens), (set_loc,) = _setters(cls, ("slot", "tokens"))

    def make(slot: int, tokens: TokenSet) -> Any:
        i: Any = _new(cls)
        set_slot(i, slot)
        set_tokens(i, tokens)
        set_loc(i, None)
        return i

    make.__doc__ = f"``{cls.__name__}(slot, tokens)``"
    return make


def _free() -> Callable[[int], Free]:
    (set_slot,), (set_loc,) = _setters(Free, ("slot",))

    def make(slot: int) -> Free:
        """``Free(slot)``"""
        i = _new(Free)
        set_slot(i, slot)
        set_loc(i, None)
        return i

    return make


def _load() -> Callable[[int, int, Content, int], Load]:
    (s_slot, s_channel, s_content, s_nbytes), (s_loc,) = _setters(
        Load, ("slot", "channel", "content", "nbytes")
    )

    def make(slot: int, channel: int, content: Content, nbytes: int) -> Load:
        """``Load(slot, channel, content, nbytes)``"""
        i = _new(Load)
        s_slot(i, slot)
        s_channel(i, channel)
        s_content(i, content)
        s_nbytes(i, nbytes)
        s_loc(i, None)
        return i

    return make


def _send() -> Callable[[int, int, int], Send]:
    (s_peer, s_nbytes, s_slot), (s_block, s_loc) = _setters(Send, ("peer", "nbytes", "slot"))

    def make(peer: int, nbytes: int, slot: int) -> Send:
        """``Send(peer, nbytes, slot)``"""
        i = _new(Send)
        s_peer(i, peer)
        s_nbytes(i, nbytes)
        s_slot(i, slot)
        s_block(i, None)
        s_loc(i, None)
        return i

    return make


def _recv() -> Callable[[int, int, int, Content], Recv]:
    (s_peer, s_nbytes, s_slot, s_content), (s_block, s_loc) = _setters(
        Recv, ("peer", "nbytes", "slot", "content")
    )

    def make(peer: int, nbytes: int, slot: int, content: Content) -> Recv:
        """``Recv(peer, nbytes, slot, content)``"""
        i = _new(Recv)
        s_peer(i, peer)
        s_nbytes(i, nbytes)
        s_slot(i, slot)
        s_content(i, content)
        s_block(i, None)
        s_loc(i, None)
        return i

    return make


gemm = _slot_tokens(Gemm)
act = _slot_tokens(Act)
accum = _slot_tokens(Accum)
free = _free()
load = _load()
send = _send()
recv = _recv()
