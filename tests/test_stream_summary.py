"""``summarize``/``render``: the numbers behind ``moec inspect prog.msp``, on the docs example."""

from __future__ import annotations

import json
import re
from pathlib import Path

from moec.ir.stream import parse_program, render, summarize

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = next(  # the ISA reference's main example (the online-choice one has no static part)
    b
    for b in re.findall(r"```msp\n(.*?)```", (ROOT / "docs" / "isa.md").read_text(), re.S)
    if 'program "isa-example"' in b
)


def test_summary_of_docs_example() -> None:
    s = summarize(parse_program(EXAMPLE, "isa.msp"))
    assert s["program"] == "isa-example" and s["target"] == "fsedp-2x2"
    assert s["instructions"] == 32 and s["static"] is False
    die0, die1, die2, die3 = s["dies"]
    assert die2["counts"] == die3["counts"] == {"moe": 1}  # the runtime part runs on every die
    assert die0["counts"] == {
        "load": 3, "send": 2, "gemm": 2, "act": 2, "accum": 2, "free": 3, "signal": 1,
        "dense": 1, "moe": 1,
    }  # fmt: skip
    assert die0["peak_sram_bytes"] == 32768  # the dense weights are freed before slices load
    assert die0["dram_bytes"] == 8192 + 2 * 24576
    assert die0["dram_bytes_by_channel"] == {"ch0": 8192 + 2 * 24576}
    assert die0["link_bytes"] == {"0->1": 2 * 24576}
    assert die0["dense_flops"] == 131072
    assert die1["dram_bytes"] == 0 and die1["link_bytes"] == {}
    assert die1["peak_sram_bytes"] == 32768
    assert s["links"] == {"0->1": 49152}
    (layer,) = s["layers"]
    assert layer["strategy"] == "fsedp"
    assert layer["params"]["trajectory"] == [0, 1, 3, 2]
    assert layer["precision"] == ["fp16", "int8"]
    assert layer["skip"] == {"rule": "caee", "threshold": 0.8}
    assert layer["annotations"] == ["importance"]
    json.dumps(s)  # JSON-able


def test_render_is_plain_text_tables() -> None:
    text = render(summarize(parse_program(EXAMPLE, "isa.msp")))
    assert "program 'isa-example' for target 'fsedp-2x2': 32 instructions" in text
    assert "48.00 KiB" in text and "fsedp" in text and "\x1b[" not in text
    assert render(summarize(parse_program(EXAMPLE, "isa.msp"))) == text  # deterministic


def test_runtime_program_table_says_what_is_known_and_shortens_lists() -> None:
    """A program with a runtime part shows its slots, says SRAM and DRAM come at run time (not
    "0 B"), and long per-expert parameter lists print as their repeating unit."""
    import contextlib
    import io
    import tempfile

    from moec.compiler.cli.main import main

    with tempfile.TemporaryDirectory() as d:
        prog = f"{d}/q.msp"
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["compile", "qwen3-30b-a3b", "-o", prog, "--strategy", "fsedp-paired"]) == 0
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main(["inspect", prog]) == 0
    text = out.getvalue()
    assert "at run time" in text and " 0 B " not in text
    assert "3.00 MiB" in text  # the slot pool
    assert "channels=[0, 1, 2, 3] x32" in text and "slice_bytes=[786432] x12" in text


def test_short_lists() -> None:
    from moec.ir.stream.summary import _short

    assert _short([1, 2, 3]) == "[1, 2, 3]"
    assert _short([5] * 20) == "[5] x20"
    assert _short(list(range(20))) == "[0, 1, 2, 3, ... (20 values)]"
