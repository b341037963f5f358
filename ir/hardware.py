"""The hardware model as data: MAC arrays, vector units, fixed costs, link framing, DRAM kinds.

A :class:`moec.ir.target.Target` is the package (dies, links, channels); this module holds the
parts of it that make the machine non-ideal, each a plain frozen value with a documented default.
The formulas that read them live in one place, :mod:`moec.ir.cost`; ``docs/targets.md`` gives
every default's source.

- :class:`MacArray`: a die's systolic MAC array(s): ``count`` arrays of ``rows x cols``
  processing elements with one dataflow (``ws`` weight-, ``os`` output-, ``is`` input-stationary).
  GEMM cycles follow SCALE-Sim v3's accounting (:func:`moec.ir.cost.gemm_cycles`).
- :class:`DieCosts`: the die's vector unit width and the fixed costs of issuing an instruction
  and of setting up a DMA transfer.
- :class:`Framing`: how a link carries bytes: payload and overhead per flit (or packet) and the
  smallest transfer; the wire carries ``ceil(max(bytes, min) / payload) x (payload + overhead)``.
- :class:`DramKind`: per DRAM technology, the burst size and the sustained efficiency of
  streaming reads. A channel's kind sets its defaults; a target may override both.

``ideal`` on the target switches every non-ideal term off: GEMMs at peak, no fixed costs, no
framing, DRAM at pin bandwidth, exactly the first-wave model.
"""

from __future__ import annotations

from dataclasses import dataclass

from moec.ir.errors import TargetError

#: Dataflows of a systolic array: weight-, output- and input-stationary.
DATAFLOWS = ("ws", "os", "is")
#: how the stationary operand's next tile is loaded: after the fold (single) or during it (double)
WEIGHT_BUFFERINGS = ("single", "double")


