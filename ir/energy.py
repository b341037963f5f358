"""The energy model as data: what a MAC, an SRAM byte, a DRAM bit, a link bit and a second cost.

A :class:`~moec.ir.target.Target` carries one :class:`EnergyModel`; the formulas that read it
live in :mod:`moec.ir.cost.energy` and the interpreter charges them where it already counts
bytes and FLOPs. ``docs/targets.md`` ("Energy") gives every default's source; the ones marked
*estimate* there have no single published figure and are meant to be overridden (``--set
energy_*=``, TOML ``[energy]``).

Units: picojoules per operation, per byte (SRAM) or per bit (DRAM, links); watts for static
power. Energy does not depend on ``ideal``: that switch only changes timing.

- **MACs** (``mac_pj``, per precision): one multiply plus one add at that precision, from
  Horowitz (ISSCC 2014, 45 nm, 0.9 V): fp32 3.7 + 0.9, fp16 1.1 + 0.4, int8 0.2 + 0.03 pJ.
  bf16 is taken equal to fp16; int4 scales int8's multiplier by (4/8)^2 and halves its adder
  (estimates). Not scaled to a newer node: scale them with ``--set energy_mac_pj_fp16=...``.
- **vector ops** (``vector_op_pj``): one elementary fp32 op of the vector unit (an add, 0.9 pJ).
- **SRAM** (``sram_read_pj_per_byte`` / ``sram_write_pj_per_byte``): Horowitz's 64-bit read of a
  1 MB SRAM, 100 pJ, is 12.5 pJ per byte (a 16 MiB SRAM is banks of about that size); a write
  is taken equal (estimate).
- **DRAM** (:data:`DRAM_PJ_PER_BIT`, keyed like :data:`moec.ir.hardware.DRAM_KINDS`): whole
  access (core, I/O and PHY) energy per bit read; ``dram_pj_per_bit`` overrides every channel.
- **D2D** (:data:`D2D_PJ_PER_BIT`, per link class): UCIe 1.0's targets for a standard (organic
  substrate) and an advanced (silicon interposer / bridge) package, and board-level SerDes.
- **host link** (``host_pj_per_bit``): PCIe-class SerDes.
- **static** (``die_static_w``, ``channel_static_w``): leakage and idle power of a die and of a
  DRAM channel (background power), charged over the run's whole span.
"""

from __future__ import annotations

from dataclasses import dataclass

from moec.ir.errors import TargetError
from moec.ir.hardware import DRAM_ALIASES

#: pJ per multiply-accumulate at 45 nm (Horowitz, ISSCC 2014; bf16 and int4 are estimates).
MAC_PJ: dict[str, float] = {"fp32": 4.6, "fp16": 1.5, "bf16": 1.5, "int8": 0.23, "int4": 0.065}

#: DRAM energy per bit read, by kind (``docs/targets.md`` gives each figure's source).
DRAM_PJ_PER_BIT: dict[str, float] = {
    "ddr4": 15.0,
    "ddr5": 12.0,
    "lpddr5": 5.0,
    "hbm2e": 3.9,
    "hbm3": 3.5,
}

#: D2D energy per bit, by link class: UCIe 1.0 standard package (organic substrate) and advanced
#: package (silicon interposer or bridge); board-level long-reach SerDes (NVLink/PCIe-class).
D2D_PJ_PER_BIT: dict[str, float] = {
    "ucie-standard": 0.5,
    "ucie-advanced": 0.25,
    "serdes": 5.0,
}

#: Parts of the energy breakdown, in report order.
PARTS = ("compute", "sram", "dram", "d2d", "host", "static")


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation, byte and bit, and static power (units in the module docstring).

    ``dram_pj_per_bit`` / ``d2d_pj_per_bit`` None: the channel kind's and the link class's
    defaults (:data:`DRAM_PJ_PER_BIT`, :data:`D2D_PJ_PER_BIT`).
    """

    mac_pj: tuple[tuple[str, float], ...] = tuple(sorted(MAC_PJ.items()))
    vector_op_pj: float = 0.9
    sram_read_pj_per_byte: float = 12.5
    sram_write_pj_per_byte: float = 12.5
    dram_pj_per_bit: float | None = None
    d2d_class: str = "ucie-standard"
    d2d_pj_per_bit: float | None = None
    host_pj_per_bit: float = 5.0
    die_static_w: float = 0.5
    channel_static_w: float = 0.5

    def __post_init__(self) -> None:
        if self.d2d_class not in D2D_PJ_PER_BIT:
            raise TargetError(
                f"D2D link class {self.d2d_class!r}: expected one of {', '.join(D2D_PJ_PER_BIT)}"
            )

    def mac(self, precision: str) -> float:
        """pJ per multiply-accumulate at ``precision``."""
        for name, pj in self.mac_pj:
            if name == precision:
                return pj
        raise TargetError(
            f"the energy model has no MAC energy for precision {precision!r}, "
            f"expected one of {[n for n, _ in self.mac_pj]}"
        )

    def dram_bit(self, kind: str) -> float:
        """pJ per bit read from a channel of ``kind`` (``ddr``/``hbm`` are DDR4/HBM2e)."""
        if self.dram_pj_per_bit is not None:
            return self.dram_pj_per_bit
        pj = DRAM_PJ_PER_BIT.get(DRAM_ALIASES.get(kind, kind))
        if pj is None:
            raise TargetError(f"the energy model has no DRAM energy for kind {kind!r}")
        return pj

    def d2d_bit(self) -> float:
        """pJ per bit on a D2D link."""
        if self.d2d_pj_per_bit is not None:
            return self.d2d_pj_per_bit
        return D2D_PJ_PER_BIT[self.d2d_class]

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able form, in a fixed key order."""
        return {
            "mac_pj": dict(self.mac_pj),
            "vector_op_pj": self.vector_op_pj,
            "sram_read_pj_per_byte": self.sram_read_pj_per_byte,
            "sram_write_pj_per_byte": self.sram_write_pj_per_byte,
            "dram_pj_per_bit": self.dram_pj_per_bit,
            "d2d_class": self.d2d_class,
            "d2d_pj_per_bit": self.d2d_bit(),
            "host_pj_per_bit": self.host_pj_per_bit,
            "die_static_w": self.die_static_w,
            "channel_static_w": self.channel_static_w,
        }
