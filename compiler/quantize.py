"""Weight quantization of routed experts: symmetric int8/int4 with per-channel or block-wise scales.

The scheme is the one ONNX Runtime's ``com.microsoft.QMoE`` computes exactly (row-wise 8- and
4-bit, block-wise 4-bit), so a layer quantized here and exported as QMoE runs the same numbers in
ONNX Runtime as in moec's interpreter:

- a weight ``w [E, N, K]`` (ORT's ``[experts, output channels, input features]``) is cut into
  groups of ``block`` consecutive input features (``block=None``: the whole row, i.e. one scale
  per output channel);
- ``scale = max|w_group| / qmax`` with ``qmax = 2**(bits-1) - 1`` (7 or 127), **rounded up to
  16 mantissa bits**, ``q = clip(round(w / scale), -qmax, qmax)``; stored unsigned as
  ``q + 2**(bits-1)`` (QMoE's default zero point), 4-bit values packed two per byte, element
  ``2i`` in the low nibble;
- ``dequantize`` gives ``q * scale`` in float32.

Why the rounded scale: ``|q| <= 127`` has at most 7 significant bits, so with a 16-bit scale the
product ``q * scale`` is exact in float32, and the scale can be recovered exactly from the
dequantized weights (the largest element of each group lands on ``+-qmax``). The graph IR then
needs to keep only the dequantized floats: :func:`requantize` rebuilds the packed integers and
scales bit-for-bit when the layer is exported. Rounding the scale *up* keeps the error bound:
``|w - dequantize(quantize(w))| <= scale / 2`` per element.

fp16 "quantization" is rounding to the nearest half-precision value (error ``<= ulp / 2``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moec.ir.errors import ModelError

#: Precisions a routed expert may be assigned, best first.
PRECISIONS: tuple[str, ...] = ("fp16", "int8", "int4")
BITS: dict[str, int] = {"int8": 8, "int4": 4}
_MANTISSA_BITS = 16


@dataclass(frozen=True)
class QuantizedTensor:
    """Packed integers ``[E, N, K*bits/8]`` (uint8, zero point ``2**(bits-1)``) and scales.

    ``scales`` is ``[E, N]`` for row-wise quantization, ``[E, N, K/block]`` block-wise.
    """

    packed: np.ndarray
    scales: np.ndarray
    bits: int
    block: int | None
    shape: tuple[int, int, int]

    @property
    def nbytes(self) -> int:
        """Storage of the packed integers plus the float16 scales a device would hold."""
        return int(self.packed.nbytes + self.scales.size * 2)


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _check(w: np.ndarray, bits: int, block: int | None) -> None:
    if bits not in (4, 8):
        raise ModelError(f"quantization to {bits} bits, expected 4 or 8")
    if w.ndim != 3:
        raise ModelError(f"quantization expects [E, N, K] weights, found shape {list(w.shape)}")
    K = w.shape[2]
    if block is not None and (block < 2 or K % block):
        raise ModelError(f"block size {block} does not divide the {K} input features")
    if bits == 4 and K % 2:
        raise ModelError(f"4-bit packing needs an even number of input features, found {K}")


def _round_scale_up(scale: np.ndarray) -> np.ndarray:
    """``scale`` (float64) rounded up to 16 mantissa bits; zero groups get scale 1."""
    s = np.where(scale > 0, scale, 1.0)
    m, e = np.frexp(s)
    m = np.ceil(m * 2.0**_MANTISSA_BITS) / 2.0**_MANTISSA_BITS
    return np.ldexp(m, e).astype(np.float32)


def pack4(q: np.ndarray) -> np.ndarray:
    """uint8 nibbles ``[..., K]`` -> bytes ``[..., K/2]``, element ``2i`` in the low nibble."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def unpack4(packed: np.ndarray) -> np.ndarray:
    lo, hi = packed & 0x0F, packed >> 4
    return np.stack([lo, hi], axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def quantize(w: np.ndarray, bits: int, block: int | None = None) -> QuantizedTensor:
    """Symmetric quantization of ``w [E, N, K]`` along K (see the module docstring)."""
    _check(w, bits, block)
    E, N, K = (int(s) for s in w.shape)
    B = block or K
    groups = np.asarray(w, np.float64).reshape(E, N, K // B, B)
    qm = qmax(bits)
    scale = _round_scale_up(np.abs(groups).max(axis=-1) / qm)  # [E, N, K/B]
    q = np.clip(np.rint(groups / scale[..., None].astype(np.float64)), -qm, qm)
    stored = (q + 2 ** (bits - 1)).astype(np.uint8).reshape(E, N, K)
    packed = pack4(stored) if bits == 4 else stored
    scales = scale if block else scale[..., 0]
    return QuantizedTensor(packed, np.ascontiguousarray(scales), bits, block, (E, N, K))


def dequantize(qt: QuantizedTensor) -> np.ndarray:
    """Float32 ``[E, N, K]``: ``(stored - 2**(bits-1)) * scale``, exactly as ONNX Runtime's QMoE."""
    E, N, K = qt.shape
    vals = unpack4(qt.packed) if qt.bits == 4 else qt.packed
    q = vals.astype(np.float32) - np.float32(2 ** (qt.bits - 1))
    B = qt.block or K
    s = qt.scales.reshape(E, N, K // B).astype(np.float32)
    return (q.reshape(E, N, K // B, B) * s[..., None]).reshape(E, N, K)


def requantize(w: np.ndarray, bits: int, block: int | None = None) -> QuantizedTensor | None:
    """The :class:`QuantizedTensor` whose dequantization is exactly ``w``, or None if ``w`` is not
    on such a grid (it did not come from :func:`quantize`)."""
    qt = quantize(w, bits, block)
    return qt if np.array_equal(dequantize(qt), np.asarray(w, np.float32)) else None


def round_fp16(w: np.ndarray) -> np.ndarray:
    """Round to the nearest float16 value, kept as float32."""
    return np.asarray(w, np.float32).astype(np.float16).astype(np.float32)


def error_bound(qt: QuantizedTensor) -> np.ndarray:
    """Per-element bound ``scale / 2`` of :func:`quantize`'s error, shaped ``[E, N, K]``."""
    E, N, K = qt.shape
    B = qt.block or K
    s = qt.scales.reshape(E, N, K // B, 1).astype(np.float32) / np.float32(2)
    return np.broadcast_to(s, (E, N, K // B, B)).reshape(E, N, K)


def apply_precision(w: np.ndarray, precision: str, block: int | None = None) -> np.ndarray:
    """``w [E, N, K]`` after quantization to ``precision`` and back (float32)."""
    if precision in ("fp32",):
        return np.asarray(w, np.float32)
    if precision == "fp16":
        return round_fp16(w)
    bits = BITS.get(precision)
    if bits is None:
        raise ModelError(
            f"unknown expert precision {precision!r}, expected one of {', '.join(PRECISIONS)}"
        )
    return dequantize(quantize(w, bits, block))
