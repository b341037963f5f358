"""Flat target overrides: ``--set KEY=VALUE``, ``target "..." { key = value }`` and sweep axes.

One table of keys (:data:`OVERRIDE_KEYS`) and one function applying them to
:class:`~moec.ir.target_params.TargetParams`; unknown keys and bad values are a
:class:`~moec.ir.errors.TargetError` naming the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from moec.ir.energy import D2D_PJ_PER_BIT, MAC_PJ
from moec.ir.errors import TargetError
from moec.ir.hardware import (
    DATAFLOWS,
    DRAM_ALIASES,
    DRAM_KINDS,
    WEIGHT_BUFFERINGS,
    MacArray,
    squarest_array,
)
from moec.ir.target_params import MIB, Host, TargetParams

TOPOLOGIES = ("mesh", "ring", "full")

#: Flat override keys, their meaning and allowed range (a value must be > 0 unless noted).
OVERRIDE_KEYS: dict[str, str] = {
    "sram_mib_per_die": "SRAM per die in MiB (2**20 bytes)",
    "sram_bytes_per_die": "SRAM per die in bytes",
    "d2d_gbps": "bandwidth of every D2D link, per direction, GB/s",
    "d2d_latency_ns": "latency of every D2D link, ns (>= 0)",
    "ddr_gbps_per_die": "DRAM GB/s per die: total = value x dies, spread over the channels",
    "ddr_gbps_total": "total DRAM GB/s, spread equally over the channels",
    "ddr_gbps_per_channel": "GB/s of every DRAM channel",
    "ddr_latency_ns": "DRAM access latency, ns (>= 0)",
    "ddr_placement": "which dies carry a channel: corners, edges, all",
    "clock_mhz": "die clock, MHz",
    "macs_per_die": "MAC units per die (integer; keeps the array shape, changes the array count)",
    "dies_x": "mesh columns (integer; regenerates the mesh)",
    "dies_y": "mesh rows (integer; regenerates the mesh)",
    "num_dies": "number of dies of a ring or full topology (integer)",
    "topology": "mesh, ring or full",
    "host_gbps": "host link GB/s per die (adds a host tier if absent)",
    "host_latency_ns": "host link latency, ns (>= 0)",
    "ideal": "true: the ideal machine (GEMMs at peak, no fixed costs, DRAM at pin bandwidth)",
    "array_rows": "rows of each MAC array (integer)",
    "array_cols": "columns of each MAC array (integer)",
    "arrays_per_die": "MAC arrays per die (integer)",
    "dataflow": "MAC array dataflow: ws, os, is",
    "weight_buffering": "stationary tile loading: single (after each fold) or double (during it)",
    "vector_lanes": "vector-unit elements per cycle (integer)",
    "issue_cycles": "cycles to issue one compute instruction (integer, >= 0)",
    "dma_setup_ns": "DMA descriptor setup per transfer, ns (>= 0)",
    "d2d_flit_payload_bytes": "D2D flit payload bytes (integer, >= 0; 0 = no framing)",
    "d2d_flit_overhead_bytes": "D2D header/CRC bytes per flit (integer, >= 0)",
    "d2d_min_bytes": "smallest D2D transfer payload, bytes (integer, >= 0)",
    "ddr_kind": "DRAM kind: " + ", ".join([*DRAM_KINDS, *DRAM_ALIASES]),
    "ddr_burst_bytes": "DRAM burst size, bytes (integer)",
    "ddr_efficiency": "sustained fraction of DRAM pin bandwidth for streaming reads, in (0, 1]",
    **{f"energy_mac_pj_{p}": f"pJ per {p} multiply-accumulate (>= 0)" for p in MAC_PJ},
    "energy_vector_op_pj": "pJ per vector-unit element op (>= 0)",
    "energy_sram_read_pj_per_byte": "pJ per byte read from SRAM (>= 0)",
    "energy_sram_write_pj_per_byte": "pJ per byte written to SRAM (>= 0)",
    "energy_dram_pj_per_bit": "pJ per bit read from any DRAM channel (>= 0; default: by kind)",
    "energy_d2d_class": "D2D link class: " + ", ".join(D2D_PJ_PER_BIT),
    "energy_d2d_pj_per_bit": "pJ per bit on a D2D link (>= 0; default: by link class)",
    "energy_host_pj_per_bit": "pJ per bit on a host link (>= 0)",
    "energy_die_static_w": "static (leakage + idle) W per die (>= 0)",
    "energy_channel_static_w": "static (background) W per DRAM channel (>= 0)",
}
#: override key -> EnergyModel field, for the numeric energy keys other than MACs
_ENERGY_FIELDS = {
    "energy_vector_op_pj": "vector_op_pj",
    "energy_sram_read_pj_per_byte": "sram_read_pj_per_byte",
    "energy_sram_write_pj_per_byte": "sram_write_pj_per_byte",
    "energy_dram_pj_per_bit": "dram_pj_per_bit",
    "energy_d2d_pj_per_bit": "d2d_pj_per_bit",
    "energy_host_pj_per_bit": "host_pj_per_bit",
    "energy_die_static_w": "die_static_w",
    "energy_channel_static_w": "channel_static_w",
}
_INT_KEYS = {
    "sram_bytes_per_die", "macs_per_die", "dies_x", "dies_y", "num_dies", "array_rows",
    "array_cols", "arrays_per_die", "vector_lanes", "issue_cycles", "d2d_flit_payload_bytes",
    "d2d_flit_overhead_bytes", "d2d_min_bytes", "ddr_burst_bytes",
}  # fmt: skip
_NONNEG_KEYS = {
    "d2d_latency_ns", "ddr_latency_ns", "host_latency_ns", "issue_cycles", "dma_setup_ns",
    "d2d_flit_payload_bytes", "d2d_flit_overhead_bytes", "d2d_min_bytes",
    *_ENERGY_FIELDS, *(f"energy_mac_pj_{p}" for p in MAC_PJ),
}  # fmt: skip
_STR_KEYS: dict[str, tuple[str, ...]] = {
    "topology": TOPOLOGIES,
    "ddr_placement": ("corners", "edges", "all"),
    "dataflow": DATAFLOWS,
    "weight_buffering": WEIGHT_BUFFERINGS,
    "ddr_kind": (*DRAM_KINDS, *DRAM_ALIASES),
    "energy_d2d_class": tuple(D2D_PJ_PER_BIT),
}
_BOOL_KEYS = {"ideal"}
_ARRAY_KEYS = ("array_rows", "array_cols", "arrays_per_die", "dataflow", "weight_buffering")


def _bool_value(key: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    if raw in (0, 1) and not isinstance(raw, float):
        return bool(raw)
    if isinstance(raw, str) and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise TargetError(f"override {key}: expected true or false, found {raw!r}")


def _override_value(key: str, raw: Any) -> Any:
    if key in _BOOL_KEYS:
        return _bool_value(key, raw)
    if key in _STR_KEYS:
        if raw not in _STR_KEYS[key]:
            raise TargetError(f"override {key}: expected one of {_STR_KEYS[key]}, found {raw!r}")
        return raw
    try:
        if isinstance(raw, bool):
            raise ValueError
        value: float = float(raw) if not isinstance(raw, int) else raw
        if key in _INT_KEYS:
            if float(value) != int(value):
                raise ValueError
            value = int(value)
    except (TypeError, ValueError):
        kind = "an integer" if key in _INT_KEYS else "a number"
        raise TargetError(f"override {key}: expected {kind}, found {raw!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and key not in _NONNEG_KEYS):
        bound = ">= 0" if key in _NONNEG_KEYS else "> 0"
        raise TargetError(f"override {key}: expected a finite value {bound}, found {raw!r}")
    if key == "ddr_efficiency" and value > 1:
        raise TargetError(f"override {key}: expected a value in (0, 1], found {raw!r}")
    return value


def _die_overrides(p: TargetParams, vals: dict[str, Any]) -> Any:
    die = p.die
    if "sram_mib_per_die" in vals:
        die = dataclasses.replace(die, sram_bytes=int(round(vals["sram_mib_per_die"] * MIB)))
    if "sram_bytes_per_die" in vals:
        die = dataclasses.replace(die, sram_bytes=vals["sram_bytes_per_die"])
    if "clock_mhz" in vals:
        die = dataclasses.replace(die, clock_hz=vals["clock_mhz"] * 1e6)
    array = die.array or squarest_array(die.macs)
    if any(k in vals for k in _ARRAY_KEYS):
        array = MacArray(
            vals.get("array_rows", array.rows),
            vals.get("array_cols", array.cols),
            vals.get("arrays_per_die", array.count),
            vals.get("dataflow", array.dataflow),
            vals.get("weight_buffering", array.weight_buffering),
        )
        if "macs_per_die" in vals and vals["macs_per_die"] != array.macs:
            raise TargetError(
                f"overrides macs_per_die={vals['macs_per_die']} and the MAC array "
                f"({array.name}, {array.macs} MACs) disagree: give one of them"
            )
        die = dataclasses.replace(die, macs=array.macs, array=array)
    elif "macs_per_die" in vals:
        macs = vals["macs_per_die"]
        per = array.rows * array.cols
        if macs % per == 0:
            array = dataclasses.replace(array, count=macs // per)
        else:
            array = dataclasses.replace(
                squarest_array(macs), dataflow=array.dataflow,
                weight_buffering=array.weight_buffering,
            )  # fmt: skip
        die = dataclasses.replace(die, macs=macs, array=array)
    cost_keys = {"vector_lanes": "vector_lanes", "issue_cycles": "issue_cycles"}
    costs = die.costs
    for key, name in cost_keys.items():
        if key in vals:
            costs = dataclasses.replace(costs, **{name: vals[key]})
    if "dma_setup_ns" in vals:
        costs = dataclasses.replace(costs, dma_setup_s=vals["dma_setup_ns"] * 1e-9)
    return dataclasses.replace(die, costs=costs)


def _dram_overrides(p: TargetParams, vals: dict[str, Any]) -> Any:
    dram = p.dram
    bw_keys = [
        k for k in ("ddr_gbps_per_die", "ddr_gbps_total", "ddr_gbps_per_channel") if k in vals
    ]
    if len(bw_keys) > 1:
        raise TargetError(f"overrides {' and '.join(bw_keys)} conflict: give one DRAM bandwidth")
    if bw_keys:
        k = bw_keys[0]
        dram = dataclasses.replace(
            dram,
            gbps_per_die=vals[k] if k == "ddr_gbps_per_die" else None,
            gbps_total=vals[k] if k == "ddr_gbps_total" else None,
            gbps_per_channel=vals[k] if k == "ddr_gbps_per_channel" else None,
        )
    if "ddr_latency_ns" in vals:
        dram = dataclasses.replace(dram, latency_s=vals["ddr_latency_ns"] * 1e-9)
    if "ddr_placement" in vals:
        dram = dataclasses.replace(dram, placement=vals["ddr_placement"])
    if "ddr_kind" in vals:  # a new kind brings its own burst and efficiency unless given
        dram = dataclasses.replace(dram, kind=vals["ddr_kind"], burst_bytes=None, efficiency=None)
    if "ddr_burst_bytes" in vals:
        dram = dataclasses.replace(dram, burst_bytes=vals["ddr_burst_bytes"])
    if "ddr_efficiency" in vals:
        dram = dataclasses.replace(dram, efficiency=vals["ddr_efficiency"])
    return dram


def _energy_overrides(p: TargetParams, vals: dict[str, Any]) -> Any:
    e = p.energy
    macs = dict(e.mac_pj)
    for prec in MAC_PJ:
        if f"energy_mac_pj_{prec}" in vals:
            macs[prec] = float(vals[f"energy_mac_pj_{prec}"])
    fields: dict[str, Any] = {
        name: float(vals[key]) for key, name in _ENERGY_FIELDS.items() if key in vals
    }
    if "energy_d2d_class" in vals:  # a new class brings its own pJ/bit unless given
        fields["d2d_class"] = vals["energy_d2d_class"]
        fields.setdefault("d2d_pj_per_bit", None)
    return dataclasses.replace(e, mac_pj=tuple(sorted(macs.items())), **fields)


def apply_overrides(p: TargetParams, overrides: Mapping[str, Any]) -> TargetParams:
    """Return ``p`` with flat overrides applied; unknown keys or bad values raise TargetError."""
    vals: dict[str, Any] = {}
    for key in sorted(overrides):
        if key not in OVERRIDE_KEYS:
            raise TargetError(
                f"unknown target override {key!r}, expected one of: {', '.join(OVERRIDE_KEYS)}"
            )
        vals[key] = _override_value(key, overrides[key])
    host = p.host
    top: dict[str, Any] = {}
    if "topology" in vals:
        top["topology"] = vals["topology"]
    for key in ("dies_x", "dies_y", "num_dies"):
        if key in vals:
            top[key] = vals[key]
    topology = top.get("topology", p.topology)
    if topology == "mesh":
        if "num_dies" in vals and not {"dies_x", "dies_y"} & set(vals):
            raise TargetError("override num_dies: a mesh is sized by dies_x and dies_y")
        top["num_dies"] = top.get("dies_x", p.dies_x) * top.get("dies_y", p.dies_y)
    elif {"dies_x", "dies_y"} & set(vals):
        raise TargetError(f"override dies_x/dies_y: only a mesh has them, topology is {topology}")
    die = _die_overrides(p, vals)
    dram = _dram_overrides(p, vals)
    if "host_gbps" in vals or "host_latency_ns" in vals:
        base = host or Host(gbps=32.0, latency_s=1e-6)
        host = dataclasses.replace(
            base,
            gbps=vals.get("host_gbps", base.gbps),
            latency_s=vals["host_latency_ns"] * 1e-9
            if "host_latency_ns" in vals
            else base.latency_s,
        )
    if topology != "mesh" and isinstance(dram.placement, str) and dram.placement != "all":
        dram = dataclasses.replace(dram, placement="all")
    framing = p.d2d_framing
    for key, name in (
        ("d2d_flit_payload_bytes", "payload_bytes"),
        ("d2d_flit_overhead_bytes", "overhead_bytes"),
        ("d2d_min_bytes", "min_bytes"),
    ):
        if key in vals:
            framing = dataclasses.replace(framing, **{name: vals[key]})
    return dataclasses.replace(
        p,
        **top,
        die=die,
        dram=dram,
        host=host,
        d2d_gbps=vals.get("d2d_gbps", p.d2d_gbps),
        d2d_latency_s=vals["d2d_latency_ns"] * 1e-9
        if "d2d_latency_ns" in vals
        else p.d2d_latency_s,
        d2d_framing=framing,
        ideal=vals.get("ideal", p.ideal),
        energy=_energy_overrides(p, vals),
    )
