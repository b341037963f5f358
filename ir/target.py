"""Targets: the package of dies, links, DRAM channels and host memory that a program runs on.

A :class:`Target` is plain frozen data that compiler decisions (placement, slice counts, cost-aware
pruning) and the interpreter's timing both read, so they agree on every number. It is built from
:class:`TargetParams`, a small parametric description (a die type, a topology, one D2D link type,
a rule placing DRAM channels, an optional host tier) that presets and TOML files
(``docs/targets.md``) both use; overrides (``d2d_gbps=512``, ``dies_x=4``...) edit the parameters
and rebuild, which is how design-space sweeps change a package.

Conventions: bytes, seconds, hertz; bandwidths in GB/s with GB = 1e9 bytes; links are directed
(one :class:`Link` per direction, each with its own bandwidth); mesh die ``id = y * dies_x + x``.

    >>> t = load_target("fsedp-2x2")
    >>> t.route(0, 3), t.hops(0, 3)
    ([0, 1, 3], 2)
    >>> t.with_overrides({"d2d_gbps": 512}).link(0, 1).gbps
    512.0
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from moec.ir.energy import EnergyModel
from moec.ir.errors import TargetError
from moec.ir.hardware import (
    DRAM_ALIASES,
    DRAM_KINDS,
    DieCosts,
    Framing,
    MacArray,
    dram_kind,
    squarest_array,
)
from moec.ir.target_overrides import OVERRIDE_KEYS, TOPOLOGIES, apply_overrides
from moec.ir.target_params import (
    DEFAULT_OPS_PER_MAC,
    GIB,
    MIB,
    DieParams,
    DramParams,
    Host,
    TargetParams,
)
from moec.ir.target_presets import PRESETS

__all__ = [
    "CHANNEL_KINDS", "DEFAULT_OPS_PER_MAC", "GIB", "MIB", "OVERRIDE_KEYS", "PRECISION_BYTES",
    "PRESETS", "TOPOLOGIES", "Channel", "Die", "DieParams", "DramParams", "Host", "Link",
    "Target", "TargetParams", "apply_overrides", "build", "load_target", "preset",
]  # fmt: skip

#: DRAM kinds a channel may have (``ddr``/``hbm`` are DDR4/HBM2e).
CHANNEL_KINDS = (*DRAM_KINDS, *DRAM_ALIASES)
#: Bytes per element of each precision the cost model knows.
PRECISION_BYTES: dict[str, float] = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "int4": 0.5}


# --- the expanded target ------------------------------------------------------------------------
@dataclass(frozen=True)
class Die:
    """One compute die (or device): MAC array, clock, on-chip SRAM, throughput per precision,
    vector unit and fixed costs (:mod:`moec.ir.hardware`)."""

    id: int
    macs: int
    clock_hz: float
    sram_bytes: int
    # Excluded from the hash (a dict is not hashable) so targets can key caches; still compared.
    ops_per_mac: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_OPS_PER_MAC), hash=False
    )
    x: int = 0
    y: int = 0
    array: MacArray = MacArray(32, 64)
    costs: DieCosts = DieCosts()

    def flops_per_s(self, precision: str = "fp16") -> float:
        """Peak FLOP/s (2 per multiply-accumulate) at ``precision``."""
        mult = self.ops_per_mac.get(precision)
        if mult is None:
            raise TargetError(
                f"die {self.id} has no throughput for precision {precision!r}, "
                f"expected one of {sorted(self.ops_per_mac)}"
            )
        return 2.0 * self.macs * self.clock_hz * mult


@dataclass(frozen=True)
class Link:
    """One direction of a die-to-die link."""

    src: int
    dst: int
    gbps: float
    latency_s: float
    framing: Framing = Framing()


@dataclass(frozen=True)
class Channel:
    """A DRAM channel (DDR or HBM) attached to a die; ``capacity_bytes`` 0 means unbounded."""

    id: int
    die: int
    gbps: float
    kind: str = "ddr"
    latency_s: float = 0.0
    capacity_bytes: int = 0
    #: bytes per access and the sustained fraction of ``gbps`` for streaming reads
    burst_bytes: int = 64
    efficiency: float = 1.0


# --- the target ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """A built package: dies, directed links, DRAM channels, optional host tier."""

    name: str
    topology: str
    dies: tuple[Die, ...]
    links: tuple[Link, ...]
    channels: tuple[Channel, ...]
    host: Host | None = None
    dims: tuple[int, int] = (1, 1)
    params: TargetParams | None = field(default=None, compare=False, repr=False)
    description: str = field(default="", compare=False)
    #: the first-wave ideal machine: every :mod:`moec.ir.cost` formula drops its non-ideal terms
    ideal: bool = False
    #: energy per operation, byte and bit, and static power (:mod:`moec.ir.energy`)
    energy: EnergyModel = EnergyModel()
    _links: dict[tuple[int, int], Link] = field(init=False, repr=False, compare=False)
    _adj: dict[int, list[int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        adj: dict[int, set[int]] = {d.id: set() for d in self.dies}
        for lk in self.links:
            adj[lk.src].add(lk.dst)
        object.__setattr__(self, "_links", {(lk.src, lk.dst): lk for lk in self.links})
        object.__setattr__(self, "_adj", {k: sorted(v) for k, v in adj.items()})

    # structure
    @property
    def num_dies(self) -> int:
        return len(self.dies)

    def die(self, die: int) -> Die:
        self._check_die(die)
        return self.dies[die]

    def neighbors(self, die: int) -> list[int]:
        self._check_die(die)
        return list(self._adj[die])

    def are_neighbors(self, a: int, b: int) -> bool:
        return (a, b) in self._links

    def link(self, a: int, b: int) -> Link:
        lk = self._links.get((a, b))
        if lk is None:
            raise TargetError(f"target {self.name!r} has no link from die {a} to die {b}")
        return lk

    def channel(self, channel: int) -> Channel:
        if not 0 <= channel < len(self.channels):
            raise TargetError(
                f"target {self.name!r} has no DRAM channel {channel} (it has {len(self.channels)})"
            )
        return self.channels[channel]

    def channels_of(self, die: int) -> list[Channel]:
        self._check_die(die)
        return [c for c in self.channels if c.die == die]

    def nearest_channel(self, die: int) -> Channel:
        """The channel fewest hops away; ties go to the lower channel id."""
        self._check_die(die)
        if not self.channels:
            raise TargetError(f"target {self.name!r} has no DRAM channel")
        return min(self.channels, key=lambda c: (self.hops(die, c.die), c.id))

    def route(self, a: int, b: int) -> list[int]:
        """Dies visited from ``a`` to ``b``, both included; deterministic shortest path.

        Mesh: XY dimension-order routing (along x first, then y). Ring: the shorter way round,
        ties going up (``i -> i+1``). Full: direct.
        """
        self._check_die(a)
        self._check_die(b)
        if a == b:
            return [a]
        if self.topology == "mesh":
            nx = self.dims[0]
            ax, ay, bx, by = a % nx, a // nx, b % nx, b // nx
            path = [a]
            x, y = ax, ay
            while x != bx:
                x += 1 if bx > x else -1
                path.append(y * nx + x)
            while y != by:
                y += 1 if by > y else -1
                path.append(y * nx + x)
            return path
        if self.topology == "ring":
            n = self.num_dies
            up = (b - a) % n
            step = 1 if up <= n - up else -1
            path = [a]
            while path[-1] != b:
                path.append((path[-1] + step) % n)
            return path
        return [a, b]

    def hops(self, a: int, b: int) -> int:
        return len(self.route(a, b)) - 1

    # totals
    def total_dram_gbps(self) -> float:
        return sum(c.gbps for c in self.channels)

    def total_flops_per_s(self, precision: str = "fp16") -> float:
        return sum(d.flops_per_s(precision) for d in self.dies)

    def total_sram_bytes(self) -> int:
        return sum(d.sram_bytes for d in self.dies)

    # conversion
    def with_overrides(self, overrides: Mapping[str, Any]) -> Target:
        """A new target with flat overrides applied (see :data:`OVERRIDE_KEYS`)."""
        if self.params is None:
            raise TargetError(f"target {self.name!r} was not built from parameters")
        return build(apply_overrides(self.params, overrides))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able description (the expanded form), in a fixed key order."""
        return {
            "name": self.name,
            "topology": self.topology,
            "dims": list(self.dims),
            "num_dies": self.num_dies,
            "description": self.description,
            "dies": [
                {
                    "id": d.id,
                    "x": d.x,
                    "y": d.y,
                    "macs": d.macs,
                    "clock_hz": d.clock_hz,
                    "sram_bytes": d.sram_bytes,
                    "ops_per_mac": {k: d.ops_per_mac[k] for k in sorted(d.ops_per_mac)},
                    "array": dataclasses.asdict(d.array),
                    "costs": dataclasses.asdict(d.costs),
                }  # fmt: skip
                for d in self.dies
            ],
            "links": [
                {
                    "src": lk.src,
                    "dst": lk.dst,
                    "gbps": lk.gbps,
                    "latency_s": lk.latency_s,
                    "framing": dataclasses.asdict(lk.framing),
                }  # fmt: skip
                for lk in self.links
            ],
            "channels": [dataclasses.asdict(c) for c in self.channels],
            "host": dataclasses.asdict(self.host) if self.host else None,
            "ideal": self.ideal,
            "energy": self.energy.to_dict(),
        }

    def summary(self) -> str:
        d0 = self.dies[0]
        shape = f"{self.dims[0]}x{self.dims[1]} mesh" if self.topology == "mesh" else self.topology
        dram = ", ".join(f"{c.kind}@die{c.die} {c.gbps:g}" for c in self.channels)
        return (
            f"{self.name}{' (ideal)' if self.ideal else ''}: {self.num_dies} dies ({shape}), "
            f"{d0.macs} MAC ({d0.array.name}) @ {d0.clock_hz / 1e6:g} MHz"
            f" = {d0.flops_per_s() / 1e12:.3g} TFLOP/s fp16 per die, SRAM {d0.sram_bytes / MIB:g}"
            f" MiB/die; D2D {self.links[0].gbps if self.links else 0:g} GB/s per direction; "
            f"DRAM {self.total_dram_gbps():g} GB/s total [{dram}]"
            + (f"; host {self.host.gbps:g} GB/s per die" if self.host else "")
        )

    def _check_die(self, die: int) -> None:
        if not isinstance(die, int) or not 0 <= die < len(self.dies):
            raise TargetError(
                f"target {self.name!r} has no die {die!r} (dies 0..{len(self.dies) - 1})"
            )


