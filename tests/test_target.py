"""Targets: preset numbers, topologies and routes, TOML files and their errors, overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moec.compiler.cli.main import main
from moec.ir.errors import TargetError
from moec.ir.target import MIB, PRESETS, load_target, preset

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "targets" / "my_2x2.toml"


def test_fsedp_2x2_numbers() -> None:
    t = preset("fsedp-2x2")
    assert t.num_dies == 4 and t.topology == "mesh" and t.dims == (2, 2)
    d = t.dies[0]
    assert (d.macs, d.clock_hz, d.sram_bytes) == (2048, 800e6, 16 * MIB)
    assert d.flops_per_s("fp16") == pytest.approx(2 * 2048 * 800e6)
    assert d.flops_per_s("int8") == pytest.approx(2 * d.flops_per_s("fp16"))
    assert d.flops_per_s("int4") == pytest.approx(4 * d.flops_per_s("fp16"))
    assert [(c.die, c.gbps, c.kind) for c in t.channels] == [(i, 25.6, "ddr4") for i in range(4)]
    assert len(t.links) == 8 and all(lk.gbps == 288.0 for lk in t.links)
    assert t.host is None


@pytest.mark.parametrize(("name", "n", "total"), [("fsedp-3x3", 3, 38.4), ("fsedp-4x4", 4, 51.2)])
def test_fsedp_scaleups(name: str, n: int, total: float) -> None:
    t = preset(name)
    assert t.num_dies == n * n
    assert t.total_dram_gbps() == pytest.approx(total)
    corners = {0, n - 1, n * (n - 1), n * n - 1}
    assert {c.die for c in t.channels} == corners
    assert len(t.links) == 2 * 2 * n * (n - 1)


def test_npu8_hbm() -> None:
    t = preset("npu8-hbm")
    assert t.topology == "full" and t.num_dies == 8
    assert len(t.links) == 8 * 7
    assert all(c.kind == "hbm2e" and c.capacity_bytes > 0 for c in t.channels)
    assert len(t.channels) == 8 and t.host is not None and 32 <= t.host.gbps <= 64
    assert all(t.hops(a, b) == 1 for a in range(8) for b in range(8) if a != b)


def test_mesh_xy_routes() -> None:
    t = preset("fsedp-4x4")
    assert t.route(0, 15) == [0, 1, 2, 3, 7, 11, 15]  # x first, then y
    assert t.route(15, 0) == [15, 14, 13, 12, 8, 4, 0]
    assert t.route(5, 5) == [5] and t.hops(5, 5) == 0
    assert t.hops(1, 14) == 4
    assert t.neighbors(5) == [1, 4, 6, 9] and t.neighbors(0) == [1, 4]
    assert t.are_neighbors(0, 1) and not t.are_neighbors(0, 5)
    for a in range(16):
        for b in range(16):
            path = t.route(a, b)
            assert all(t.are_neighbors(s, d) for s, d in zip(path, path[1:], strict=False))
    with pytest.raises(TargetError, match="no link from die 0 to die 5"):
        t.link(0, 5)
    with pytest.raises(TargetError, match="no die 16"):
        t.route(0, 16)


def test_ring_routes_shorter_way_ties_go_up() -> None:
    t = load_target("fsedp-2x2", {"topology": "ring", "num_dies": 6})
    assert t.route(0, 2) == [0, 1, 2]
    assert t.route(0, 4) == [0, 5, 4]
    assert t.route(0, 3) == [0, 1, 2, 3]  # tie: up
    assert t.route(3, 0) == [3, 4, 5, 0]
    assert t.neighbors(0) == [1, 5]
    assert len(t.channels) == 6  # corners need a mesh: a ring gets a channel per die


def test_nearest_channel_and_channels_of() -> None:
    t = preset("fsedp-3x3")
    assert t.nearest_channel(4).id == 0  # the center: all four at 2 hops, lowest id wins
    assert t.nearest_channel(5).die == 2
    assert [c.id for c in t.channels_of(8)] == [3] and t.channels_of(4) == []


def test_overrides() -> None:
    base = preset("fsedp-2x2")
    t = base.with_overrides({"d2d_gbps": 512, "sram_mib_per_die": 14, "clock_mhz": "1000"})
    assert t.link(0, 1).gbps == 512 and t.dies[3].sram_bytes == 14 * MIB
    assert t.dies[0].clock_hz == 1e9 and base.link(0, 1).gbps == 288
    big = base.with_overrides({"dies_x": 3, "dies_y": 3, "ddr_gbps_per_die": 48})
    assert big.num_dies == 9 and len(big.channels) == 4
    assert big.total_dram_gbps() == pytest.approx(48 * 9)
    t = load_target("fsedp-3x3", {"ddr_gbps_total": 100})
    assert [c.gbps for c in t.channels] == [25.0] * 4
    t = load_target("fsedp-4x4", {"ddr_placement": "edges", "ddr_gbps_per_channel": 10})
    assert len(t.channels) == 12
    assert load_target("fsedp-2x2", {"d2d_latency_ns": 0}).link(0, 1).latency_s == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"d2d_bw": 1}, "unknown target override 'd2d_bw', expected one of: sram_mib_per_die"),
        ({"d2d_gbps": -1}, "override d2d_gbps: expected a finite value > 0, found -1"),
        ({"dies_x": 2.5}, "override dies_x: expected an integer, found 2.5"),
        ({"clock_mhz": "fast"}, "override clock_mhz: expected a number, found 'fast'"),
        ({"topology": "torus"}, "override topology: expected one of ('mesh', 'ring', 'full')"),
        ({"ddr_gbps_total": 1, "ddr_gbps_per_die": 2}, "conflict"),
        ({"topology": "full", "dies_x": 3}, "only a mesh has them"),
    ],
)
def test_override_errors(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(TargetError) as err:
        load_target("fsedp-2x2", overrides)  # type: ignore[arg-type]
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_target() -> None:
    with pytest.raises(TargetError, match="unknown target 'fsedp-9x9', expected one of: fsedp-2x2"):
        load_target("fsedp-9x9")


def test_example_toml_loads() -> None:
    t = load_target(str(EXAMPLE))
    assert t.name == "my-2x2" and t.num_dies == 4
    assert t.link(2, 3).gbps == 576 and t.dies[0].sram_bytes == 24 * MIB
    assert t.host is not None and t.host.gbps == 32
    rel = load_target("targets/my_2x2.toml", base_dir=str(ROOT / "examples"))
    assert rel == t


def test_toml_defaults_mesh_dram_to_corners(tmp_path: Path) -> None:
    f = tmp_path / "m.toml"
    f.write_text("dies_x = 3\ndies_y = 2\n[dram]\ngbps_per_die = 10\n")
    t = load_target(str(f))
    assert [c.die for c in t.channels] == [0, 2, 3, 5]
    assert t.total_dram_gbps() == pytest.approx(60)
    assert t.route(0, 5) == [0, 1, 2, 5]


def test_toml_full_and_explicit_channels(tmp_path: Path) -> None:
    f = tmp_path / "sys.toml"
    f.write_text(
        'topology = "full"\nnum_dies = 3\n[die]\nmacs = 4096\nclock_hz = 1e9\nsram_bytes = 1024\n'
        "[d2d]\ngbps = 100\nlatency_ns = 500\n"
        '[dram]\nkind = "hbm"\nplacement = [0, 2]\ngbps_total = 300\n'
    )
    t = load_target(str(f))
    assert t.name == "sys" and t.num_dies == 3 and t.route(0, 2) == [0, 2]
    assert [(c.die, c.gbps, c.kind) for c in t.channels] == [(0, 150.0, "hbm"), (2, 150.0, "hbm")]
    assert t.link(1, 0).latency_s == pytest.approx(500e-9)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("topology = \n", ":1:12: invalid TOML: Invalid value"),
        ('name = "a"\n[die]\nmacs = -3\n', ": [die] macs: expected an integer > 0, found -3"),
        ("[die]\nmac = 3\n", ": [die] mac: expected one of the keys macs, clock_mhz"),
        ('topology = "torus"\n', ": topology: expected one of mesh, ring, full, found 'torus'"),
        (
            "[dram]\ngbps_total = 1\ngbps_per_die = 2\n",
            ": [dram] gbps_per_channel: expected exactly one of",
        ),
        (
            "[dram]\nplacement = [0, 7]\ngbps_total = 1\n",
            ": [dram] placement: expected die ids in 0..3, found [0, 7]",
        ),
        ("[d2d]\ngbps = true\n[dram]\ngbps_total = 1\n", ": [d2d] gbps: expected a number > 0"),
        ("[die.ops_per_mac]\nfp8 = 2\n[dram]\ngbps_total = 1\n", "[die.ops_per_mac] fp8: expected"),
        ('topology = "ring"\n[dram]\ngbps_total = 1\n', ": num_dies: expected an integer > 0"),
    ],
)
def test_toml_errors_are_located(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(TargetError) as err:
        load_target(str(f))
    line = str(err.value)
    assert line.startswith(str(f)) and message in line and "\n" not in line


def test_targets_are_hashable_values() -> None:
    a, b = preset("fsedp-2x2"), load_target("fsedp-2x2", {"d2d_gbps": 288})
    assert a == b and hash(a) == hash(b) and len({a, b, preset("fsedp-3x3")}) == 2
    assert a != a.with_overrides({"sram_mib_per_die": 8})


def test_to_dict_is_json_and_deterministic() -> None:
    a = json.dumps(preset("fsedp-3x3").to_dict())
    assert a == json.dumps(preset("fsedp-3x3").to_dict())
    doc = json.loads(a)
    assert doc["num_dies"] == 9 and len(doc["channels"]) == 4 and doc["host"] is None


def test_cli_targets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in PRESETS)
    assert main(["targets", "show", "fsedp-4x4", "--json", "--set", "d2d_gbps=1024"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["num_dies"] == 16 and doc["links"][0]["gbps"] == 1024
    assert main(["targets", "show", str(EXAMPLE)]) == 0
    assert "576 GB/s" in capsys.readouterr().out
    assert main(["targets", "show", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown target 'nope'" in err


def test_hardware_model_of_the_presets() -> None:
    t = load_target("fsedp-2x2", {"ideal": False})
    d, lk, ch = t.dies[0], t.link(0, 1), t.channels[0]
    assert (d.array.rows, d.array.cols, d.array.count, d.array.dataflow) == (32, 64, 1, "ws")
    assert d.array.macs == d.macs == 2048
    assert (d.costs.vector_lanes, d.costs.issue_cycles, d.costs.dma_setup_s) == (64, 16, 100e-9)
    assert (lk.framing.payload_bytes, lk.framing.overhead_bytes, lk.framing.min_bytes) == (
        64,
        4,
        64,
    )
    assert (ch.kind, ch.burst_bytes, ch.efficiency) == ("ddr4", 64, 0.85)
    n = load_target("npu8-hbm")
    assert n.dies[0].array.name == "16 x 128x128 ws" and n.dies[0].array.macs == n.dies[0].macs


def test_hardware_overrides() -> None:
    t = load_target(
        "fsedp-2x2",
        {"ideal": "false", "array_rows": 64, "array_cols": 32, "dataflow": "os",
         "vector_lanes": 128, "issue_cycles": 0, "dma_setup_ns": 50, "d2d_flit_payload_bytes": 256,
         "d2d_flit_overhead_bytes": 16, "d2d_min_bytes": 32, "ddr_kind": "hbm3",
         "ddr_efficiency": 0.7},
    )  # fmt: skip
    d = t.dies[0]
    assert not t.ideal and d.array.name == "64x32 os" and d.macs == 2048
    assert (d.costs.vector_lanes, d.costs.issue_cycles) == (128, 0)
    assert d.costs.dma_setup_s == pytest.approx(50e-9, rel=1e-12)
    assert t.link(0, 1).framing.wire_bytes(1) == 272
    assert (t.channels[0].kind, t.channels[0].burst_bytes, t.channels[0].efficiency) == (
        "hbm3", 32, 0.7,
    )  # fmt: skip
    # more MACs keep the array shape and add arrays
    big = load_target("fsedp-2x2", {"macs_per_die": 8192})
    assert big.dies[0].array.name == "4 x 32x64 ws"
    assert load_target("fsedp-2x2", {"ideal": "true"}).ideal


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dataflow": "rs"}, "override dataflow: expected one of"),
        ({"ideal": "maybe"}, "override ideal: expected true or false"),
        ({"ddr_efficiency": 1.5}, r"override ddr_efficiency: expected a value in \(0, 1\]"),
        ({"macs_per_die": 4096, "array_rows": 16}, "disagree"),
        ({"ddr_kind": "sdram"}, "override ddr_kind: expected one of"),
        ({"array_cols": 0}, "override array_cols: expected a finite value > 0"),
    ],
)
def test_bad_hardware_overrides(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(TargetError, match=message):
        load_target("fsedp-2x2", overrides)


def test_hardware_model_in_toml(tmp_path: Path) -> None:
    f = tmp_path / "hw.toml"
    f.write_text(
        "ideal = false\n[die]\nclock_mhz = 1000\narray = { rows = 16, cols = 16, count = 4, "
        'dataflow = "is" }\nvector_lanes = 32\nissue_cycles = 8\ndma_setup_ns = 0\n'
        '[d2d]\nflit_payload_bytes = 0\n[dram]\nkind = "lpddr5"\ngbps_total = 51.2\n'
    )
    t = load_target(str(f))
    d = t.dies[0]
    assert not t.ideal and d.macs == 1024 and d.array.name == "4 x 16x16 is"
    assert (d.costs.vector_lanes, d.costs.issue_cycles, d.costs.dma_setup_s) == (32, 8, 0.0)
    assert t.link(0, 1).framing.wire_bytes(10) == 64  # no framing, min size kept
    assert (t.channels[0].burst_bytes, t.channels[0].efficiency) == (32, 0.8)
    bad = tmp_path / "bad.toml"
    bad.write_text("[die]\nmacs = 100\narray = { rows = 16, cols = 16 }\n[dram]\ngbps_total = 1\n")
    with pytest.raises(TargetError, match=r"\[die\] macs: expected the array's 256 MACs"):
        load_target(str(bad))
