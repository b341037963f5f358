"""A program's precision table and its weights companion agree, or the run is a located error.

``assign-precision`` quantizes experts in the weights and writes the plan into the program's
``precision [...]`` table; the companion records the same plan (``ai.moec::MoE`` attribute
``precision``), and the interpreter's numerics refuse a table that says otherwise: editing the
table to fp16 would otherwise change timing but not outputs.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from moec.backends.interp.numerics import check_precision, load_weights, weights_precision
from moec.ir.companion import PRECISION_ATTR
from moec.ir.errors import Location, ProgramError
from moec.ir.stream import load_program, parse_program

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = "annotate-importance,assign-precision{tiers=0.4/0.7}"


def compile_tiny(tmp_path: Path, passes: str | None) -> Path:
    main = pytest.importorskip("moec.compiler.cli.main").main
    out = tmp_path / "q.msp"
    args = ["compile", str(ROOT / "models" / "tiny_moe.onnx"), "-o", str(out), "--strategy", "ep"]
    assert main(args + (["--passes", passes] if passes else [])) == 0
    return out


def run(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    main = pytest.importorskip("moec.compiler.cli.main").main
    rc = main(["run", str(path), "--json"])
    return rc, capsys.readouterr().err


def precision_line(text: str, layer: str) -> tuple[int, str]:
    """(line number, text) of the precision table of runtime ``layer``."""
    lines = text.splitlines()
    start = lines.index(f"runtime {layer} {{")
    k = next(k for k in range(start, len(lines)) if lines[k].startswith("  precision ["))
    return k + 1, lines[k]


def test_companion_records_the_plan_the_table_names(tmp_path: Path) -> None:
    path = compile_tiny(tmp_path, PIPELINE)
    p = load_program(path)
    recorded = weights_precision(load_weights(p, None))
    assert set(recorded) == {m.name for m in p.layers}
    for r in p.runtime:
        assert r.precision and recorded[r.layer] == r.precision
        assert len(set(r.precision)) > 1  # a real mix, so an edit below changes one expert
    check_precision(p, recorded)


def test_a_program_without_a_plan_records_nothing(tmp_path: Path) -> None:
    p = load_program(compile_tiny(tmp_path, None))
    model = load_weights(p, None)
    assert weights_precision(model) == {}
    assert not any(a.name == PRECISION_ATTR for n in model.graph.node for a in n.attribute)


def test_consistent_program_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = run(compile_tiny(tmp_path, PIPELINE), capsys)
    assert rc == 0, err


def test_edited_table_is_a_located_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = compile_tiny(tmp_path, PIPELINE)
    text = path.read_text()
    line, old = precision_line(text, "moe0")
    names = old.strip().removeprefix("precision [").removesuffix("]").split(", ")
    e = next(k for k, n in enumerate(names) if n != "fp16")
    held = names[e]
    names[e] = "fp16"  # say fp16 where the weights are quantized
    path.write_text(text.replace(old, f"  precision [{', '.join(names)}]", 1))
    rc, err = run(path, capsys)
    assert rc == 2
    assert err.startswith(f"moec: error: {path}:{line}:3: runtime moe0: the precision table says ")
    assert f"expert {e} is fp16, but the weights file holds it at {held}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3


def test_table_on_unquantized_weights_is_an_error(tmp_path: Path) -> None:
    path = compile_tiny(tmp_path, None)
    p = load_program(path)
    text = path.read_text()
    assert "precision [" not in text
    E = p.layers[0].experts
    table = ", ".join(["int8"] + ["fp32"] * (E - 1))
    text = text.replace(
        "runtime moe1 {\n  strategy ep\n",
        f"runtime moe1 {{\n  strategy ep\n  precision [{table}]\n",
    )
    edited = parse_program(text, str(path))
    with pytest.raises(ProgramError) as info:
        check_precision(edited, weights_precision(load_weights(p, None)))
    line = text.splitlines().index(f"  precision [{table}]") + 1
    assert info.value.where == Location(str(path), line, 3)
    assert "expert 0 is int8, but the weights file holds it at fp32" in info.value.message


def test_dropped_table_is_an_error(tmp_path: Path) -> None:
    path = compile_tiny(tmp_path, PIPELINE)
    text = path.read_text()
    _, old = precision_line(text, "moe1")
    edited = parse_program(text.replace(old + "\n", "", 1), str(path))
    recorded = weights_precision(load_weights(load_program(path), None))
    with pytest.raises(ProgramError, match=r"layer dtype \(no precision table\) says expert"):
        check_precision(edited, recorded)


def test_companion_attribute_is_one_name_per_expert(tmp_path: Path) -> None:
    p = load_program(compile_tiny(tmp_path, PIPELINE))
    model = load_weights(p, None)
    for node in model.graph.node:
        if node.op_type == "MoE":
            attr = next(a for a in node.attribute if a.name == PRECISION_ATTR)
            assert attr.type == onnx.AttributeProto.STRINGS
            assert len(attr.strings) == p.layers[0].experts
