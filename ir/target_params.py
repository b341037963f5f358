"""The parametric description of a target: what presets, TOML files and overrides edit.

:class:`TargetParams` is small and flat (a die type, a topology, one D2D link type, a rule placing
DRAM channels, an optional host tier, the hardware-model parts of :mod:`moec.ir.hardware`, the
energy model of :mod:`moec.ir.energy`, and the ``ideal`` switch); :func:`moec.ir.target.build`
expands it into a :class:`~moec.ir.target.Target`.
"""

from __future__ import annotations

from dataclasses import dataclass

from moec.ir.energy import EnergyModel
from moec.ir.hardware import PCIE_256B, UCIE_68B, DieCosts, Framing, MacArray

#: Multiply-accumulates per MAC unit per cycle, relative to fp16 (int8 packs two, int4 four;
#: fp32, used only by small unquantized test models, runs at half rate).
DEFAULT_OPS_PER_MAC: dict[str, float] = {
    "fp32": 0.5, "fp16": 1.0, "bf16": 1.0, "int8": 2.0, "int4": 4.0,
}  # fmt: skip
MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class Host:
    """Host memory over PCIe-class links: each die has its own link of ``gbps`` per direction."""

    gbps: float
    latency_s: float
    capacity_bytes: int = 0
    framing: Framing = PCIE_256B


@dataclass(frozen=True)
class DieParams:
    """One die type. ``array`` None: the squarest single weight-stationary array of ``macs`` PEs
    (rows <= cols); otherwise its PEs must number ``macs``."""

    macs: int = 2048
    clock_hz: float = 800e6
    sram_bytes: int = 16 * MIB
    ops_per_mac: tuple[tuple[str, float], ...] = tuple(sorted(DEFAULT_OPS_PER_MAC.items()))
    array: MacArray | None = None
    costs: DieCosts = DieCosts()


@dataclass(frozen=True)
class DramParams:
    """DRAM channels: which dies carry one, and their bandwidth.

    ``placement`` is ``"corners"``, ``"edges"`` (border dies of a mesh), ``"all"``, or explicit
    die ids. Bandwidth is given by exactly one of ``gbps_per_channel``, ``gbps_total`` (spread
    equally over the channels) or ``gbps_per_die`` (total = value x number of dies, spread equally
    over the channels: the "DRAM GB/s per die" axis of the paper's design-space exploration, which
    stays meaningful when only some dies carry channels). ``burst_bytes`` and ``efficiency``
    default (None) to the kind's (:data:`moec.ir.hardware.DRAM_KINDS`).
    """

    placement: str | tuple[int, ...] = "corners"
    kind: str = "ddr"
    gbps_per_channel: float | None = 25.6
    gbps_total: float | None = None
    gbps_per_die: float | None = None
    latency_s: float = 0.0
    capacity_bytes: int = 0
    burst_bytes: int | None = None
    efficiency: float | None = None


@dataclass(frozen=True)
class TargetParams:
    """A whole package. ``ideal``: the first-wave machine (GEMMs at peak, no fixed costs, no
    framing, DRAM at pin bandwidth), whatever the hardware-model values say."""

    name: str
    topology: str = "mesh"
    dies_x: int = 2
    dies_y: int = 2
    num_dies: int = 4
    die: DieParams = DieParams()
    d2d_gbps: float = 288.0
    d2d_latency_s: float = 20e-9
    dram: DramParams = DramParams()
    host: Host | None = None
    description: str = ""
    d2d_framing: Framing = UCIE_68B
    ideal: bool = False
    energy: EnergyModel = EnergyModel()