@dataclass(frozen=True)
class MacArray:
    """``count`` systolic arrays of ``rows x cols`` PEs, one multiply-accumulate per PE per cycle.

    For a GEMM ``[M, K] x [K, N]`` the array's rows take the reduction dimension ``K`` under
    ``ws``/``is`` and the output rows ``M`` under ``os``; its columns take ``N`` (``ws``, ``os``)
    or ``M`` (``is``). Work is cut into folds of one array's size; ``count`` arrays run folds in
    parallel.
    """

    rows: int
    cols: int
    count: int = 1
    dataflow: str = "ws"
    #: ``single``: a fold loads its stationary tile, then streams (SCALE-Sim's accounting);
    #: ``double``: shadow registers take the next tile while the current fold streams
    weight_buffering: str = "single"

    def __post_init__(self) -> None:
        if self.dataflow not in DATAFLOWS:
            raise TargetError(
                f"MAC array dataflow {self.dataflow!r}: expected one of {', '.join(DATAFLOWS)}"
            )
        if self.weight_buffering not in WEIGHT_BUFFERINGS:
            raise TargetError(
                f"MAC array weight_buffering {self.weight_buffering!r}: expected one of "
                f"{', '.join(WEIGHT_BUFFERINGS)}"
            )
        for name in ("rows", "cols", "count"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise TargetError(f"MAC array {name}: expected an integer > 0, found {v!r}")

    @property
    def macs(self) -> int:
        """Processing elements in all arrays."""
        return self.rows * self.cols * self.count

    @property
    def name(self) -> str:
        """Readable geometry, e.g. ``32x64 ws`` or ``16 x 128x128 ws``."""
        one = f"{self.rows}x{self.cols} {self.dataflow}"
        if self.weight_buffering == "double":
            one += " double-buffered"
        return one if self.count == 1 else f"{self.count} x {one}"


@dataclass(frozen=True)
class DieCosts:
    """A die's vector unit and fixed costs.

    ``vector_lanes``: elements the vector unit processes per cycle (one elementary op each: add,
    multiply, exp, reciprocal ...). ``issue_cycles``: cycles to issue one compute instruction
    (decode, address generation) before it occupies its unit. ``dma_setup_s``: the time a DMA
    engine spends on one transfer's descriptor before its data moves; it is charged on the
    resource the transfer holds (its channel, link or host link), so back-to-back small
    transfers pay it each time.
    """

    vector_lanes: int = 64
    issue_cycles: int = 16
    dma_setup_s: float = 100e-9


@dataclass(frozen=True)
class Framing:
    """How a link carries a transfer: ``payload_bytes`` of data per flit (or packet) plus
    ``overhead_bytes`` of header/CRC, and at least ``min_bytes`` of payload per transfer.
    ``payload_bytes`` 0 means no framing (the wire carries exactly the bytes)."""

    payload_bytes: int = 0
    overhead_bytes: int = 0
    min_bytes: int = 0

    def wire_bytes(self, nbytes: float) -> float:
        """Bytes on the wire for a transfer of ``nbytes`` of data."""
        n = max(float(nbytes), float(self.min_bytes))
        if self.payload_bytes <= 0:
            return n
        flits = -(-int(n) // self.payload_bytes) if n > 0 else 0
        return float(flits * (self.payload_bytes + self.overhead_bytes))


#: UCIe 1.1 "68B flit" mode: 64 B of payload, 2 B flit header and 2 B CRC; a transfer is at least
#: one flit.
UCIE_68B = Framing(payload_bytes=64, overhead_bytes=4, min_bytes=64)
#: PCIe 5.0 with a 256 B maximum payload: about 24 B per TLP (16 B header with 64-bit address,
#: 2 B sequence number, 4 B LCRC, 2 B framing); reads complete in 64 B (the read completion
#: boundary) at least.
PCIE_256B = Framing(payload_bytes=256, overhead_bytes=24, min_bytes=64)


@dataclass(frozen=True)
class DramKind:
    """A DRAM technology's access granularity and streaming efficiency.

    ``burst_bytes``: one access's data (a channel transfers whole bursts); ``efficiency``: the
    fraction of pin bandwidth sustained by a long stream of reads (refresh, row activation and
    bus turnarounds cost the rest).
    """

    name: str
    burst_bytes: int
    efficiency: float


#: Burst sizes from the JEDEC standards (bus width x burst length); efficiencies are estimates
#: (refresh alone costs tRFC/tREFI = 350 ns / 7.8 us = 4.5% on an 8 Gb DDR4 die; row switches and
#: turnarounds on streaming reads take a few percent more). ``docs/targets.md`` has the sources.
DRAM_KINDS: dict[str, DramKind] = {
    "ddr4": DramKind("ddr4", 64, 0.85),  # x64 channel, BL8 (JESD79-4)
    "ddr5": DramKind("ddr5", 64, 0.85),  # 32-bit subchannel, BL16 (JESD79-5)
    "lpddr5": DramKind("lpddr5", 32, 0.80),  # x16 channel, BL16 (JESD209-5)
    "hbm2e": DramKind("hbm2e", 32, 0.90),  # 64-bit pseudo-channel, BL4 (JESD235)
    "hbm3": DramKind("hbm3", 32, 0.90),  # 32-bit pseudo-channel, BL8 (JESD238)
}
#: Generic names kept for old targets: ``ddr`` is DDR4, ``hbm`` is HBM2e.
DRAM_ALIASES = {"ddr": "ddr4", "hbm": "hbm2e"}


def dram_kind(name: str) -> DramKind:
    """The :class:`DramKind` of a kind name (``ddr``/``hbm`` are DDR4/HBM2e)."""
    kind = DRAM_KINDS.get(DRAM_ALIASES.get(name, name))
    if kind is None:
        known = ", ".join([*DRAM_KINDS, *DRAM_ALIASES])
        raise TargetError(f"unknown DRAM kind {name!r}, expected one of {known}")
    return kind


def squarest_array(macs: int) -> MacArray:
    """One weight-stationary array of ``macs`` PEs, as square as ``macs`` allows (rows <= cols):
    2048 -> 32x64, 4096 -> 64x64."""
    if macs <= 0:
        raise TargetError(f"MACs per die: expected an integer > 0, found {macs!r}")
    rows = max(r for r in range(1, int(macs**0.5) + 1) if macs % r == 0)
    return MacArray(rows, macs // rows)
