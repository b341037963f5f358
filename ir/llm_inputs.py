"""The generation signature of decoder LLMs: inputs that must not be random.

A decoder exported for generation (ONNX Runtime GenAI's model builder, and exports in its style)
takes more than token ids: an ``attention_mask`` over past and new tokens (all ones: a random 0/1
mask is not a prefix of real tokens and attention kernels reject it), the past key/value cache
(``past_key_values.N.key`` of shape [batch, kv_heads, past_sequence_length, kv_cache_dim]) and,
in some, ``position_ids``. Drawing these like other inputs (:mod:`moec.ir.inputs`) gives shapes
and values ONNX Runtime refuses. :func:`llm_signature` says, for a model's inputs, which sizes and
values they take:

* ``genai_config.json`` next to the model (the builder writes it) names the mask input and gives
  ``kv_cache_dim`` (the decoder's ``head_size``) and the sliding window;
* the past length is the sliding window when there is one (sliding-window attention wants a
  past of at least the window), else :data:`DEFAULT_PAST`; ``past_sliding_length`` is the same;
* ``total_sequence_length`` is ``past_sequence_length + sequence_length`` unless given;
* with a past cache the batch is 1 (ONNX Runtime's GroupQueryAttention takes new tokens after
  a past only for one sequence);
* the mask is all ones; ``position_ids`` count from the past length;
* when ONNX Runtime refuses that step (onnxruntime-genai's fp16 builds reformat the attention
  mask for a prompt or for one new token, not for several after a past),
  :meth:`LLMSignature.other_steps` names the steps to try instead: a prompt (past 0), then one
  new token.

Without a config file, inputs named ``attention_mask``/``position_ids`` still get ones and
positions and the total length is still derived; ``kv_cache_dim`` must then come from ``--dims``
(ONNX Runtime's error for the default size names the head size it wants).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moec.ir.errors import ModelError

GENAI_CONFIG = "genai_config.json"
#: Past length when the model has no sliding window.
DEFAULT_PAST = 8
#: The symbolic dimensions of past key/value caches.
_PASTS = ("past_sequence_length", "past_sliding_length")

Dim = int | str | None


@dataclass(frozen=True)
class LLMSignature:
    """Default sizes of the symbolic dimensions (``dims``), the inputs that are all ones
    (``ones``) and the inputs that hold positions (``positions``)."""

    dims: dict[str, int] = field(default_factory=dict)
    ones: frozenset[str] = frozenset()
    positions: frozenset[str] = frozenset()

    def resolve(self, dims: Mapping[str, int], given: Mapping[str, int]) -> dict[str, int]:
        """``dims`` with ``total_sequence_length`` derived from the past and new lengths when the
        user did not give it (``given``)."""
        out = dict(dims)
        parts = ("past_sequence_length", "sequence_length")
        if "total_sequence_length" in out and "total_sequence_length" not in given:
            if all(p in out for p in parts):
                out["total_sequence_length"] = sum(out[p] for p in parts)
        return out

    def other_steps(
        self, dims: Mapping[str, int], given: Mapping[str, int]
    ) -> list[tuple[str, dict[str, int]]]:
        """Other generation steps to seed, in order, when ONNX Runtime refuses the default one
        (a past and several new tokens): a prompt (the past lengths 0), then one new token
        after the past. Sizes the user gave stay; each step comes with its description."""
        pasts = [p for p in _PASTS if p in dims and p not in given]
        out: list[tuple[str, dict[str, int]]] = []
        if any(dims[p] > 0 for p in pasts):
            prompt = {**dims, **dict.fromkeys(pasts, 0)}
            new = prompt.get("sequence_length", "the")
            out.append((f"a prompt (no past, {new} new tokens)", self.resolve(prompt, given)))
        seq = "sequence_length"
        if pasts and seq in dims and seq not in given and dims[seq] != 1:
            one = self.resolve({**dims, seq: 1}, given)
            out.append((f"one new token after a past of {dims[pasts[0]]}", one))
        return out

    def fixed_inputs(
        self, shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, np.dtype], past: int
    ) -> dict[str, np.ndarray]:
        """The arrays of the inputs this signature fixes, at the given concrete shapes."""
        out: dict[str, np.ndarray] = {}
        for name in sorted(self.ones & set(shapes)):
            out[name] = np.ones(shapes[name], dtype=dtypes[name])
        for name in sorted(self.positions & set(shapes)):
            shape = shapes[name]
            pos = np.arange(past, past + (shape[-1] if shape else 1), dtype=dtypes[name])
            out[name] = np.broadcast_to(pos, shape).copy()
        return out


def read_genai_config(model_path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The ``genai_config.json`` beside the model, or None when there is none (or no path)."""
    if model_path is None:
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), GENAI_CONFIG)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"cannot read the generation config: {err}", path) from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ModelError("generation config has no 'model' object", path)
    return config


def _decoder(config: Mapping[str, Any]) -> dict[str, Any]:
    dec = config["model"].get("decoder")
    return dec if isinstance(dec, dict) else {}


def llm_signature(
    model_path: str | os.PathLike[str] | None, inputs: Mapping[str, Sequence[Dim]]
) -> LLMSignature:
    """The generation signature of the model at ``model_path`` with graph ``inputs`` (name to
    shape); empty when the model takes none of those inputs."""
    config = read_genai_config(model_path)
    dec = _decoder(config) if config is not None else {}
    given = dec.get("inputs")
    names: dict[str, Any] = given if isinstance(given, dict) else {}
    mask = str(names.get("attention_mask", "attention_mask"))
    position = str(names.get("position_ids", "position_ids"))
    symbolic = {d for shape in inputs.values() for d in shape if isinstance(d, str)}
    dims: dict[str, int] = {}
    window = dec.get("sliding_window")
    win = window.get("window_size") if isinstance(window, dict) else None
    past = int(win) if isinstance(win, int) and win > 0 else DEFAULT_PAST
    if "past_sequence_length" in symbolic:
        dims["past_sequence_length"] = past
    if "past_sliding_length" in symbolic:
        dims["past_sliding_length"] = past
    if dims:
        # ORT's GroupQueryAttention takes a prompt after a past cache only for one sequence.
        dims.update({d: 1 for d in symbolic if "batch" in d.lower()})
    head = dec.get("head_size")
    if "kv_cache_dim" in symbolic and isinstance(head, int) and head > 0:
        dims["kv_cache_dim"] = head
    return LLMSignature(dims, frozenset({mask} & set(inputs)), frozenset({position} & set(inputs)))
