"""``moec eval``: perplexity of a byte-level ONNX language model on a text, with ONNX Runtime.

    moec eval models/tiny_moe_lm.onnx --text models/tiny_moe_lm.heldout.txt
    moec eval model.onnx --text FILE --context 128 --stride 64 --max-bytes 20000 --json

Prints the model's perplexity over the text's bytes next to a unigram baseline (byte
frequencies of the training text, from the model's ``moec.unigram_counts`` metadata); see
:mod:`moec.backends.ort.perplexity` for the windows. ``--json`` prints
``{"perplexity", "unigram_perplexity", "tokens"}`` (plus bits per byte, context and stride).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from moec.backends.ort.perplexity import (
    load_lm,
    ort_logits_fn,
    perplexity,
    unigram_perplexity,
)
from moec.ir.errors import MoecError

DEFAULT_CONTEXT = 128


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="perplexity of a byte-level ONNX language model on a text (ONNX Runtime)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "model", help="ONNX model: int64 byte ids [batch, seq] -> logits [batch, seq, 256]"
    )
    p.add_argument("--text", required=True, help="text file to score (its raw bytes)")
    p.add_argument(
        "--context",
        type=int,
        default=None,
        help="window length in bytes (default: the model's own)",
    )
    p.add_argument("--stride", type=int, default=None, help="window step (default: the context)")
    p.add_argument("--max-bytes", type=int, default=None, help="score only the first N bytes")
    p.add_argument("--batch", type=int, default=16, help="windows per ONNX Runtime call")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _read_text(path: str, max_bytes: int | None) -> np.ndarray:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise MoecError("text file not found", path) from None
    except IsADirectoryError:
        raise MoecError("text path is a directory, expected a file", path) from None
    except OSError as err:
        raise MoecError(f"cannot read text file: {err.strerror}", path) from None
    if max_bytes is not None:
        data = data[:max_bytes]
    if len(data) < 2:
        raise MoecError(f"text has {len(data)} bytes, need at least 2 to score", path)
    return np.frombuffer(data, dtype=np.uint8).astype(np.int64)


def run(args: argparse.Namespace) -> int:
    for flag in ("context", "stride", "max_bytes", "batch"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise MoecError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    ids = _read_text(args.text, args.max_bytes)
    lm = load_lm(args.model)
    context = args.context or lm.max_context or DEFAULT_CONTEXT
    if lm.max_context is not None and context > lm.max_context:
        raise MoecError(
            f"--context {context} exceeds the model's context of {lm.max_context}", args.model
        )
    stride = args.stride or context
    if stride > context:
        raise MoecError(f"--stride {stride} exceeds --context {context}")
    score = perplexity(ort_logits_fn(lm), ids, context, stride, batch=args.batch)
    base = unigram_perplexity(lm.unigram_counts, ids) if lm.unigram_counts is not None else None
    if args.json:
        out = {
            "perplexity": score.perplexity,
            "unigram_perplexity": base.perplexity if base else None,
            "tokens": score.tokens,
            "bits_per_byte": score.bits_per_byte,
            "context": context,
            "stride": stride,
        }
        print(json.dumps(out, sort_keys=True))
        return 0
    print(f"model      {args.model}")
    print(
        f"text       {args.text} ({score.tokens} bytes scored, context {context}, stride {stride})"
    )
    print(f"perplexity {score.perplexity:.4f} ({score.bits_per_byte:.4f} bits/byte)")
    if base is None:
        print("unigram    n/a (the model has no moec.unigram_counts metadata)")
    else:
        print(f"unigram    {base.perplexity:.4f} ({base.bits_per_byte:.4f} bits/byte)")
    return 0
