"""Target files: the TOML form of :class:`moec.ir.target.TargetParams` (schema in docs/targets.md).

Every problem is one located line: TOML syntax errors as ``file:line:col: message`` (taken from
tomllib's message), field errors as ``file: [section] key: expected ..., found ...``.

    name = "my-2x2"
    topology = "mesh"
    dies_x = 2
    dies_y = 2
    [die]
    macs = 2048
    clock_mhz = 800
    sram_mib = 16
    [d2d]
    gbps = 288
    latency_ns = 20
    [dram]
    placement = "corners"
    gbps_per_channel = 25.6
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from typing import Any

from moec.ir.energy import D2D_PJ_PER_BIT, MAC_PJ, EnergyModel
from moec.ir.errors import Location, TargetError
from moec.ir.hardware import (
    DATAFLOWS,
    PCIE_256B,
    UCIE_68B,
    WEIGHT_BUFFERINGS,
    DieCosts,
    Framing,
    MacArray,
)
from moec.ir.target import (
    CHANNEL_KINDS,
    DEFAULT_OPS_PER_MAC,
    GIB,
    MIB,
    PRECISION_BYTES,
    TOPOLOGIES,
    DieParams,
    DramParams,
    Host,
    TargetParams,
    build,
)

_TOP_KEYS = ("name", "description", "topology", "dies_x", "dies_y", "num_dies", "ideal")
_SECTIONS = ("die", "d2d", "dram", "host", "energy")
_FRAMING_KEYS = ("flit_payload_bytes", "flit_overhead_bytes", "min_bytes")
_SECTION_KEYS = {
    "die": (
        "macs", "clock_mhz", "clock_hz", "sram_mib", "sram_bytes", "ops_per_mac", "array",
        "vector_lanes", "issue_cycles", "dma_setup_ns",
    ),
    "d2d": ("gbps", "latency_ns", *_FRAMING_KEYS),
    "dram": (
        "kind", "placement", "gbps_per_channel", "gbps_total", "gbps_per_die", "latency_ns",
        "capacity_gib", "burst_bytes", "efficiency",
    ),
    "host": ("gbps", "latency_ns", "capacity_gib", *_FRAMING_KEYS),
    "energy": (
        "mac_pj", "vector_op_pj", "sram_read_pj_per_byte", "sram_write_pj_per_byte",
        "dram_pj_per_bit", "d2d_class", "d2d_pj_per_bit", "host_pj_per_bit", "die_static_w",
        "channel_static_w",
    ),
}  # fmt: skip
_TOML_POS = re.compile(r"^(?P<msg>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)$")


class _Fields:
    """Typed access to one table, raising located errors."""

    def __init__(self, path: str, section: str, table: dict[str, Any], allowed: tuple[str, ...]):
        self.path, self.section, self.table = path, section, table
        for key in table:
            if key not in allowed:
                self.fail(key, f"one of the keys {', '.join(allowed)}", f"unknown key {key!r}")

    def fail(self, key: str, expected: str, found: str) -> None:
        where = f"[{self.section}] " if self.section else ""
        raise TargetError(f"{where}{key}: expected {expected}, found {found}", self.path)

    def number(self, key: str, default: float | None = None, *, minimum: float = 0.0,
               strict: bool = True, integer: bool = False) -> float | None:  # fmt: skip
        if key not in self.table:
            return default
        v = self.table[key]
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        if ok and integer and not isinstance(v, int):
            ok = False
        if ok and (v < minimum or (strict and v == minimum)):
            ok = False
        if not ok:
            kind = "an integer" if integer else "a number"
            bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
            self.fail(key, f"{kind} {bound}", repr(v))
        return float(v) if not integer else int(v)

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        v = self.table.get(key, default)
        if v not in choices:
            self.fail(key, f"one of {', '.join(choices)}", repr(v))
        return str(v)


def _parse_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read()
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise TargetError(
            f"not UTF-8 text (byte 0x{data[err.start]:02x}); TOML files are UTF-8",
            Location(path, line, column),
        ) from None
    except FileNotFoundError:
        raise TargetError("target file not found", path) from None
    except OSError as err:
        raise TargetError(f"cannot read target file: {err.strerror}", path) from None
    except tomllib.TOMLDecodeError as err:
        m = _TOML_POS.match(str(err))
        if m:
            loc = Location(path, int(m["line"]), int(m["col"]))
            raise TargetError(f"invalid TOML: {m['msg']}", loc) from None
        raise TargetError(f"invalid TOML: {err}", path) from None


def _die(path: str, table: dict[str, Any]) -> DieParams:
    f = _Fields(path, "die", table, _SECTION_KEYS["die"])
    base = DieParams()
    macs = f.number("macs", base.macs, integer=True)
    if "clock_mhz" in table and "clock_hz" in table:
        f.fail("clock_hz", "only one of clock_mhz, clock_hz", "both")
    clock = f.number("clock_hz", None) or (f.number("clock_mhz", base.clock_hz / 1e6) or 0) * 1e6
    if "sram_mib" in table and "sram_bytes" in table:
        f.fail("sram_bytes", "only one of sram_mib, sram_bytes", "both")
    sram_bytes = f.number("sram_bytes", None, integer=True)
    sram = int(sram_bytes) if sram_bytes else int(round((f.number("sram_mib", 16) or 0) * MIB))
    ops = dict(DEFAULT_OPS_PER_MAC)
    raw_ops = table.get("ops_per_mac", {})
    if not isinstance(raw_ops, dict):
        f.fail("ops_per_mac", "a table {precision = multiplier}", repr(raw_ops))
    sub = _Fields(path, "die.ops_per_mac", raw_ops, tuple(PRECISION_BYTES))
    for prec in raw_ops:
        ops[prec] = sub.number(prec) or 0.0
    array = None
    if "array" in table:
        raw_array = table["array"]
        if not isinstance(raw_array, dict):
            f.fail(
                "array", "a table {rows, cols, count, dataflow, weight_buffering}", repr(raw_array)
            )
        a = _Fields(
            path, "die.array", raw_array, ("rows", "cols", "count", "dataflow", "weight_buffering")
        )
        for key in ("rows", "cols"):
            if key not in raw_array:
                a.fail(key, "an integer > 0", "nothing")
        array = MacArray(
            int(a.number("rows", integer=True) or 0),
            int(a.number("cols", integer=True) or 0),
            int(a.number("count", 1, integer=True) or 0),
            a.choice("dataflow", "ws", DATAFLOWS),
            a.choice("weight_buffering", "single", WEIGHT_BUFFERINGS),
        )
        if "macs" not in table:
            macs = array.macs
        elif macs != array.macs:
            f.fail("macs", f"the array's {array.macs} MACs ({array.name})", repr(macs))
    base_costs = DieCosts()
    costs = DieCosts(
        vector_lanes=int(f.number("vector_lanes", base_costs.vector_lanes, integer=True) or 0),
        issue_cycles=int(
            f.number("issue_cycles", base_costs.issue_cycles, integer=True, strict=False) or 0
        ),
        dma_setup_s=(
            f.number("dma_setup_ns", base_costs.dma_setup_s * 1e9, strict=False) or 0.0
        ) * 1e-9,
    )  # fmt: skip
    return DieParams(int(macs or 0), float(clock), sram, tuple(sorted(ops.items())), array, costs)


def _framing(f: _Fields, base: Framing) -> Framing:
    def num(key: str, default: int) -> int:
        return int(f.number(key, default, integer=True, strict=False) or 0)

    return Framing(
        num("flit_payload_bytes", base.payload_bytes),
        num("flit_overhead_bytes", base.overhead_bytes),
        num("min_bytes", base.min_bytes),
    )


def _dram(path: str, table: dict[str, Any], topology: str) -> DramParams:
    f = _Fields(path, "dram", table, _SECTION_KEYS["dram"])
    given = [k for k in ("gbps_per_channel", "gbps_total", "gbps_per_die") if k in table]
    if len(given) != 1:
        f.fail(
            "gbps_per_channel", "exactly one of gbps_per_channel, gbps_total, gbps_per_die",
            ", ".join(given) if given else "none",
        )  # fmt: skip
    placement: str | tuple[int, ...]
    default = "corners" if topology == "mesh" else "all"
    raw = table.get("placement", default)
    if isinstance(raw, list):
        if not raw or not all(isinstance(d, int) and not isinstance(d, bool) for d in raw):
            f.fail("placement", "a non-empty list of die ids", repr(raw))
        if len(set(raw)) != len(raw):
            f.fail("placement", "distinct die ids", repr(raw))
        placement = tuple(raw)
    else:
        choices = ("corners", "edges", "all") if topology == "mesh" else ("all",)
        placement = f.choice("placement", default, choices)
    return DramParams(
        placement=placement,
        kind=f.choice("kind", "ddr", CHANNEL_KINDS),
        gbps_per_channel=f.number("gbps_per_channel"),
        gbps_total=f.number("gbps_total"),
        gbps_per_die=f.number("gbps_per_die"),
        latency_s=(f.number("latency_ns", 0.0, strict=False) or 0.0) * 1e-9,
        capacity_bytes=int(round((f.number("capacity_gib", 0.0, strict=False) or 0.0) * GIB)),
        burst_bytes=int(b) if (b := f.number("burst_bytes", None, integer=True)) else None,
        efficiency=_efficiency(f),
    )


def _efficiency(f: _Fields) -> float | None:
    e = f.number("efficiency", None)
    if e is not None and e > 1:
        f.fail("efficiency", "a number in (0, 1]", repr(f.table["efficiency"]))
    return e


def _host(path: str, table: dict[str, Any]) -> Host:
    f = _Fields(path, "host", table, _SECTION_KEYS["host"])
    if "gbps" not in table:
        f.fail("gbps", "a number > 0", "nothing")
    return Host(
        gbps=f.number("gbps") or 0.0,
        latency_s=(f.number("latency_ns", 0.0, strict=False) or 0.0) * 1e-9,
        capacity_bytes=int(round((f.number("capacity_gib", 0.0, strict=False) or 0.0) * GIB)),
        framing=_framing(f, PCIE_256B),
    )


def _energy(path: str, table: dict[str, Any]) -> EnergyModel:
    f = _Fields(path, "energy", table, _SECTION_KEYS["energy"])
    base = EnergyModel()
    macs = dict(base.mac_pj)
    raw = table.get("mac_pj", {})
    if not isinstance(raw, dict):
        f.fail("mac_pj", "a table {precision = pJ}", repr(raw))
    sub = _Fields(path, "energy.mac_pj", raw, tuple(MAC_PJ))
    for prec in raw:
        macs[prec] = sub.number(prec, strict=False) or 0.0

    def num(key: str) -> float:
        return float(f.number(key, getattr(base, key), strict=False) or 0.0)

    def optional(key: str) -> float | None:
        return f.number(key, None, strict=False)

    return EnergyModel(
        mac_pj=tuple(sorted(macs.items())),
        vector_op_pj=num("vector_op_pj"),
        sram_read_pj_per_byte=num("sram_read_pj_per_byte"),
        sram_write_pj_per_byte=num("sram_write_pj_per_byte"),
        dram_pj_per_bit=optional("dram_pj_per_bit"),
        d2d_class=f.choice("d2d_class", base.d2d_class, tuple(D2D_PJ_PER_BIT)),
        d2d_pj_per_bit=optional("d2d_pj_per_bit"),
        host_pj_per_bit=num("host_pj_per_bit"),
        die_static_w=num("die_static_w"),
        channel_static_w=num("channel_static_w"),
    )


def _table(f: _Fields, doc: dict[str, Any], name: str) -> dict[str, Any]:
    t = doc.get(name, {})
    if not isinstance(t, dict):
        f.fail(name, f"a table [{name}]", repr(t))
    return t


def params_from_dict(doc: dict[str, Any], path: str) -> TargetParams:
    """Validate a parsed target document; ``path`` is used in error messages."""
    top = {k: v for k, v in doc.items() if not isinstance(v, dict) or k not in _SECTIONS}
    f = _Fields(path, "", top, _TOP_KEYS + _SECTIONS)
    name = doc.get("name", os.path.splitext(os.path.basename(path))[0])
    if not isinstance(name, str) or not name:
        f.fail("name", "a non-empty string", repr(name))
    description = doc.get("description", "")
    if not isinstance(description, str):
        f.fail("description", "a string", repr(description))
    topology = f.choice("topology", "mesh", TOPOLOGIES)
    ideal = doc.get("ideal", False)
    if not isinstance(ideal, bool):
        f.fail("ideal", "true or false", repr(ideal))
    if topology == "mesh":
        if "num_dies" in doc:
            f.fail("num_dies", "dies_x and dies_y for a mesh", "num_dies")
        dx = int(f.number("dies_x", 2, integer=True) or 0)
        dy = int(f.number("dies_y", 2, integer=True) or 0)
        n = dx * dy
    else:
        for key in ("dies_x", "dies_y"):
            if key in doc:
                f.fail(key, f"num_dies for topology {topology!r}", key)
        if "num_dies" not in doc:
            f.fail("num_dies", "an integer > 0", "nothing")
        n = int(f.number("num_dies", integer=True) or 0)
        dx, dy = n, 1
    d2d = _Fields(path, "d2d", _table(f, doc, "d2d"), _SECTION_KEYS["d2d"])
    host = _table(f, doc, "host") if "host" in doc else None
    params = TargetParams(
        name=name,
        topology=topology,
        dies_x=dx,
        dies_y=dy,
        num_dies=n,
        die=_die(path, _table(f, doc, "die")),
        d2d_gbps=float(d2d.number("gbps", 288.0) or 0.0),
        d2d_latency_s=(d2d.number("latency_ns", 20.0, strict=False) or 0.0) * 1e-9,
        d2d_framing=_framing(d2d, UCIE_68B),
        ideal=ideal,
        dram=_dram(path, _table(f, doc, "dram"), topology),
        host=_host(path, host) if host is not None else None,
        description=description,
        energy=_energy(path, _table(f, doc, "energy")),
    )
    if isinstance(params.dram.placement, tuple):
        bad = [d for d in params.dram.placement if not 0 <= d < n]
        if bad:
            _Fields(path, "dram", {}, ()).fail(
                "placement", f"die ids in 0..{n - 1}", repr(list(params.dram.placement))
            )
    build(params)  # any remaining inconsistency surfaces here, not at first use
    return params


def load_params(path: str) -> TargetParams:
    """Read and validate a target TOML file."""
    return params_from_dict(_parse_toml(path), path)
