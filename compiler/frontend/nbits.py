"""ONNX Runtime's block-quantized integer weights, as the fused MoE recognizer reads them.

Two producers: ``com.microsoft.QMoE`` expert weights (:func:`dequantize`) and a
``com.microsoft.MatMulNBits`` router product (:func:`nbits_product`), which onnxruntime-genai's
model builder writes for every linear layer, the router included, at ``-p int4`` / ``-p int8``.

``MatMulNBits(A, B, scales[, zero_points[, g_idx[, bias]]])`` with attributes ``K``, ``N``,
``bits``, ``block_size``: ``B`` is ``uint8 [N, ceil(K/block), block*bits/8]`` (4-bit: element
2i in the low nibble), ``scales`` ``[N * blocks]``, zero points packed like ``B`` (default
``2**(bits-1)``); ``W[k, n] = (q[n, k] - zp) * scale[n, k // block]`` and ``Y = A @ W (+ bias)``.
At ``accuracy_level=4`` ONNX Runtime's CPU kernel first quantizes ``A`` to int8 in blocks of
``block_size`` along K (symmetric, ``max|a| / 127``; measured: the builder's int4 and int8
gpt-oss routers differ from the float product by 5e-3 relative and match the modelled one to
5e-7), which the canonical layer models as ``router_act_quant_block``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from moec.compiler.frontend.patterns import GraphView

#: ``accuracy_level`` at which ORT's CPU MatMulNBits computes with int8 activations.
INT8_COMPUTE_LEVEL = 4


def _unpack4(packed: np.ndarray) -> np.ndarray:
    lo = packed & 0x0F
    hi = packed >> 4
    return np.stack([lo, hi], axis=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


def dequantize(
    q: np.ndarray, scales: np.ndarray, zp: np.ndarray | None, bits: int, block: int | None
) -> np.ndarray:
    """QMoE int weights ``[E, N, K*bits/8]`` -> float ``[E, N, K]``."""
    vals = _unpack4(q) if bits == 4 else q
    vals = vals.astype(np.float32)
    E, N, K = vals.shape
    # A row shorter than a block (or not a multiple of it) ends in one partial block.
    nblocks = -(-K // block) if block else 1
    width = block if block else K
    s = np.asarray(scales, np.float32).reshape(E, N, nblocks)
    if zp is None:
        z = np.full((E, N, nblocks), 2 ** (bits - 1), np.float32)
    else:
        zv = _unpack4(zp) if bits == 4 else zp
        z = zv.reshape(E, N, -1)[:, :, :nblocks].astype(np.float32)
    padded = np.pad(vals, ((0, 0), (0, 0), (0, nblocks * width - K)))
    blk = padded.reshape(E, N, nblocks, width)
    return ((blk - z[..., None]) * s[..., None]).reshape(E, N, nblocks * width)[:, :, :K]


@dataclass(frozen=True)
class NBitsProduct:
    """A MatMulNBits router product: ``logits = x @ w (+ bias)``; ``w`` None when declared."""

    x: str
    w: np.ndarray | None
    shape: tuple[int, int]
    bias: np.ndarray | None
    bits: int
    act_quant_block: int | None


def _input(node: onnx.NodeProto, index: int) -> str:
    return node.input[index] if index < len(node.input) else ""


def act_quant_block(view: GraphView, p: onnx.NodeProto) -> int | None:
    """The block in which ORT's CPU kernel quantizes MatMulNBits ``p``'s input, or None."""
    if int(view.attr(p, "accuracy_level", 0)) != INT8_COMPUTE_LEVEL:
        return None
    return int(view.attr(p, "block_size", 0)) or None


def nbits_product(view: GraphView, p: onnx.NodeProto) -> NBitsProduct | str:
    """The router product of MatMulNBits node ``p``, dequantized as ORT does, or why not."""
    K, N = int(view.attr(p, "K", 0)), int(view.attr(p, "N", 0))
    bits, block = int(view.attr(p, "bits", 4)), int(view.attr(p, "block_size", 0))
    where = f"router MatMulNBits {view.name(p)}"
    if bits not in (4, 8) or K <= 0 or N <= 0 or block <= 0:
        return f"{where}: bits={bits}, K={K}, N={N}, block_size={block}, expected 4 or 8 bits"
    if _input(p, 4):
        return f"{where} has a g_idx input (act-order), not supported"
    q = view.weight(p.input[1])
    if q is None:
        return f"{where}: its weight ({p.input[1]!r}) is not a constant initializer"
    bias: np.ndarray | None = None
    if _input(p, 5):
        c = view.constant(_input(p, 5))
        if c is None or np.asarray(c).size != N:
            return f"{where}: its bias is not a constant [{N}] vector"
        bias = np.asarray(c, np.float32).reshape(N)
    act_block = act_quant_block(view, p)
    if q.data is None:
        return NBitsProduct(p.input[0], None, (K, N), bias, bits, act_block)
    scales = view.constant(_input(p, 2))
    if scales is None:
        return f"{where}: its scales are missing or not constant"
    zp_name = _input(p, 3)
    zp = view.constant(zp_name) if zp_name else None
    if zp is not None and np.asarray(zp).dtype != np.uint8:
        return f"{where}: float zero points are not supported"
    packed = np.asarray(q.data, np.uint8).reshape(1, N, -1)
    zq = None if zp is None else np.asarray(zp, np.uint8).reshape(1, N, -1)
    w = dequantize(packed, np.asarray(scales), zq, bits, block)[0, :, :K]
    return NBitsProduct(p.input[0], np.ascontiguousarray(w.T), (K, N), bias, bits, act_block)
