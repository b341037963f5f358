"""The activation model of on-chip memory: which activation buffers a die holds in SRAM.

A die's SRAM holds its weight slots (``slots die D count C bytes B``) *and* the activations of
the MoE layer it runs. The compiler sizes slots from what is left after the most activations a
run of the program can hold (:func:`predicted_activation_bytes`); the interpreter charges the
activations a run really holds (``backends/interp/timing.py``). Both read the sizes below.

Precisions:

* **activations** (a layer's inputs ``x``, received ``x`` blocks): the layer's precision when it
  is a floating-point one (fp32, fp16, bf16), else fp16 (quantized weights do not quantize the
  tokens). Shape-only presets are fp16, models with weights their own dtype;
* **accumulators** (a layer's outputs ``y``, partial sums of other dies' tokens, the gate/up
  outputs ``h`` of a slice): :data:`ACCUM_PRECISION`, fp32, as MAC arrays accumulate and as a
  token's output sums up to ``top_k`` experts (and, under TP, partial sums over the dies).

Buffers, per die and MoE layer (``d`` hidden, ``w`` a slice's FFN columns):

* **home** ``x`` and ``y`` of the die's own tokens, ``d x (act + acc)`` bytes per token, for the
  die's span of the layer (its first to its last instruction of the layer);
* **received** ``x`` of another die's token, ``d x act`` bytes, from the first ``recv x`` that
  brings it to the die's last ``gemm`` or ``send x`` of it;
* **partial** ``y`` of another die's token, ``d x acc`` bytes, from the first ``accum`` into it
  (or the end of the first ``recv y`` of it) to the end of the die's last ``send y`` of it;
* a ``recv y`` block lands in a buffer of its bytes while it crosses the link (then it is added);
* ``h`` of a slice in flight: ``tokens x w x (2 if gated else 1) x acc`` bytes from its ``gemm``'s
  start to its ``accum``'s end (the compute unit runs in order: one slice in flight per die).
"""

from __future__ import annotations

import math

from moec.ir.target import PRECISION_BYTES

#: Precision of output accumulators, partial sums and a slice's gate/up outputs.
ACCUM_PRECISION = "fp32"
_FLOAT = ("fp32", "fp16", "bf16")


def activation_precision(dtype: str) -> str:
    """Precision of a layer's token activations: its dtype if floating point, else fp16."""
    return dtype if dtype in _FLOAT else "fp16"


def x_row_bytes(hidden: int, dtype: str) -> int:
    """Bytes of one token's input row."""
    return int(math.ceil(hidden * PRECISION_BYTES[activation_precision(dtype)]))


def y_row_bytes(hidden: int) -> int:
    """Bytes of one token's output accumulator row."""
    return int(hidden * PRECISION_BYTES[ACCUM_PRECISION])


def home_bytes(tokens: int, hidden: int, dtype: str) -> int:
    """Bytes of ``tokens`` home tokens' ``x`` and ``y``."""
    return tokens * (x_row_bytes(hidden, dtype) + y_row_bytes(hidden))


def h_bytes(tokens: int, width: int, gated: bool) -> int:
    """Bytes of a slice's gate/up outputs for ``tokens`` tokens and ``width`` FFN columns."""
    return int(tokens * width * (2 if gated else 1) * PRECISION_BYTES[ACCUM_PRECISION])


def predicted_activation_bytes(
    *, home: int, remote: float, hidden: int, dtype: str, landing: int = 0
) -> int:  # fmt: skip
    """What the compiler reserves for a die besides slots and ``h``: ``home`` tokens' ``x`` and
    ``y``, ``remote`` other dies' tokens (for strategies that move tokens) with their ``x`` and
    partial ``y``, and ``landing`` ``recv y`` blocks of one token row each (at most the rows of
    the layer's ``y`` blocks that can cross into the die at once)."""
    return (
        home_bytes(home, hidden, dtype)
        + int(math.ceil(remote * (x_row_bytes(hidden, dtype) + y_row_bytes(hidden))))
        + landing * x_row_bytes(hidden, dtype)
    )
