"""``moec eval``: perplexity of a byte-level ONNX language model on a text, with ONNX Runtime.

    moec eval models/tiny_moe_lm.onnx --text models/tiny_moe_lm.heldout.txt
    moec eval model.onnx --text FILE --context 128 --stride 64 --max-bytes 20000 --json

Prints the model's perplexity over the text's bytes next to a unigram baseline (byte
frequencies of the training text, from the model's ``moec.unigram_counts`` metadata); see
:mod:`moec.backends.ort.perplexity` for the windows. ``--json`` prints
``{"perplexity", "unigram_perplexity", "tokens"}`` (plus bits per byte, context and stride).

With ``--program prog.msp`` (a program compiled from the same model, e.g. with cost-aware
passes), the logits come from the interpreter's numerics instead of ONNX Runtime, so a plan's
accuracy cost is a perplexity delta:

    moec compile models/tiny_moe_lm.onnx --dims batch=4 seq=128 --passes "caee-prune" -o lm.msp
    moec eval models/tiny_moe_lm.onnx --text models/tiny_moe_lm.heldout.txt --program lm.msp

The program was compiled for a fixed batch x sequence (its tokens per iteration); shorter batches
are padded with zero ids and the padded rows and positions are cut from the logits (a causal LM's
scored positions do not depend on them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from moec.backends.ort.perplexity import (
    LogitsFn,
    load_lm,
    ort_logits_fn,
    perplexity,
    unigram_perplexity,
    windows,
)
from moec.ir.errors import MoecError
from moec.progress import Progress

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
    p.add_argument(
        "--program",
        default=None,
        help="score with the interpreter running this stream program (compiled from MODEL)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def _program_logits_fn(path: str, model: str) -> tuple[LogitsFn, int, int]:
    """A logits function running the interpreter on ``path``; also its (batch, seq) shape."""
    from moec.check import interpret
    from moec.ir.stream import load_program

    program = load_program(path)
    if program.weights is None:
        raise MoecError(
            "the program has no weights companion (compiled from a shape-only model?)", path
        )
    if not program.layers:
        raise MoecError("the program has no MoE layer", path)
    tokens = program.layers[0].tokens
    seq = int(load_lm(model).max_context or DEFAULT_CONTEXT)
    if tokens % seq:
        raise MoecError(
            f"the program runs {tokens} tokens per iteration, not a multiple of the context {seq}; "
            f"compile it with --dims batch=B seq={seq}",
            path,
        )
    batch = tokens // seq

    def logits_fn(ids: np.ndarray) -> np.ndarray:
        b, n = ids.shape
        if b > batch or n > seq:
            raise MoecError(f"a window of {b}x{n} does not fit the program's {batch}x{seq}", path)
        pad = np.zeros((batch, seq), np.int64)
        pad[:b, :n] = ids
        outputs, _, _ = interpret(program, path, {"input_ids": pad})
        return next(iter(outputs.values()))[:b, :n]

    return logits_fn, batch, seq


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
    logits_fn, batch = ort_logits_fn(lm), args.batch
    if args.program:
        logits_fn, batch, seq = _program_logits_fn(args.program, args.model)
        if context > seq:
            raise MoecError(
                f"--context {context} exceeds the program's sequence of {seq}", args.program
            )
    with Progress("eval", len(windows(ids.size, context, stride)), unit="windows") as bar:
        engine = "interpreter" if args.program else "ONNX Runtime"

        def counted(window_ids: np.ndarray) -> np.ndarray:
            out = logits_fn(window_ids)
            bar.advance(int(window_ids.shape[0]), status=engine)
            return out

        score = perplexity(counted, ids, context, stride, batch=batch)
    base = unigram_perplexity(lm.unigram_counts, ids) if lm.unigram_counts is not None else None
    if args.json:
        out = {
            "perplexity": score.perplexity,
            "unigram_perplexity": base.perplexity if base else None,
            "tokens": score.tokens,
            "bits_per_byte": score.bits_per_byte,
            "context": context,
            "stride": stride,
            "engine": "interpreter" if args.program else "onnxruntime",
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
