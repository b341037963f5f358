"""The FSE-DP scheduler's instruction makers build what the instructions' constructors build."""

from __future__ import annotations

import pytest

from moec.backends.interp.expand import fsedp_instrs as mk
from moec.ir.stream.program import (
    Accum,
    Act,
    Free,
    Gemm,
    Load,
    Recv,
    Send,
    SliceRef,
    TokenSet,
)

TOKENS = TokenSet(((0, 3), (7, 7)))
REF = SliceRef("moe0", 5, 2)
CASES = [
    (mk.gemm(3, TOKENS), Gemm(3, TOKENS)),
    (mk.act(3, TOKENS), Act(3, TOKENS)),
    (mk.accum(3, TOKENS), Accum(3, TOKENS)),
    (mk.free(4), Free(4)),
    (mk.load(1, 2, REF, 49152), Load(1, 2, REF, 49152)),
    (mk.send(6, 49152, 1), Send(6, 49152, 1)),
    (mk.recv(6, 49152, 1, REF), Recv(6, 49152, 1, REF)),
]


@pytest.mark.parametrize(("made", "built"), CASES, ids=[type(b).__name__ for _, b in CASES])
def test_a_maker_builds_what_the_constructor_builds(made: object, built: object) -> None:
    assert type(made) is type(built)
    assert made == built and hash(made) == hash(built)
    assert repr(made) == repr(built)
    assert made.loc is None  # type: ignore[attr-defined]


def test_a_maker_builds_a_new_object_each_call() -> None:
    # timing and serving code tell instructions apart by identity
    assert mk.free(4) is not mk.free(4)
    assert mk.gemm(3, TOKENS) is not mk.gemm(3, TOKENS)


def test_a_changed_field_is_seen() -> None:
    assert mk.gemm(3, TOKENS) != Gemm(4, TOKENS)
    assert mk.recv(6, 49152, 1, REF) != Recv(6, 49152, 1, SliceRef("moe0", 5, 3))


def test_a_twin_of_another_layout_is_refused() -> None:
    from moec.ir.stream.opcodes import Instruction

    class Short(Instruction):
        __slots__ = ("slot", "loc")

    with pytest.raises(TypeError, match="layout"):
        mk._twin_of(Gemm, Short, ("slot", "tokens"))
    with pytest.raises(TypeError, match="default to None"):
        mk._twin_of(Load, mk._Load, ("slot", "channel", "content"))  # nbytes has no default
