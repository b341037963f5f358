"""Phi-3.5-MoE's sparsemixer routing at inference: the numpy reference of the canonical op's
``scoring="sparsemixer"`` (used by :func:`moec.ir.moe.route`)."""

from __future__ import annotations

import numpy as np


def _f32(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


def _masked_softmax_pick(
    logits: np.ndarray, candidates: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """One sparsemixer step: the best of ``candidates`` (logits with earlier picks at -inf) and
    its gate, the softmax over the experts within the jitter band of it."""
    best = candidates.max(axis=-1, keepdims=True)
    pick = np.argmax(candidates, axis=-1)[:, None]  # first index among equals, as torch.max
    factor = np.maximum(np.abs(logits), best)
    with np.errstate(invalid="ignore", divide="ignore"):
        far = (best - logits) / factor > np.float32(2 * eps)
    masked = np.where(far, np.float32(-np.inf), candidates)
    z = np.exp(masked - best)
    gate = np.take_along_axis(z, pick, axis=1) / z.sum(axis=-1, keepdims=True)
    return pick, gate.astype(np.float32)


def sparsemixer(logits: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Phi-3.5-MoE's sparsemixer at inference (transformers ``sparsemixer(training=False)``):
    expert ids [T, 2] and gates [T, 2] from router ``logits`` [T, E].

    First pick: the arg-max expert; its gate is the softmax over the experts whose logit is
    within ``2 * eps`` (relative to ``max(|logit|, max)``) of the max. Second pick: the same
    with the first expert removed (its logit -inf). No renormalization of the two gates.
    """
    logits = _f32(logits)
    first, g1 = _masked_softmax_pick(logits, logits, eps)
    rest = logits.copy()
    np.put_along_axis(rest, first, np.float32(-np.inf), axis=1)
    second, g2 = _masked_softmax_pick(logits, rest, eps)
    ids = np.concatenate([first, second], axis=1).astype(np.int64)
    return ids, np.concatenate([g1, g2], axis=1)
