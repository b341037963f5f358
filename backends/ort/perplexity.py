"""Perplexity of a byte-level language model over a text, and its unigram baseline.

The scorer is independent of who computes the logits: :func:`perplexity` takes a ``logits_fn``
mapping byte ids ``[batch, seq]`` (int64) to logits ``[batch, seq, 256]``, so ONNX Runtime
(:func:`ort_logits_fn`) and, later, the interpreter running a stream program score the same
windows the same way, and an approximation's accuracy cost is a perplexity delta.

Windows (``context`` bytes, ``stride`` <= ``context``): the window starting at byte ``b`` feeds
bytes ``b .. b+context-1`` and predicts bytes ``b+1 .. b+context``; each byte 1..N-1 of the text
is scored once, by the first window that predicts it. With ``stride == context`` (the default)
the windows do not overlap and a byte sees between 0 and ``context - 1`` bytes of context; a
smaller stride gives every byte after the first window at least ``context - stride`` bytes of
context, at ``context / stride`` times the cost. Byte 0 is never scored (nothing predicts it).

The unigram baseline scores the same bytes with fixed byte probabilities
``(count + 1) / (total + 256)`` from counts the model carries in its metadata
(``moec.unigram_counts``: byte frequencies of the training text, so the baseline is fair).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from moec.backends.ort.runtime import error_text, session_options
from moec.ir.errors import ModelError

VOCAB = 256
UNIGRAM_KEY = "moec.unigram_counts"
CONTEXT_KEY = "moec.context"

LogitsFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Window:
    """One model call: input bytes ``[start, start+length)``, scoring outputs ``[first, length)``."""

    start: int
    length: int
    first: int


@dataclass(frozen=True)
class Score:
    """Summed negative log-likelihood (nats) over ``tokens`` scored bytes."""

    nll: float
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / self.tokens / math.log(2)


def windows(n: int, context: int, stride: int | None = None) -> list[Window]:
    """The windows that score bytes 1..n-1 of an ``n``-byte text once each (see module doc)."""
    stride = context if stride is None else stride
    if context < 1 or not 1 <= stride <= context:
        raise ValueError(f"need 1 <= stride <= context, got stride={stride} context={context}")
    out: list[Window] = []
    scored = 0  # bytes 1..scored are done
    start = 0
    while scored < n - 1:
        length = min(context, n - 1 - start)
        # output i of this window predicts byte start+i+1
        first = scored - start
        out.append(Window(start, length, first))
        scored = start + length
        start += stride
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def perplexity(
    logits_fn: LogitsFn,
    byte_ids: np.ndarray,
    context: int,
    stride: int | None = None,
    batch: int = 16,
) -> Score:
    """Score ``byte_ids`` (1-D) with ``logits_fn`` over :func:`windows`; windows of equal length
    are batched together in text order."""
    ids = np.asarray(byte_ids, dtype=np.int64).reshape(-1)
    if ids.size < 2:
        raise ValueError("need at least 2 bytes to score")
    groups: dict[int, list[Window]] = {}
    for w in windows(ids.size, context, stride):
        groups.setdefault(w.length, []).append(w)
    nll = 0.0
    tokens = 0
    for length in sorted(groups, reverse=True):
        group = groups[length]
        for i in range(0, len(group), batch):
            chunk = group[i : i + batch]
            inputs = np.stack([ids[w.start : w.start + length] for w in chunk])
            targets = np.stack([ids[w.start + 1 : w.start + length + 1] for w in chunk])
            logits = np.asarray(logits_fn(inputs))
            if logits.shape != (len(chunk), length, VOCAB):
                raise ModelError(
                    f"logits have shape {list(logits.shape)}, expected {[len(chunk), length, VOCAB]}"
                )
            logp = np.take_along_axis(log_softmax(logits), targets[..., None], axis=-1)[..., 0]
            for row, w in enumerate(chunk):
                nll -= float(logp[row, w.first :].sum())
                tokens += length - w.first
    return Score(nll, tokens)


def unigram_perplexity(counts: list[int] | np.ndarray, byte_ids: np.ndarray) -> Score:
    """Add-one smoothed unigram score of bytes 1..N-1 (the bytes :func:`perplexity` scores)."""
    c = np.asarray(counts, dtype=np.float64)
    logp = np.log((c + 1.0) / (c.sum() + VOCAB))
    targets = np.asarray(byte_ids, dtype=np.int64).reshape(-1)[1:]
    return Score(-float(logp[targets].sum()), int(targets.size))


# --- ONNX Runtime -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LanguageModel:
    """An ONNX byte-level LM: its session and the metadata moec reads from it."""

    path: str
    session: ort.InferenceSession
    input_name: str
    max_context: int | None
    unigram_counts: list[int] | None

    def logits(self, ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: ids.astype(np.int64)})[0])


def load_lm(path: str | Path, threads: int = 1) -> LanguageModel:
    """Load an ONNX byte-level LM (one int64 input [batch, seq], first output the logits)."""
    where = str(path)
    try:
        model = onnx.load(where, load_external_data=False)
    except FileNotFoundError:
        raise ModelError("model file not found", where) from None
    except Exception as err:
        raise ModelError(f"cannot read ONNX model: {str(err).splitlines()[0]}", where) from None
    meta = {p.key: p.value for p in model.metadata_props}
    counts = _unigram_counts(meta, where)
    max_context = None
    if CONTEXT_KEY in meta:
        try:
            max_context = int(meta[CONTEXT_KEY])
        except ValueError:
            raise ModelError(
                f"metadata {CONTEXT_KEY} is {meta[CONTEXT_KEY]!r}, expected an int", where
            ) from None
    try:
        session = ort.InferenceSession(
            where, session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as err:  # noqa: BLE001 - ORT raises its own unrelated types
        raise ModelError(f"ONNX Runtime cannot load the model: {error_text(err)}", where) from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(int64)" or len(inputs[0].shape) != 2:
        found = ", ".join(f"{i.name}: {i.type}{i.shape}" for i in inputs)
        raise ModelError(f"expected one int64 input [batch, seq] of byte ids, found {found}", where)
    return LanguageModel(where, session, inputs[0].name, max_context, counts)


def _unigram_counts(meta: dict[str, str], where: str) -> list[int] | None:
    if UNIGRAM_KEY not in meta:
        return None
    try:
        counts = json.loads(meta[UNIGRAM_KEY])
    except json.JSONDecodeError:
        counts = None
    if not (
        isinstance(counts, list)
        and len(counts) == VOCAB
        and all(isinstance(c, int) and c >= 0 for c in counts)
    ):
        raise ModelError(f"metadata {UNIGRAM_KEY} must be a JSON list of {VOCAB} counts", where)
    return counts


def ort_logits_fn(lm: LanguageModel) -> LogitsFn:
    """The logits function of :func:`perplexity` backed by ONNX Runtime."""
    return lm.logits
