"""Elementwise numerics of the canonical MoE op (``ir/moe.py``): float32 casts, activations,
soft caps and block-wise int8 activation quantization."""

from __future__ import annotations

import math

import numpy as np

from moec.ir.errors import ModelError


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def _erf(x: np.ndarray) -> np.ndarray:
    # math.erf is exact to double precision; vectorized for float32 tensors of moderate size.
    return np.vectorize(math.erf, otypes=[np.float64])(x.astype(np.float64)).astype(np.float32)


def activate(kind: str, x: np.ndarray) -> np.ndarray:
    if kind == "silu":
        return x * _sigmoid(x)
    if kind == "gelu":
        return (0.5 * x * (1.0 + _erf(x / np.float32(math.sqrt(2.0))))).astype(np.float32)
    if kind == "gelu_tanh":
        c = np.float32(math.sqrt(2.0 / math.pi))
        return (0.5 * x * (1.0 + np.tanh(c * (x + np.float32(0.044715) * x**3)))).astype(np.float32)
    if kind == "relu":
        return np.maximum(x, np.float32(0.0))
    if kind == "relu2":  # squared ReLU (Nemotron-H, Primer)
        r = np.maximum(x, np.float32(0.0))
        return r * r
    if kind == "identity":
        return x
    raise ModelError(f"activation {kind!r} is not elementwise")


def quantize_activations(a: np.ndarray, block: int) -> np.ndarray:
    """``a`` [T, K] through symmetric int8 block quantization along K (blocks of ``block``; the
    last may be shorter): ``round(a / s) * s`` with ``s = max|a| / 127`` per block."""
    a = _f32(a)
    T, K = a.shape
    pad = (-K) % block
    b = np.pad(a, ((0, 0), (0, pad))).reshape(T, (K + pad) // block, block)
    scale = (np.abs(b).max(axis=-1, keepdims=True) / np.float32(127)).astype(np.float32)
    safe = np.where(scale > 0, scale, np.float32(1))
    inv = np.where(scale > 0, np.float32(1) / safe, np.float32(0)).astype(np.float32)
    q = np.clip(np.rint(b * inv), -127, 127) * scale
    return q.reshape(T, K + pad)[:, :K].astype(np.float32)


def _softcap(v: np.ndarray, cap: float | None) -> np.ndarray:
    return v if cap is None else np.float32(cap) * np.tanh(v / np.float32(cap))