# --- building ------------------------------------------------------------------------------------
def _die_coords(p: TargetParams) -> list[tuple[int, int]]:
    if p.topology == "mesh":
        return [(i % p.dies_x, i // p.dies_x) for i in range(p.dies_x * p.dies_y)]
    return [(i, 0) for i in range(p.num_dies)]


def _channel_dies(p: TargetParams, coords: list[tuple[int, int]]) -> list[int]:
    n = len(coords)
    pl = p.dram.placement
    if isinstance(pl, tuple):
        bad = [d for d in pl if not 0 <= d < n]
        if bad:
            raise TargetError(
                f"target {p.name!r}: DRAM channel on die {bad[0]}, dies are 0..{n - 1}"
            )
        return list(pl)
    if pl == "all":
        return list(range(n))
    if p.topology != "mesh":
        raise TargetError(
            f"target {p.name!r}: DRAM placement {pl!r} needs a mesh, use 'all' or die ids"
        )
    mx, my = p.dies_x - 1, p.dies_y - 1
    if pl == "corners":
        return [i for i, (x, y) in enumerate(coords) if x in (0, mx) and y in (0, my)]
    if pl == "edges":
        return [i for i, (x, y) in enumerate(coords) if x in (0, mx) or y in (0, my)]
    raise TargetError(f"target {p.name!r}: unknown DRAM placement {pl!r}")


def _links(p: TargetParams, coords: list[tuple[int, int]]) -> list[Link]:
    n = len(coords)
    pairs: set[tuple[int, int]] = set()
    if p.topology == "mesh":
        for i, (x, y) in enumerate(coords):
            if x + 1 < p.dies_x:
                pairs |= {(i, i + 1), (i + 1, i)}
            if y + 1 < p.dies_y:
                pairs |= {(i, i + p.dies_x), (i + p.dies_x, i)}
    elif p.topology == "ring":
        for i in range(n):
            j = (i + 1) % n
            if i != j:
                pairs |= {(i, j), (j, i)}
    else:
        pairs = {(i, j) for i in range(n) for j in range(n) if i != j}
    return [Link(s, d, p.d2d_gbps, p.d2d_latency_s, p.d2d_framing) for s, d in sorted(pairs)]


def build(p: TargetParams) -> Target:
    """Expand parameters into a :class:`Target` (dies, links, channels)."""
    if p.topology not in TOPOLOGIES:
        raise TargetError(
            f"target {p.name!r}: unknown topology {p.topology!r}, expected {TOPOLOGIES}"
        )
    coords = _die_coords(p)
    ops = dict(p.die.ops_per_mac)
    array = p.die.array or squarest_array(p.die.macs)
    if array.macs != p.die.macs:
        raise TargetError(
            f"target {p.name!r}: {p.die.macs} MACs per die, but its MAC array {array.name} has "
            f"{array.macs}"
        )
    dies = tuple(
        Die(i, p.die.macs, p.die.clock_hz, p.die.sram_bytes, dict(ops), x, y, array, p.die.costs)
        for i, (x, y) in enumerate(coords)
    )
    where = _channel_dies(p, coords)
    d = p.dram
    if d.gbps_per_channel is not None:
        per = d.gbps_per_channel
    elif d.gbps_total is not None:
        per = d.gbps_total / max(len(where), 1)
    elif d.gbps_per_die is not None:
        per = d.gbps_per_die * len(dies) / max(len(where), 1)
    else:
        raise TargetError(f"target {p.name!r}: DRAM bandwidth not given")
    kind = dram_kind(d.kind)
    burst = d.burst_bytes if d.burst_bytes is not None else kind.burst_bytes
    efficiency = d.efficiency if d.efficiency is not None else kind.efficiency
    if not 0 < efficiency <= 1:
        raise TargetError(f"target {p.name!r}: DRAM efficiency {efficiency!r} is not in (0, 1]")
    channels = tuple(
        Channel(k, die, per, d.kind, d.latency_s, d.capacity_bytes, burst, efficiency)
        for k, die in enumerate(where)
    )
    dims = (p.dies_x, p.dies_y) if p.topology == "mesh" else (len(dies), 1)
    return Target(
        p.name, p.topology, dies, tuple(_links(p, coords)), channels, p.host, dims, p,
        p.description, p.ideal, p.energy,
    )  # fmt: skip


def preset(name: str) -> Target:
    """A preset target by name."""
    p = PRESETS.get(name)
    if p is None:
        raise TargetError(
            f"unknown target {name!r}, expected one of: {', '.join(PRESETS)} or a .toml file"
        )
    return build(p)


def load_target(
    spec: str,
    overrides: Mapping[str, int | float | str] | None = None,
    *,
    base_dir: str | None = None,
) -> Target:
    """A target from a preset name or a ``.toml`` file (relative to ``base_dir``), overridden."""
    if spec in PRESETS:
        params = PRESETS[spec]
    elif spec.endswith(".toml") or os.sep in spec or "/" in spec:
        from moec.ir.target_toml import load_params

        path = spec if base_dir is None or os.path.isabs(spec) else os.path.join(base_dir, spec)
        params = load_params(path)
    else:
        raise TargetError(
            f"unknown target {spec!r}, expected one of: {', '.join(PRESETS)} or a .toml file"
        )
    if overrides:
        params = apply_overrides(params, overrides)
    return build(params)
