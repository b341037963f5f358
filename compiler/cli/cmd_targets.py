"""``moec targets``: list the preset targets, show one (preset or TOML file) in full."""

from __future__ import annotations

import argparse
import json
from typing import Any

from moec.ir.target import MIB, PRESETS, Target, load_target, preset


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("targets", help="list and show targets (dies, links, DRAM)")
    sub = p.add_subparsers(dest="targets_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="list the preset targets")
    ls.set_defaults(func=run_list)
    show = sub.add_parser("show", help="show a preset or a target TOML file")
    show.add_argument("target", metavar="NAME|FILE", help="preset name or path to a .toml file")
    show.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="override a field (e.g. d2d_gbps=512); repeatable",
    )  # fmt: skip
    show.add_argument("--json", action="store_true", help="print the expanded target as JSON")
    show.set_defaults(func=run_show)


def parse_sets(items: list[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; values are validated by the target."""
    from moec.ir.errors import TargetError

    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise TargetError(f"--set {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def run_list(args: argparse.Namespace) -> int:
    for name in PRESETS:
        print(preset(name).summary())
    return 0


def _describe(t: Target) -> str:
    lines = [t.summary()]
    if t.description:
        lines.append(f"  {t.description}")
    lines.append("dies:")
    for d in t.dies:
        ops = ", ".join(f"{k} x{d.ops_per_mac[k]:g}" for k in sorted(d.ops_per_mac))
        lines.append(
            f"  die {d.id} ({d.x},{d.y}): {d.macs} MAC @ {d.clock_hz / 1e6:g} MHz, "
            f"SRAM {d.sram_bytes / MIB:g} MiB, neighbors {t.neighbors(d.id)}, [{ops}]"
        )
    d0 = t.dies[0]
    lines.append(
        f"compute: {d0.array.name} MAC array, {d0.costs.vector_lanes}-lane vector unit, "
        f"issue {d0.costs.issue_cycles} cycles, DMA setup {d0.costs.dma_setup_s * 1e9:g} ns"
        + (
            "  [ideal: GEMMs at peak, no fixed costs, no framing, DRAM at pin rate]"
            if t.ideal
            else ""
        )
    )
    lines.append("links (per direction):")
    for lk in t.links:
        fr = lk.framing
        framing = (
            f", flits {fr.payload_bytes}+{fr.overhead_bytes} B, min {fr.min_bytes} B"
            if fr.payload_bytes
            else ""
        )
        lines.append(
            f"  {lk.src} -> {lk.dst}: {lk.gbps:g} GB/s, {lk.latency_s * 1e9:g} ns{framing}"
        )
    lines.append("channels:")
    for c in t.channels:
        cap = f", {c.capacity_bytes / (1 << 30):g} GiB" if c.capacity_bytes else ""
        lines.append(
            f"  ch{c.id} {c.kind} on die {c.die}: {c.gbps:g} GB/s, {c.latency_s * 1e9:g} ns, "
            f"{c.burst_bytes} B bursts at {c.efficiency:.0%}{cap}"
        )
    if t.host:
        lines.append(
            f"host: {t.host.gbps:g} GB/s per die, {t.host.latency_s * 1e9:g} ns"
            + (f", {t.host.capacity_bytes / (1 << 30):g} GiB" if t.host.capacity_bytes else "")
        )
    return "\n".join(lines)


def run_show(args: argparse.Namespace) -> int:
    target = load_target(args.target, parse_sets(args.set))
    if args.json:
        print(json.dumps(target.to_dict(), indent=2))
    else:
        print(_describe(target))
    return 0
