"""Malformed stream programs: each error names its place (file:line:col, the line, a caret) and
says what was expected. Every case edits the valid example of docs/isa.md in one spot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from moec.ir.errors import Location, ProgramError, ScheduleError
from moec.ir.stream import load_program, parse_program, print_program, verify_program
from moec.ir.stream.verify import SramError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = next(  # the ISA reference's main example (the online-choice one has no static part)
    b
    for b in re.findall(r"```msp\n(.*?)```", (ROOT / "docs" / "isa.md").read_text(), re.S)
    if 'program "isa-example"' in b
)
FILE = "prog.msp"


def edit(old: str, new: str, text: str = EXAMPLE) -> str:
    assert text.count(old) >= 1, f"example lacks {old!r}"
    return text.replace(old, new, 1)


def where(text: str, needle: str, nth: int = 0) -> Location:
    """Location of the ``nth`` occurrence of ``needle`` in ``text``."""
    pos = -1
    for _ in range(nth + 1):
        pos = text.index(needle, pos + 1)
    line = text.count("\n", 0, pos) + 1
    return Location(FILE, line, pos - (text.rfind("\n", 0, pos) + 1) + 1)


def fails(text: str) -> ProgramError:
    with pytest.raises(ProgramError) as info:
        verify_program(parse_program(text, FILE))
    return info.value


def check(text: str, message: str, at: Location) -> ProgramError:
    err = fails(text)
    assert message in err.message, err.message
    assert err.where == at, f"{err.where} != {at}: {err}"
    src_line = text.splitlines()[at.line - 1]
    assert err.detail.splitlines() == [f"  {src_line}", "  " + " " * (at.column - 1) + "^"]
    assert str(err).startswith(f"{at}: ")
    return err


def test_example_is_valid() -> None:
    verify_program(parse_program(EXAMPLE, FILE))


# --- syntax ---------------------------------------------------------------------------------------
def test_unknown_opcode() -> None:
    text = edit("  free s1\n", "  fre s1\n")
    check(text, "unknown opcode 'fre', expected one of load, send, recv", where(text, "fre s1"))


def test_too_many_operands() -> None:
    text = edit("  free s1\n", "  free s1 s0\n")
    check(text, "too many operands for 'free', expected: free sK", where(text, "s0\n"))


def test_missing_operands() -> None:
    text = edit("  gemm s0 tokens 0..7\n", "  gemm s0\n")
    check(text, "'gemm' is missing operands, expected: gemm sK tokens T", where(text, "gemm s0\n"))


def test_bad_number() -> None:
    text = edit("bytes 24576", "bytes 24x76")
    check(
        text,
        "bad number '24x76' after 'bytes', expected a non-negative integer",
        where(text, "24x76"),
    )


def test_bad_token_set() -> None:
    text = edit("tokens 0..7", "tokens 0..7,a")
    check(text, "bad token set '0..7,a'", where(text, "0..7,a"))


def test_unterminated_string() -> None:
    text = edit('program "isa-example"', 'program "isa-example')
    check(text, "unterminated string", where(text, '"isa-example'))


def test_missing_comma_in_declaration_says_what_was_expected() -> None:
    text = edit("experts = 2,", "experts = 2")
    check(text, "unexpected name 'top_k', expected ',', '}'", where(text, "top_k"))


def test_missing_moe_key() -> None:
    text = edit("hidden = 64, ", "")
    check(text, "MoE layer L0 is missing hidden", where(text, "moe L0"))


def test_truncated_file() -> None:
    text = EXAMPLE[: EXAMPLE.index("runtime L0")] + "runtime L0 {\n  strategy"
    lines = text.splitlines()
    err = fails(text)
    assert "unexpected end of file, expected a name, a string" in err.message
    assert err.where == Location(FILE, len(lines), len(lines[-1]) + 1)


# --- references ----------------------------------------------------------------------------------
def test_undefined_tensor() -> None:
    text = edit("load s1 <- ch0 attn0.w", "load s1 <- ch0 attn9.w")
    check(text, "undefined tensor attn9.w", where(text, "load s1"))


def test_unknown_die() -> None:
    text = edit("die 1 {", "die 7 {")
    check(text, "unknown die 7 in die stream, expected 0..3", where(text, "die 7"))


def test_unknown_slot() -> None:
    text = edit("  free s1\n", "  free s5\n")
    check(text, "unknown slot s5 on die 0, expected s0..s1", where(text, "free s5"))


def test_slice_out_of_range() -> None:
    text = edit("load s0 <- ch0 L0:e0:s1", "load s0 <- ch0 L0:e0:s2")
    check(text, "slice 2 out of range in L0:e0:s2, layout has 2", where(text, "load s0", 1))


def test_unknown_target() -> None:
    text = edit('target "fsedp-2x2"', 'target "fsedp-9x9"')
    check(text, "bad target: unknown target 'fsedp-9x9'", where(text, "target"))


def test_precision_table_size() -> None:
    text = edit("precision [fp16, int8]", "precision [fp16]")
    check(text, "precision table of L0 has 1 entries, expected 2", where(text, "runtime L0"))


# --- slots -------------------------------------------------------------------------------------
def test_slot_used_before_load() -> None:
    text = edit("  recv s1 <- 0 L0:e0:s1 bytes 24576\n  gemm s1", "  gemm s1")
    text = edit("  send s0 -> 1 bytes 24576\n  free s0\n  signal", "  free s0\n  signal", text)
    check(text, "gemm uses slot s1 on die 1 before it is loaded", where(text, "gemm s1"))


def test_slot_used_after_free() -> None:
    text = edit("  free s1\n  load s0", "  free s1\n  gemm s1 tokens 0\n  load s0")
    check(text, "gemm uses slot s1 on die 0 after it was freed at line 21", where(text, "gemm s1"))


def test_double_free() -> None:
    text = edit("  free s1\n", "  free s1\n  free s1\n")
    err = check(text, "double free of slot s1 on die 0", where(text, "free s1", 1))
    assert "already freed at line 21" in err.message


def test_load_into_occupied_slot() -> None:
    text = edit("  free s1\n", "")
    text = edit("  load s0 <- ch0 L0:e0:s0", "  load s1 <- ch0 L0:e0:s0", text)
    check(text, "load into slot s1 on die 0, which still holds attn0.w", where(text, "load s1", 1))


def test_sram_overflow() -> None:
    text = edit(
        'target "fsedp-2x2" { sram_mib_per_die = 4 }',
        'target "fsedp-2x2" { sram_mib_per_die = 0.05 }',
    )
    text = edit("  free s1\n", "", text)
    text = edit(
        "  load s0 <- ch0 L0:e0:s1 bytes 24576\n",
        "  free s1\n  load s0 <- ch0 L0:e0:s1 bytes 24576\n",
        text,
    )
    err = check(text, "does not fit SRAM: die 0 peaks at 65536 bytes", where(text, "load s0"))
    assert "target fsedp-2x2 has 52429 bytes per die" in err.message
    assert isinstance(err, SramError) and isinstance(err, ScheduleError)


def test_runtime_pool_must_fit_sram() -> None:
    # the static part fits, but the runtime part may fill every free slot of the pool
    text = edit(
        'target "fsedp-2x2" { sram_mib_per_die = 4 }',
        'target "fsedp-2x2" { sram_mib_per_die = 0.05 }',
    )
    err = check(
        text, "does not fit SRAM: die 0 declares 2 slots of 32768 bytes", where(text, "slots die 0")
    )
    assert "which runtime L0 may fill" in err.message


# --- transfers and synchronization --------------------------------------------------------------
def test_send_to_non_neighbour() -> None:
    text = edit("send s0 -> 1", "send s0 -> 3")
    check(
        text, "send between die 0 and die 3, which are not neighbours", where(text, "send s0 -> 3")
    )


def test_unmatched_send() -> None:
    text = edit("  recv s1 <- 0 L0:e0:s1 bytes 24576\n", "  load s1 <- ch1 L0:e0:s1 bytes 24576\n")
    check(text, "send from die 0 to die 1 has no matching recv on die 1", where(text, "send s0", 1))


def test_mismatched_bytes() -> None:
    text = edit("recv s0 <- 0 L0:e0:s0 bytes 24576", "recv s0 <- 0 L0:e0:s0 bytes 24000")
    err = check(text, "recv does not match its send", where(text, "recv s0"))
    assert "sent L0:e0:s0 of 24576 bytes, received L0:e0:s0 of 24000 bytes" in err.message


def test_wait_never_satisfied() -> None:
    text = edit("wait e0-done count 1", "wait e0-done count 2")
    check(text, "wait e0-done count 2 can never complete", where(text, "wait e0-done"))


def test_deadlock() -> None:
    # die 0 now waits for die 1's signal before sending; die 1 signals only after receiving
    text = edit("  load s0 <- ch0 L0:e0:s0", "  wait go count 1\n  load s0 <- ch0 L0:e0:s0")
    text = edit("  wait e0-done count 1\n", "  wait e0-done count 1\n  signal go\n", text)
    err = check(
        text, "deadlock: die 0 blocks at line 22 on 'wait go count 1'", where(text, "wait go")
    )
    assert "die 1 blocks at line 41 on 'recv s0 <- 0 L0:e0:s0 bytes 24576'" in err.message


# --- files ---------------------------------------------------------------------------------------
def test_load_program_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.msp"
    path.write_text(edit("  free s1\n", "  fre s1\n"))
    with pytest.raises(ProgramError) as info:
        load_program(path)
    assert str(info.value).startswith(f"{path}:21:3: unknown opcode 'fre'")
    with pytest.raises(ProgramError, match="cannot read stream program"):
        load_program(tmp_path / "missing.msp")


def test_unprintable_program_is_an_error() -> None:
    p = parse_program(EXAMPLE, FILE)
    p.runtime[0].params["bad key"] = 1
    with pytest.raises(ProgramError, match="parameter key 'bad key' is not a valid name"):
        print_program(p)


def test_inspect_command_reports_a_bad_program_in_one_located_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = pytest.importorskip("moec.compiler.cli.main").main
    good, bad = tmp_path / "good.msp", tmp_path / "bad.msp"
    good.write_text(EXAMPLE)
    bad.write_text(edit("  free s1\n", "  fre s1\n"))
    assert main(["inspect", str(good), "--json"]) == 0
    assert '"program": "isa-example"' in capsys.readouterr().out
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"moec: error: {bad}:21:3: unknown opcode 'fre'")
    assert "Traceback" not in err
