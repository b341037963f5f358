"""`moec run`: JSON schema, Chrome trace, --dump-expanded, determinism, one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from moec.compiler.cli.main import main
from moec.ir.routing import save_trace
from moec.ir.routing_synth import synth_zipf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "tiny.msp"
    assert main(["compile", "tiny_moe", "-o", str(out)]) == 0
    return out


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["run", *args])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_json_schema_and_trace(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "trace.json"
    code, out, _ = _run([str(tiny), "--json", "--trace-out", str(trace)], capsys)
    assert code == 0
    doc = json.loads(out)
    for key in (
        "latency_s",
        "layers",
        "peak_sram_bytes",
        "utilization",
        "dram_bytes",
        "link_bytes",
    ):
        assert key in doc
    assert [x["name"] for x in doc["layers"]] == ["moe0", "moe1"]
    assert all(x["latency_s"] > 0 for x in doc["layers"])
    assert len(doc["peak_sram_bytes"]) == 4
    assert set(doc["utilization"]) == {"compute", "dram", "links"}
    assert "0->1" in doc["utilization"]["links"]
    assert doc["outputs"]  # numerics ran (the program has weights)
    events = json.loads(trace.read_text())["traceEvents"]
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert names[(0, 0)] == "die 0 compute" and names[(1, 0)].startswith("ch0")
    assert names[(2, 0)] == "link 0->1"
    xs = [e for e in events if e["ph"] == "X"]
    assert xs and all(e["dur"] >= 0 and (e["pid"], e["tid"]) in names for e in xs)


def test_runs_are_byte_identical(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outs = []
    for k in range(2):
        trace = tmp_path / f"t{k}.json"
        code, out, _ = _run([str(tiny), "--json", "--seed", "4", "--trace-out", str(trace)], capsys)
        assert code == 0
        outs.append((out, trace.read_bytes()))
    assert outs[0] == outs[1]


def test_dump_expanded_runs_the_same(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exp = tiny.parent / "expanded.msp"
    code, a, _ = _run([str(tiny), "--json", "--dump-expanded", str(exp)], capsys)
    assert code == 0
    text = exp.read_text()
    assert "runtime" not in text and "moe moe0\n" not in text.replace("  moe moe0\n", "X")
    code, b, _ = _run([str(exp), "--json"], capsys)
    assert code == 0
    assert a == b
    # Written into another folder, it still finds its weights.
    other = tmp_path / "elsewhere" / "expanded.msp"
    other.parent.mkdir()
    assert _run([str(tiny), "--dump-expanded", str(other)], capsys)[0] == 0
    assert "weights" in other.read_text()
    code, c, err = _run([str(other), "--json"], capsys)
    assert code == 0, err
    assert c == b


def test_shape_only_routing_spec(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run([str(tiny), "--json", "--routing", "synth:zipf=1.2,seed=3"], capsys)
    assert code == 0
    doc = json.loads(out)
    assert "outputs" not in doc and doc["latency_s"] > 0


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0]


def test_trace_mismatch(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    save_trace(synth_zipf(2, 16, 2, 8, seed=0), bad)  # 16 experts, the model has 8
    out = tmp_path / "t.json"
    code, _, err = _run([str(tiny), "--routing", str(bad), "--trace-out", str(out)], capsys)
    _one_line_error(code, err, "bad.json", "8 experts", "16 experts")
    assert not out.exists()
    few = tmp_path / "few.json"
    save_trace(synth_zipf(1, 8, 2, 8, seed=0), few)
    code, _, err = _run([str(tiny), "--routing", str(few)], capsys)
    _one_line_error(code, err, "1 MoE layers", "has 2")


def test_sha256_mismatch(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prog = tmp_path / "p.msp"
    prog.write_text(tiny.read_text())
    weights = tmp_path / "tiny.msp.weights.onnx"
    weights.write_bytes((tiny.parent / "tiny.msp.weights.onnx").read_bytes() + b"\0")
    code, _, err = _run([str(prog), "--json"], capsys)
    _one_line_error(code, err, "sha256")


def test_does_not_fit_sram(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 30000 bytes of SRAM hold one 24576-byte slot, but EP streams through up to four
    prog = tmp_path / "p.msp"
    text = tiny.read_text().replace(
        'target "fsedp-2x2"', 'target "fsedp-2x2" { sram_bytes_per_die = 30000 }'
    )
    prog.write_text(text)
    (tmp_path / "tiny.msp.weights.onnx").write_bytes(
        (tiny.parent / "tiny.msp.weights.onnx").read_bytes()
    )
    out = tmp_path / "t.json"
    dump = tmp_path / "x.msp"
    code, _, err = _run(
        [str(prog), "--routing", "synth:seed=1", "--trace-out", str(out), "--dump-expanded",
         str(dump)], capsys,
    )  # fmt: skip
    # caught before any expansion: the pool the runtime part may fill is larger than SRAM
    assert code == 2
    first = err.strip().splitlines()[0]
    assert f"{prog}:29:1: does not fit SRAM: die 0 declares 4 slots of 24576 bytes" in first
    assert not out.exists() and not dump.exists()
    # a micro-slice bigger than its slot
    prog.write_text(
        re.sub(r"(slots die \d count \d) bytes 24576", r"\1 bytes 1000", tiny.read_text())
    )
    code, _, err = _run([str(prog), "--routing", "synth:seed=1"], capsys)
    assert code == 2
    assert "does not fit SRAM: a micro-slice of layer moe0 expert 0 needs" in err.splitlines()[0]


def test_declaration_disagrees_with_weights(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A layer declared with a shared expert the weights file lacks is rejected by `inspect`
    and `run` alike, before anything runs."""
    prog = tmp_path / "p.msp"
    text = tiny.read_text()
    assert "shared_ffn = 0," in text
    prog.write_text(text.replace("shared_ffn = 0,", "shared_ffn = 64,", 1))
    weights = tiny.parent / "tiny.msp.weights.onnx"
    (tmp_path / weights.name).write_bytes(weights.read_bytes())
    for cmd in (["inspect", str(prog)], ["run", str(prog)]):
        capsys.readouterr()
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert err.startswith("moec: error: ") and "Traceback" not in err
        assert "disagree (shared_ffn 64 vs 0" in err, err


def test_trace_ends_where_the_run_does(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """DRAM and link latencies (which hold no resource) are drawn too, as async slices."""
    trace = tmp_path / "trace.json"
    code, out, _ = _run([str(tiny), "--json", "--trace-out", str(trace)], capsys)
    assert code == 0
    latency_us = json.loads(out)["latency_s"] * 1e6
    events = json.loads(trace.read_text())["traceEvents"]
    ends = [e["ts"] + e.get("dur", 0.0) for e in events if e["ph"] in ("X", "e")]
    assert max(ends) == pytest.approx(latency_us, rel=1e-9)
    begins = {e["id"]: e for e in events if e["ph"] == "b"}
    ends_by_id = {e["id"]: e for e in events if e["ph"] == "e"}
    assert begins and begins.keys() == ends_by_id.keys()
    assert all(e["cat"] == "latency" and e["name"].startswith("latency ") for e in begins.values())
    assert all(ends_by_id[k]["ts"] >= b["ts"] for k, b in begins.items())
