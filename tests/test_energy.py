"""Energy: micro programs against hand arithmetic, the run report's and bench rows' energy
fields, and the energy model's overrides and TOML form."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from moec.backends.interp import simulate
from moec.compiler.cli.main import main
from moec.ir.cost.energy import (
    accum_energy,
    act_energy,
    gemm_energy,
    load_energy,
    static_energy,
    transfer_energy,
)
from moec.ir.energy import D2D_PJ_PER_BIT, DRAM_PJ_PER_BIT, PARTS
from moec.ir.errors import TargetError
from moec.ir.hardware import DRAM_KINDS
from moec.ir.stream import (
    Accum,
    Act,
    Block,
    DieStream,
    Free,
    Gemm,
    Instr,
    Load,
    MoEDecl,
    Program,
    Recv,
    Send,
    SliceLayout,
    SliceRef,
    SlotPool,
    TargetRef,
    TokenSet,
)
from moec.ir.target import PRESETS, load_target

HIDDEN, FFN, TOKENS = 64, 128, 16
SLICE = SliceRef("moe0", 0, 0)
SLICE_BYTES = 3 * HIDDEN * FFN * 2  # one fp16 slice covering the whole expert
PJ = 1e-12


def _program(target: str, streams: dict[int, list[Instr]]) -> Program:
    dies = load_target(target).num_dies
    layer = MoEDecl("moe0", 4, 1, HIDDEN, FFN, TOKENS, "x", "y")
    return Program(
        "t", TargetRef(target), layers=[layer], layouts=[SliceLayout.even("moe0", FFN, 1)],
        slots=[SlotPool(d, 2, SLICE_BYTES) for d in range(dies)],
        streams=[DieStream(d, streams.get(d, [])) for d in range(dies)],
    )  # fmt: skip


def _dynamic(report: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in report.items() if k != "static"}


def test_load_from_own_channel_is_dram_plus_sram_write() -> None:
    t = load_target("fsedp-2x2")
    r = simulate(_program("fsedp-2x2", {0: [Load(0, 0, SLICE, SLICE_BYTES), Free(0)]}))
    e = r.report.energy_breakdown_j
    # by hand: DDR4 15 pJ/bit read, 12.5 pJ/byte SRAM write, no link crossed
    assert e["dram"] == SLICE_BYTES * 8 * 15.0 * PJ
    assert e["sram"] == SLICE_BYTES * 12.5 * PJ
    assert e["d2d"] == 0.0 and e["compute"] == 0.0 and e["host"] == 0.0
    assert e["dram"] == load_energy(t, 0, 0, SLICE_BYTES)["dram"]
    # static: 4 dies x 0.5 W + 4 channels x 0.5 W over the run
    assert e["static"] == pytest.approx(r.report.latency_s * 4.0, rel=1e-12)
    assert e["static"] == pytest.approx(static_energy(t, r.report.latency_s), rel=1e-12)


def _ucie_wire(nbytes: int) -> int:
    """Bytes on a UCIe link of the fsedp presets (68-byte flits: 64 of payload, 4 of framing)."""
    return -(-nbytes // 64) * 68


def test_remote_load_over_two_hops_charges_each_link() -> None:
    t = load_target("fsedp-3x3")  # channels on the corner dies 0, 2, 6, 8
    assert t.hops(0, 2) == 2
    r = simulate(_program("fsedp-3x3", {2: [Load(0, 0, SLICE, SLICE_BYTES), Free(0)]}))
    e = r.report.energy_breakdown_j
    assert e["d2d"] == pytest.approx(2 * _ucie_wire(SLICE_BYTES) * 8 * 0.5 * PJ, rel=1e-12)
    assert _dynamic(e) == pytest.approx(
        {**load_energy(t, 0, 2, SLICE_BYTES), "compute": 0.0, "host": 0.0}, rel=1e-12
    )
    per_die = r.report.energy_per_die_j
    # DRAM on the channel's die, one link on each transmitting die (0->1, 1->2), SRAM at 2
    assert per_die[0]["dram"] > 0 and per_die[2]["dram"] == 0.0
    assert per_die[0]["d2d"] == per_die[1]["d2d"] == _ucie_wire(SLICE_BYTES) * 8 * 0.5 * PJ
    assert per_die[2]["sram"] == SLICE_BYTES * 12.5 * PJ


def test_send_recv_pair_is_one_link_and_sram_read_and_write() -> None:
    t = load_target("fsedp-2x2")
    n = TOKENS * HIDDEN * 2
    x = Block("moe0", "x", TokenSet.span(0, TOKENS))
    r = simulate(_program("fsedp-2x2", {0: [Send(1, n, block=x)], 1: [Recv(0, n, block=x)]}))
    e = r.report.energy_breakdown_j
    assert e["d2d"] == _ucie_wire(n) * 8 * 0.5 * PJ
    assert e["sram"] == n * 12.5 * PJ + n * 12.5 * PJ
    assert _dynamic(e) == pytest.approx(
        {**transfer_energy(t, 0, 1, n), "dram": 0.0, "compute": 0.0, "host": 0.0}, rel=1e-12
    )
    assert r.report.energy_per_die_j[1]["sram"] == n * 12.5 * PJ


def test_gemm_act_accum_match_the_formulas() -> None:
    t = load_target("fsedp-2x2")
    tokens = TokenSet.span(0, TOKENS)
    load = [Load(0, 0, SLICE, SLICE_BYTES)]
    r = simulate(_program("fsedp-2x2", {0: [*load, Gemm(0, tokens), Free(0)]}))
    base = simulate(_program("fsedp-2x2", {0: [*load, Free(0)]})).report.energy_breakdown_j
    e = r.report.energy_breakdown_j
    # by hand: T d w x 2 fp16 MACs at 1.5 pJ; SRAM reads 2 d w x 2 B weights and T d x 2 B
    # tokens, writes T w x 2 x 4 B of h
    macs = TOKENS * HIDDEN * FFN * 2
    assert e["compute"] == pytest.approx(macs * 1.5 * PJ, rel=1e-12)
    sram = (2 * HIDDEN * FFN * 2 + TOKENS * HIDDEN * 2 + TOKENS * FFN * 2 * 4) * 12.5 * PJ
    assert e["sram"] - base["sram"] == pytest.approx(sram, rel=1e-9)
    g = gemm_energy(t, TOKENS, HIDDEN, FFN, True, "fp16", "fp16")
    assert g == pytest.approx({"compute": macs * 1.5 * PJ, "sram": sram}, rel=1e-12)
    # the whole slice: gemm + act + accum
    full = [*load, Gemm(0, tokens), Act(0, tokens), Accum(0, tokens), Free(0)]
    ef = simulate(_program("fsedp-2x2", {0: full})).report.energy_breakdown_j
    a = act_energy(t, TOKENS, FFN, True)
    c = accum_energy(t, TOKENS, HIDDEN, FFN, "fp16")
    assert ef["compute"] == pytest.approx(g["compute"] + a["compute"] + c["compute"], rel=1e-12)
    assert ef["sram"] - base["sram"] == pytest.approx(g["sram"] + a["sram"] + c["sram"], rel=1e-9)
    assert a["compute"] == 2 * TOKENS * FFN * 0.9 * PJ


def test_int8_slice_costs_int8_macs() -> None:
    tokens = TokenSet.span(0, TOKENS)
    p = _program("fsedp-2x2", {0: [Load(0, 0, SLICE, SLICE_BYTES // 2), Gemm(0, tokens), Free(0)]})
    e = simulate(p).report.energy_breakdown_j
    assert e["compute"] == pytest.approx(TOKENS * HIDDEN * FFN * 2 * 0.23 * PJ, rel=1e-12)


def test_static_energy_over_a_known_span() -> None:
    t = load_target("fsedp-3x3", {"energy_die_static_w": 2.0, "energy_channel_static_w": 1.0})
    # 9 dies x 2 W + 4 corner channels x 1 W = 22 W
    assert static_energy(t, 1e-3) == pytest.approx(22e-3, rel=1e-12)
    p = _program("fsedp-3x3", {0: [Load(0, 0, SLICE, SLICE_BYTES), Free(0)]})
    r = simulate(p, target=t)
    assert r.report.energy_breakdown_j["static"] == pytest.approx(
        22.0 * r.report.latency_s, rel=1e-12
    )
    assert r.report.energy_per_die_j[0]["static"] == pytest.approx(3.0 * r.report.latency_s)
    assert r.report.energy_per_die_j[1]["static"] == pytest.approx(2.0 * r.report.latency_s)


def _run_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str) -> dict:
    out = tmp_path / f"{target}.msp"
    assert main(["compile", "tiny_moe", "--target", target, "--strategy", "fsedp", "-o", str(out)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["run", str(out), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("target", sorted(PRESETS))
def test_run_json_breakdown_sums_and_dram_is_bytes_times_pj_per_bit(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t = load_target(target)
    kinds = {c.kind for c in t.channels}
    assert len(kinds) == 1  # every preset has one DRAM kind
    d = _run_json(tmp_path, capsys, target)
    parts = d["energy_breakdown_j"]
    assert list(parts) == list(PARTS)
    assert math.isclose(sum(parts.values()), d["energy_j"], rel_tol=1e-12)
    per_die = d["energy_per_die_j"]
    for part in PARTS:
        assert math.isclose(sum(x[part] for x in per_die), parts[part], rel_tol=1e-12, abs_tol=0)
    pj = t.energy.dram_bit(kinds.pop())
    assert math.isclose(parts["dram"], d["dram_bytes_total"] * 8 * pj * PJ, rel_tol=1e-12)
    assert d["energy_j"] > 0


def test_every_dram_kind_has_an_energy_and_overrides_apply() -> None:
    assert set(DRAM_PJ_PER_BIT) == set(DRAM_KINDS)
    t = load_target("fsedp-2x2", {"ddr_kind": "hbm3"})
    assert t.energy.dram_bit(t.channels[0].kind) == DRAM_PJ_PER_BIT["hbm3"]
    t = load_target("fsedp-2x2", {"energy_dram_pj_per_bit": 7, "energy_d2d_class": "ucie-advanced"})
    assert (
        t.energy.dram_bit("ddr4") == 7.0 and t.energy.d2d_bit() == D2D_PJ_PER_BIT["ucie-advanced"]
    )
    t = load_target("fsedp-2x2", {"energy_d2d_pj_per_bit": 0.1, "energy_mac_pj_fp16": 0.3})
    assert t.energy.d2d_bit() == 0.1 and t.energy.mac("fp16") == 0.3
    with pytest.raises(TargetError, match="energy_d2d_class: expected one of"):
        load_target("fsedp-2x2", {"energy_d2d_class": "copper"})
    with pytest.raises(TargetError, match="energy_sram_read_pj_per_byte: expected a finite"):
        load_target("fsedp-2x2", {"energy_sram_read_pj_per_byte": -1})


def test_toml_energy_section(tmp_path: Path) -> None:
    f = tmp_path / "e.toml"
    f.write_text(
        'name = "e"\n[dram]\ngbps_per_channel = 25.6\n[energy]\nd2d_class = "ucie-advanced"\n'
        "mac_pj = {int8 = 0.1}\ndie_static_w = 0\n"
    )
    e = load_target(str(f)).energy
    assert e.d2d_bit() == 0.25 and e.mac("int8") == 0.1 and e.die_static_w == 0.0
    f.write_text('name = "e"\n[dram]\ngbps_per_channel = 25.6\n[energy]\nwatts = 3\n')
    with pytest.raises(TargetError, match=r"\[energy\] watts: expected one of the keys"):
        load_target(str(f))


def test_bench_rows_have_energy_for_every_strategy() -> None:
    from moec.bench import known_strategies, run_bench

    strategies = known_strategies()
    rows = run_bench("tiny_moe", "fsedp-2x2", [16], strategies, accuracy=False)
    assert {r["strategy"] for r in rows} == set(strategies)
    for r in rows:
        assert r["energy_j"] > 0
        assert r["energy_per_token_j"] == pytest.approx(r["energy_j"] / r["tokens"], rel=1e-12)
        assert r["edp"] == pytest.approx(r["energy_j"] * r["latency_s"], rel=1e-12)
        assert math.isclose(sum(r["energy_breakdown_j"].values()), r["energy_j"], rel_tol=1e-12)


def test_trace_has_a_power_counter_per_die() -> None:
    p = _program("fsedp-2x2", {0: [Load(0, 0, SLICE, SLICE_BYTES), Free(0)]})
    r = simulate(p, record_trace=True)
    assert r.chrome_trace is not None
    counters = [e for e in r.chrome_trace["traceEvents"] if e["ph"] == "C"]
    assert {e["name"] for e in counters} == {f"die {d} power" for d in range(4)}
    # die 0 draws more than its static 1 W while its load holds the channel
    assert max(e["args"]["W"] for e in counters if e["name"] == "die 0 power") > 1.0


def test_sweep_stores_energy_columns_and_plots_them(tmp_path: Path) -> None:
    import sqlite3

    spec = tmp_path / "s.toml"
    spec.write_text(
        '[sweep]\nname = "e"\n\n[fixed]\nmodels = "tiny_moe"\ntargets = "fsedp-2x2"\n'
        'tokens = 16\n\n[axes]\nstrategies = ["ep", "fsedp-paired"]\n'
    )
    res, png = tmp_path / "res", tmp_path / "p.png"
    assert main(["-q", "sweep", str(spec), "--local", "-o", str(res)]) == 0
    db = sqlite3.connect(res / "sweep.sqlite")
    cols = {c[1] for c in db.execute("PRAGMA table_info(points)")}
    assert {"energy_j", "energy_per_token_j", "edp"} <= cols
    assert {f"energy_breakdown_j_{p}" for p in PARTS} <= cols
    values = [r[0] for r in db.execute("SELECT energy_per_token_j FROM points")]
    assert len(values) == 2 and all(v > 0 for v in values)
    db.close()
    argv = ["sweep", "plot", str(res), "--x", "latency_s", "--y", "energy_per_token_j"]
    assert main([*argv, "-o", str(png)]) == 0
    assert png.stat().st_size > 0


def test_human_run_report_has_an_energy_table_per_die(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = _run_json(tmp_path, capsys, "fsedp-2x2")
    assert main(["run", str(tmp_path / "fsedp-2x2.msp")]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    at = next(k for k, line in enumerate(lines) if "per token" in line)
    assert lines[at - 2].strip() == "energy"  # the table's title
    table = "\n".join(lines[at:])
    header = lines[at]
    cols = [c.strip() for c in header.strip("┃│ ").replace("┃", "│").split("│")]
    assert cols == ["die", "total", "per token", *PARTS]
    rows = {
        cells[0]: cells[1:]
        for line in table.splitlines()
        if (cells := [c.strip() for c in line.strip("│ ").split("│")])[0].startswith(
            ("die ", "package")
        )
    }
    assert list(rows) == [f"die {k}" for k in range(4)] + ["package"]

    def joules(cell: str) -> float:
        if cell == "0":
            return 0.0
        value, unit = cell.split()
        return float(value) * {"J": 1, "mJ": 1e-3, "uJ": 1e-6, "nJ": 1e-9, "pJ": 1e-12}[unit]

    for k, by_part in enumerate(d["energy_per_die_j"]):
        cells = rows[f"die {k}"]
        assert joules(cells[0]) == pytest.approx(sum(by_part.values()), rel=1e-3)
        for part, cell in zip(PARTS, cells[2:], strict=True):
            assert joules(cell) == pytest.approx(by_part[part], rel=1e-3, abs=1e-15)
    assert joules(rows["package"][0]) == pytest.approx(d["energy_j"], rel=1e-3)
    assert joules(rows["package"][1]) == pytest.approx(d["energy_per_token_j"], rel=1e-3)
