"""Energy formulas: joules of a load, a transfer, a GEMM, an activation, static power over a span.

Each reads the target's :class:`~moec.ir.energy.EnergyModel` (pJ per MAC, SRAM byte, DRAM and
link bit; static W). The interpreter charges the same formulas per instruction, per die and per
part (``compute``, ``sram``, ``dram``, ``d2d``, ``host``, ``static``), where it already counts the
instruction's bytes and FLOPs; the tests check them against hand arithmetic.

With ``T`` tokens, hidden ``d``, a micro-slice's FFN columns ``w``, ``g`` = 2 for a gated expert
(gate and up) else 1, ``pb`` the weights' bytes per element, ``xb`` an activation row's bytes
(:func:`moec.ir.activations.x_row_bytes`) and accumulators in fp32 (4 bytes):

- **DRAM read** of ``n`` bytes: ``8 n x dram_pj_per_bit(kind)``; the data bytes, not whole
  bursts (a burst's unused bytes are not driven to the die).
- **link** crossing (D2D or host) of ``n`` bytes: ``8 x wire(n) x pj_per_bit``, ``wire`` the
  link's framing (:meth:`moec.ir.hardware.Framing.wire_bytes`; ``n`` on an ideal target).
- **load** of ``n`` bytes from a channel into a die: the DRAM read, one link crossing per hop of
  ``target.route(channel die, die)``, and ``n x sram_write`` into the die's slot. From the host:
  one host-link crossing and the SRAM write.
- **send/recv** of ``n`` bytes: one link crossing, ``n x sram_read`` at the sender and
  ``n x sram_write`` at the receiver.
- **gemm**: ``T d w g`` MACs; SRAM reads the slice's gate/up weights ``g d w pb`` and the tokens
  ``T xb``, writes ``h``, ``T w g x 4``.
- **act**: ``2 T w`` vector ops (the interpreter's FLOPs for it); SRAM reads ``h``
  (``T w g x 4``) and writes the activated ``T w x 4``.
- **accum**: ``T w d`` MACs; SRAM reads the down weights ``d w pb`` and ``T w x 4``, and reads
  and writes the outputs ``T d x 4`` (read-modify-write).
- **dense**: ``flops / 2`` MACs at the layer precision (its weights' DRAM read is a load).
- **static** over a span ``t``: ``t x (dies x die_static_w + channels x channel_static_w)``.
"""

from __future__ import annotations

from moec.ir.activations import ACCUM_PRECISION, x_row_bytes
from moec.ir.target import PRECISION_BYTES, Target

#: joules per picojoule
PJ = 1e-12
_ACC = PRECISION_BYTES[ACCUM_PRECISION]


def dram_energy(target: Target, channel: int, nbytes: float) -> float:
    """Joules of reading ``nbytes`` from DRAM channel ``channel``."""
    ch = target.channel(channel)
    return 8.0 * nbytes * target.energy.dram_bit(ch.kind) * PJ


def link_energy(target: Target, src: int, dst: int, nbytes: float) -> float:
    """Joules of ``nbytes`` crossing the link ``src -> dst`` (framing included)."""
    lk = target.link(src, dst)
    wire = float(nbytes) if target.ideal else lk.framing.wire_bytes(nbytes)
    return 8.0 * wire * target.energy.d2d_bit() * PJ


def host_energy(target: Target, nbytes: float) -> float:
    """Joules of ``nbytes`` crossing a die's host link (framing included)."""
    host = target.host
    wire = float(nbytes)
    if host is not None and not target.ideal:
        wire = host.framing.wire_bytes(nbytes)
    return 8.0 * wire * target.energy.host_pj_per_bit * PJ


def sram_read_energy(target: Target, nbytes: float) -> float:
    """Joules of reading ``nbytes`` from a die's SRAM."""
    return nbytes * target.energy.sram_read_pj_per_byte * PJ


def sram_write_energy(target: Target, nbytes: float) -> float:
    """Joules of writing ``nbytes`` into a die's SRAM."""
    return nbytes * target.energy.sram_write_pj_per_byte * PJ


def load_energy(target: Target, channel: int, die: int, nbytes: float) -> dict[str, float]:
    """``{"dram", "d2d", "sram"}`` joules of a load of ``nbytes`` from ``channel`` into ``die``."""
    ch = target.channel(channel)
    path = target.route(ch.die, die)
    d2d = sum(link_energy(target, a, b, nbytes) for a, b in zip(path, path[1:], strict=False))
    return {
        "dram": dram_energy(target, channel, nbytes),
        "d2d": d2d,
        "sram": sram_write_energy(target, nbytes),
    }


def transfer_energy(target: Target, src: int, dst: int, nbytes: float) -> dict[str, float]:
    """``{"d2d", "sram"}`` joules of a send/recv of ``nbytes`` over the link ``src -> dst``."""
    return {
        "d2d": link_energy(target, src, dst, nbytes),
        "sram": sram_read_energy(target, nbytes) + sram_write_energy(target, nbytes),
    }


def gemm_energy(
    target: Target, tokens: int, hidden: int, width: int, gated: bool, precision: str,
    act_dtype: str,
) -> dict[str, float]:  # fmt: skip
    """``{"compute", "sram"}`` joules of a slice's gate/up projections."""
    e = target.energy
    g = 2 if gated else 1
    macs = float(tokens) * hidden * width * g
    reads = g * hidden * width * PRECISION_BYTES[precision] + tokens * x_row_bytes(
        hidden, act_dtype
    )
    writes = tokens * width * g * _ACC
    return {
        "compute": macs * e.mac(precision) * PJ,
        "sram": (reads * e.sram_read_pj_per_byte + writes * e.sram_write_pj_per_byte) * PJ,
    }


def act_energy(target: Target, tokens: int, width: int, gated: bool) -> dict[str, float]:
    """``{"compute", "sram"}`` joules of a slice's activation."""
    e = target.energy
    g = 2 if gated else 1
    reads = tokens * width * g * _ACC
    writes = tokens * width * _ACC
    return {
        "compute": 2.0 * tokens * width * e.vector_op_pj * PJ,
        "sram": (reads * e.sram_read_pj_per_byte + writes * e.sram_write_pj_per_byte) * PJ,
    }


def accum_energy(
    target: Target, tokens: int, hidden: int, width: int, precision: str
) -> dict[str, float]:  # fmt: skip
    """``{"compute", "sram"}`` joules of a slice's down projection into the outputs."""
    e = target.energy
    macs = float(tokens) * width * hidden
    reads = hidden * width * PRECISION_BYTES[precision] + tokens * width * _ACC
    reads += tokens * hidden * _ACC
    writes = tokens * hidden * _ACC
    return {
        "compute": macs * e.mac(precision) * PJ,
        "sram": (reads * e.sram_read_pj_per_byte + writes * e.sram_write_pj_per_byte) * PJ,
    }


def dense_energy(target: Target, flops: float, precision: str) -> float:
    """Joules of a dense island's ``flops`` (2 per MAC) on the MAC array."""
    return flops / 2.0 * target.energy.mac(precision) * PJ


def die_static_energy(target: Target, die: int, span_s: float) -> float:
    """Joules die ``die`` and the DRAM channels attached to it leak and idle over ``span_s``."""
    e = target.energy
    channels = sum(1 for c in target.channels if c.die == die)
    return span_s * (e.die_static_w + channels * e.channel_static_w)


def static_energy(target: Target, span_s: float) -> float:
    """Joules the whole package leaks and idles over ``span_s`` seconds."""
    e = target.energy
    return span_s * (target.num_dies * e.die_static_w + len(target.channels) * e.channel_static_w)
