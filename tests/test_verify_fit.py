"""The fit-only verification of a slice choice's candidates (``verify_fit``): the same verdict
as :func:`verify_program` on whether a program fits its target, and the candidate kept (the
program the user gets) verified in full."""

from __future__ import annotations

import re

import pytest
from slice_cases import phi_case
from test_stream_errors import EXAMPLE  # the ISA reference's main example

import moec.expert_slices as es
import moec.fsedp_slices as fs
from moec.compiler.lower import lower as lower_strategy
from moec.ir.errors import ProgramError, ScheduleError
from moec.ir.stream import parse_program, print_program, verify_program
from moec.ir.stream.verify import verify_fit

SMALL = (
    'target "fsedp-2x2" { sram_mib_per_die = 4 }',
    'target "fsedp-2x2" { sram_mib_per_die = 0.05 }',
)


def _edits(*pairs: tuple[str, str]) -> str:
    text = EXAMPLE
    for old, new in pairs:
        assert old in text, f"example lacks {old!r}"
        text = text.replace(old, new, 1)
    return text


#: programs that do not fit: the static part's peak, a runtime pool, a micro-slice over its slot
OVER = {
    "static peak": _edits(
        SMALL, ("  free s1\n", ""),
        ("  load s0 <- ch0 L0:e0:s1 bytes 24576\n", "  free s1\n  load s0 <- ch0 L0:e0:s1 bytes 24576\n"),
    ),
    "runtime pool": _edits(SMALL),
    "micro-slice": _edits(("slots die 3 count 2 bytes 32768", "slots die 3 count 2 bytes 20000")),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(OVER))
def test_a_program_that_does_not_fit_fails_both_checks_alike(case: str) -> None:
    with pytest.raises(ScheduleError) as full:
        verify_program(parse_program(OVER[case], "p.msp"))
    with pytest.raises(ScheduleError) as fit:
        verify_fit(parse_program(OVER[case], "p.msp"))
    assert str(fit.value) == str(full.value) and "does not fit SRAM" in str(full.value)


def test_the_example_passes_both_and_only_the_full_check_reads_the_declarations() -> None:
    verify_program(parse_program(EXAMPLE, "p.msp"))
    verify_fit(parse_program(EXAMPLE, "p.msp"))
    twice = re.sub(r"(tensor (\S+) [^\n]*\n)", r"\1\1", EXAMPLE, count=1)
    with pytest.raises(ProgramError, match="declared twice"):
        verify_program(parse_program(twice, "p.msp"))
    verify_fit(parse_program(twice, "p.msp"))  # a declaration does not decide the fit


def _spied(monkeypatch: pytest.MonkeyPatch, module: object) -> list[object]:
    """The programs ``module``'s ``verify_program`` is called with (and still checks)."""
    seen: list[object] = []

    def spy(p: object, target: object = None) -> None:
        seen.append(p)
        verify_program(p, target)  # type: ignore[arg-type]

    monkeypatch.setattr(module, "verify_program", spy)
    return seen


@pytest.mark.parametrize(
    ("strategy", "tokens", "candidates"), [("fsedp", 256, "bound"), ("ep", 64, "measured")]
)
def test_the_choice_verifies_the_program_it_keeps_in_full(
    strategy: str, tokens: int, candidates: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, ref, trace = phi_case(64.0, tokens)
    base = lower_strategy(module, ref, strategy, {}, trace)
    chooser = fs if strategy == "fsedp" else es
    seen = _spied(monkeypatch, chooser)
    choice = chooser.choose_slices(module, ref, strategy, {}, trace, base)
    assert choice is not None and choice.program is not None
    assert len(getattr(choice, candidates)) > 1
    assert seen == [choice.program]
    # the same program as that count's fully verified lowering
    own = lower_strategy(module, ref, strategy, {"slices": str(choice.count)}, trace)
    assert print_program(choice.program) == print_program(own)


@pytest.mark.parametrize("strategy", ["fsedp", "ep"])
def test_the_lowerings_own_program_is_verified_in_full_when_no_choice_is_made(
    strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module, ref, trace = phi_case(64.0, 64)
    seen = _spied(monkeypatch, fs)
    monkeypatch.setattr(fs, "choose_slices", lambda *a, **k: None)
    monkeypatch.setattr(es, "choose_slices", lambda *a, **k: None)
    program, run = fs.lower_run(module, ref, strategy, {}, trace)
    assert run is None and seen == [program]
    assert print_program(program) == print_program(lower_strategy(module, ref, strategy, {}, trace))
