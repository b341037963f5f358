"""Adding an instruction is one declaration and one handler per interpreter concern.

``probe sK tokens T flops F`` is declared here and nowhere else: a debugging probe that reads the
activated intermediate of the slice in slot K (its latest ``gemm``) for tokens T and costs F FLOPs
on the die's compute unit. With only the declaration below (text form, operand kinds, verifier
constraints), one timing handler and one numerics handler, it parses (fast reader and grammar),
prints, verifies and runs (timing and numerics), with no other file touched.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pytest

from moec.backends.interp import simulate
from moec.backends.interp.numerics import load_weights, seeded_inputs
from moec.backends.interp.numerics_ops import NUMERICS, LayerExec
from moec.backends.interp.opgraph import COMPUTE, TIMING, Builder, DieState
from moec.backends.interp.timing import run_timing
from moec.backends.interp.timing_ops import computed, slice_compute
from moec.ir.cost import dense_time
from moec.ir.errors import Location, ProgramError
from moec.ir.stream import (
    OPCODES,
    Gemm,
    Instruction,
    OpcodeError,
    Program,
    TokenSet,
    instruction,
    load_program,
    operand,
    parse_program,
    print_program,
    verify_program,
)
from moec.ir.stream.constraints import DieWalk, computes_on_slice
from moec.ir.stream.kinds import FLOPS, SLOT, TOKENS
from moec.ir.stream.verify import resolve_target

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = next(  # the ISA reference's main example (the online-choice one has no static part)
    b
    for b in re.findall(r"```msp\n(.*?)```", (ROOT / "docs" / "isa.md").read_text(), re.S)
    if 'program "isa-example"' in b
)


# --- the whole definition of the new instruction -------------------------------------------------
def probes_something(w: DieWalk, i: Probe) -> None:
    """A probe costs something: at least one FLOP."""
    if i.flops <= 0:
        raise w.fail(f"probe needs flops > 0, found {i.flops}", i.loc)


@instruction("probe", "probe $slot tokens $tokens flops $flops",
             verify=(computes_on_slice, probes_something))  # fmt: skip
@dataclass(frozen=True)
class Probe(Instruction):
    """Read the activated intermediate of the slice in ``slot`` for ``tokens``."""

    slot: int = operand(SLOT)
    tokens: TokenSet = operand(TOKENS)
    flops: int = operand(FLOPS)
    loc: Location | None = field(default=None, compare=False)


@TIMING.register("probe")
def time_probe(b: Builder, s: DieState, i: Probe) -> None:
    """``flops`` on the compute unit (the cost model's dense time), after the slot's data, in
    order with the die's compute."""
    op, *_ = slice_compute(
        b, s, i, "probe", lambda t, die, n, d, w, gated, prec: dense_time(t, die, i.flops, prec)
    )
    computed(s, i.slot, op)


SEEN: list[tuple[int, str, np.ndarray]] = []


@NUMERICS.register("probe")
def run_probe(ex: LayerExec, die: int, i: Probe) -> None:
    """Records what the slot's latest gemm computed for the tokens."""
    got = ex.hidden[die].get(i.slot)
    if got is not None and got[0] == i.tokens and got[1] is not None:
        SEEN.append((die, str(ex.slots[die][i.slot]), got[1].copy()))


# -------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="module")
def _withdraw_probe() -> Iterator[None]:
    """The probe lives as long as this module's tests: other modules see the core ISA."""
    yield
    OPCODES.withdraw("probe")


def with_probe(text: str, after: str, line: str) -> str:
    assert after in text
    return text.replace(after, f"{after}{line}", 1)


PROBED = with_probe(EXAMPLE, "  gemm s0 tokens 0..7\n", "  probe s0 tokens 0..7 flops 4096\n")


def test_it_parses_prints_and_verifies() -> None:
    p = parse_program(PROBED, "probe.msp")
    (probe,) = [i for i in p.streams[0].instrs if isinstance(i, Probe)]
    assert probe == Probe(0, TokenSet.span(0, 8), 4096)
    assert probe.loc == Location(
        "probe.msp", PROBED.splitlines().index("  probe s0 tokens 0..7 flops 4096") + 1, 3
    )
    assert print_program(p) == PROBED
    verify_program(p)
    odd = PROBED.replace("probe s0 tokens 0..7 flops 4096", "probe\ts0  tokens 7,0..6 flops   4096")
    assert parse_program(odd, "probe.msp") == p  # not canonical: read by the grammar
    with mock.patch("moec.ir.stream.parser.decode", lambda tok, filename: None):
        assert parse_program(PROBED, "probe.msp") == p  # canonical, by the grammar alone


def test_its_errors_are_located() -> None:
    def fails(text: str, message: str) -> None:
        with pytest.raises(ProgramError) as info:
            verify_program(parse_program(text, "probe.msp"))
        assert message in str(info.value)
        assert isinstance(info.value.where, Location) and info.value.where.column == 3

    fails(PROBED.replace("flops 4096", "flops 0"), "probe needs flops > 0, found 0")
    fails(PROBED.replace("probe s0", "probe s1"), "probe uses slot s1 on die 0 after it was freed")
    fails(PROBED.replace("tokens 0..7 flops", "tokens 0..99 flops"), "token 99 out of range")
    with pytest.raises(
        ProgramError, match="'probe' is missing operands, expected: probe sK tokens T flops N"
    ):
        parse_program(PROBED.replace(" flops 4096", ""), "probe.msp")


def test_it_runs_in_timing() -> None:
    p = parse_program(PROBED, "probe.msp")
    p.runtime = []  # fully static: drop the runtime part and its placeholders
    for st in p.streams:
        st.instrs = [i for i in st.instrs if i.opcode != "moe"]
    target = resolve_target(p)
    assert target is not None
    tl = run_timing(p, target)
    (k,) = [k for k, i in enumerate(tl.instr) if isinstance(i, Probe)]
    assert tl.kind[k] == COMPUTE and tl.die[k] == 0
    assert tl.end[k] - tl.start[k] == pytest.approx(dense_time(target, 0, 4096, "fp16"))
    gemm = next(j for j, i in enumerate(tl.instr) if isinstance(i, Gemm) and tl.die[j] == 0)
    assert tl.start[k] >= tl.end[gemm]  # in order on the die's compute unit


def test_it_runs_in_numerics(tmp_path: Path) -> None:
    main = pytest.importorskip("moec.compiler.cli.main").main
    path = tmp_path / "tiny.msp"
    assert main(["compile", str(ROOT / "models" / "tiny_moe.onnx"), "-o", str(path)]) == 0
    program = load_program(path)
    feeds = seeded_inputs(load_weights(program, None), program.layers[0].tokens)
    base = simulate(program, inputs=feeds)
    static: Program = base.expanded  # the expansion, as a static program, with a probe per gemm
    for st in static.streams:
        out: list[Any] = []
        for i in st.instrs:
            out.append(i)
            if isinstance(i, Gemm):
                out.append(Probe(i.slot, i.tokens, 1000))
        st.instrs = out
    text = print_program(static)
    assert (
        text.count("\n  probe s")
        == sum(isinstance(i, Probe) for st in static.streams for i in st.instrs)
        > 0
    )
    SEEN.clear()
    probed = simulate(parse_program(text, str(path)), inputs=feeds)
    assert probed.outputs is not None and base.outputs is not None
    for name, y in base.outputs.items():
        np.testing.assert_array_equal(probed.outputs[name], y)  # a probe changes no number
    assert len(SEEN) == text.count("\n  probe s")  # every probe ran, on real activations
    assert all(np.isfinite(h).all() and h.size for _, _, h in SEEN)
    compute = sum(
        b
        for b, name in zip(probed.timeline.busy, probed.timeline.resource_names, strict=True)
        if "compute" in name
    )
    before = sum(
        b
        for b, name in zip(base.timeline.busy, base.timeline.resource_names, strict=True)
        if "compute" in name
    )
    extra = sum(
        dense_time(probed.timeline.target, d, 1000, program.layers[0].dtype) for d, _, _ in SEEN
    )
    assert compute - before == pytest.approx(extra)


def test_an_opcode_without_a_handler_cannot_fall_through() -> None:
    @instruction("orphan", "orphan $slot")
    @dataclass(frozen=True)
    class Orphan(Instruction):
        slot: int = operand(SLOT)
        loc: Location | None = field(default=None, compare=False)

    try:
        with pytest.raises(OpcodeError, match="no timing handler for opcode 'orphan'"):
            TIMING.check()
        with pytest.raises(OpcodeError, match="no numerics handler for opcode 'orphan'"):
            NUMERICS.by_class()
        p = parse_program(PROBED, "probe.msp")
        with pytest.raises(OpcodeError, match="no timing handler for opcode 'orphan'"):
            run_timing(p, resolve_target(p))  # type: ignore[arg-type]
    finally:
        OPCODES.withdraw("orphan")
    TIMING.check()
    NUMERICS.check()
