"""Compute costs: GEMMs on a die's systolic MAC arrays, element-wise work on its vector unit.

**GEMM** ``[M, K] x [K, N]`` on ``count`` arrays of ``R x C`` PEs (:class:`MacArray`), in
cycles, exactly SCALE-Sim v3's compute accounting (``scalesim/compute/systolic_compute_*.py``;
``moec validate compute`` checks it shape by shape):

- ``ws`` (weight-stationary): ``folds = ceil(K/R) x ceil(N/C)``, each ``2R + C + M - 2`` cycles
  (R cycles to load the weight tile, M input rows streamed through, ``R - 1`` + ``C - 1`` cycles of
  skew fill and drain);
- ``os`` (output-stationary): ``folds = ceil(M/R) x ceil(N/C)``, each ``K + R + C - 2``;
- ``is`` (input-stationary): ``folds = ceil(K/R) x ceil(M/C)``, each ``2R + C + N - 2``.

**Double buffering** (``weight_buffering = "double"``; presets: ``single``, SCALE-Sim's). A
weight-stationary PE with shadow registers (TPU v1 double-buffers its weights in the array,
Jouppi et al., ISCA 2017) shifts the next fold's weight tile in while the current fold's inputs
stream through it. Only the first tile load and the last fold's skew fill and drain are exposed;
each later fold advances when both its tile is loaded (R cycles) and the previous fold's M
input rows have entered the array (M cycles), and its skew overlaps its neighbours' like any
wavefront. Per array, with ``F = ceil(folds / count)``:
``ws``: ``2R + C + M - 2 + (F - 1) x max(R, M)`` (``single``: ``F x (2R + C + M - 2)``);
``is`` is the mirror (the stationary input tile, N weight columns streamed):
``2R + C + N - 2 + (F - 1) x max(R, N)``; ``os`` has no stationary operand to prefetch (its
partial sums drain as the next fold's operands enter, already counted by SCALE-Sim's
``K + R + C - 2``): unchanged. One fold is the same either way; the saving is
``(F - 1) x (R + C + min(R, M) - 2)`` cycles (ws), most at few tokens, where a fold is mostly
its tile load.

Partial tiles cost a whole fold (the PEs they leave idle are the waste). ``count`` arrays run
folds in parallel: ``ceil(folds / count)`` fold times. A precision packing ``m`` MACs per PE
(``ops_per_mac``: int8 2, int4 4) widens the columns to ``m x C``; fp32 (``ops_per_mac`` 0.5)
takes ``1 / 0.5`` passes. A GEMM of M tokens therefore costs about a weight-tile load per fold
when M is small: 1 token on a 32x64 array runs at ``1 / 126`` of peak, 256 tokens at 67%.

**Vector unit**: ``lanes`` elementary ops per cycle; an activation costs
:data:`ACTIVATION_OPS` ops per element of the slice's hidden columns, an ``accum`` scales its
outputs by the gate and adds them (2 ops per output element).

**Issue**: every compute instruction first spends ``issue_cycles``.

With ``target.ideal`` every function gives the first-wave model: ``flops / peak`` (gemm
``2 M K N``, act ``2 T w``, accum ``2 T w d``), no issue cost.
"""

from __future__ import annotations

import dataclasses
import functools
import math

from moec.ir.errors import TargetError
from moec.ir.hardware import MacArray
from moec.ir.target import PRECISION_BYTES, Target

#: Vector-unit ops per hidden element of a slice's activation: silu is a sigmoid (exp, add,
#: reciprocal) and a multiply, gelu (tanh form) about eight ops, relu one, squared relu two; a gated expert
#: multiplies by the up projection once more.
ACTIVATION_OPS: dict[str, int] = {
    "silu": 4, "swiglu": 4, "gelu": 8, "relu": 1, "relu2": 2, "identity": 0,
}  # fmt: skip
#: Vector ops per output element of an ``accum``: scale by the gate weight, add into the output.
ACCUM_VECTOR_OPS = 2


def bytes_per_element(precision: str) -> float:
    """Bytes of one element: fp32 4, fp16/bf16 2, int8 1, int4 0.5."""
    b = PRECISION_BYTES.get(precision)
    if b is None:
        raise TargetError(
            f"unknown precision {precision!r}, expected one of {', '.join(PRECISION_BYTES)}"
        )
    return b


def compute_time(target: Target, die: int, flops: float, precision: str = "fp16") -> float:
    """Seconds for ``flops`` on ``die``'s MAC arrays at peak throughput (no shape, no issue)."""
    return float(flops) / target.die(die).flops_per_s(precision)


def gemm_cycles(m: int, k: int, n: int, array: MacArray) -> int:
    """Cycles of an ``[m, k] x [k, n]`` GEMM on ``array`` (SCALE-Sim v3 accounting, module doc)."""
    if m <= 0 or k <= 0 or n <= 0:
        return 0
    r, c = array.rows, array.cols
    streamed = 0  # rows streamed past a stationary tile (ws: M, is: N; os: none)
    if array.dataflow == "ws":
        folds, per_fold, streamed = math.ceil(k / r) * math.ceil(n / c), 2 * r + c + m - 2, m
    elif array.dataflow == "os":
        folds, per_fold = math.ceil(m / r) * math.ceil(n / c), k + r + c - 2
    else:
        folds, per_fold, streamed = math.ceil(k / r) * math.ceil(m / c), 2 * r + c + n - 2, n
    per_array = math.ceil(folds / array.count)
    if array.weight_buffering == "double" and streamed:
        return per_fold + (per_array - 1) * max(r, streamed)
    return per_array * per_fold


@functools.lru_cache(maxsize=256)
def _packed(array: MacArray, ops_per_mac: float) -> tuple[MacArray, float]:
    """The array a precision sees, and the passes it needs: packing widens the columns."""
    if ops_per_mac >= 1:
        return dataclasses.replace(array, cols=int(array.cols * ops_per_mac)), 1.0
    return array, 1.0 / ops_per_mac


def issue_time(target: Target, die: int) -> float:
    """Seconds to issue one compute instruction on ``die`` (0 on an ideal target)."""
    if target.ideal:
        return 0.0
    d = target.die(die)
    return d.costs.issue_cycles / d.clock_hz


def gemm_time(target: Target, die: int, m: int, k: int, n: int, precision: str = "fp16") -> float:
    """Seconds for an ``[m, k] x [k, n]`` GEMM at ``precision`` on ``die``, issue included.

    Ideal: ``2 m k n / peak``.
    """
    if target.ideal:
        return compute_time(target, die, 2.0 * m * k * n, precision)
    d = target.die(die)
    mult = d.ops_per_mac.get(precision)
    if mult is None:
        d.flops_per_s(precision)  # raises the located error
        raise AssertionError("unreachable")
    array, passes = _packed(d.array, mult)
    return issue_time(target, die) + gemm_cycles(m, k, n, array) * passes / d.clock_hz


def vector_cycles(target: Target, die: int, elements: float, ops_per_element: int) -> int:
    """Cycles of ``elements x ops_per_element`` elementary ops on ``die``'s vector unit."""
    lanes = target.die(die).costs.vector_lanes
    return math.ceil(float(elements) * ops_per_element / lanes) if elements > 0 else 0


def act_time(
    target: Target,
    die: int,
    tokens: int,
    width: int,
    precision: str = "fp16",
    activation: str = "silu",
    gated: bool = True,
) -> float:
    """Seconds for an ``act`` over ``tokens`` x ``width`` hidden columns, issue included.

    Ideal: ``2 T w`` FLOPs at peak on the MAC arrays (the first-wave charge).
    """
    if target.ideal:
        return compute_time(target, die, 2.0 * tokens * width, precision)
    ops = ACTIVATION_OPS.get(activation)
    if ops is None:
        raise TargetError(
            f"no vector cost for activation {activation!r}, expected one of "
            f"{', '.join(ACTIVATION_OPS)}"
        )
    cycles = vector_cycles(target, die, tokens * width, ops + (1 if gated else 0))
    return issue_time(target, die) + cycles / target.die(die).clock_hz


def accum_time(
    target: Target, die: int, tokens: int, width: int, hidden: int, precision: str = "fp16"
) -> float:
    """Seconds for an ``accum``: the down projection ``[T, w] x [w, d]`` on the MAC arrays, then
    scaling by the gate and adding into the outputs on the vector unit, issue once.

    Ideal: ``2 T w d`` FLOPs at peak.
    """
    if target.ideal:
        return compute_time(target, die, 2.0 * tokens * width * hidden, precision)
    vec = vector_cycles(target, die, tokens * hidden, ACCUM_VECTOR_OPS)
    return gemm_time(target, die, tokens, width, hidden, precision) + vec / target.die(die).clock_hz


def dense_time(target: Target, die: int, flops: float, precision: str = "fp16") -> float:
    """Seconds for a ``dense`` island share: ``flops`` at peak plus issue.

    Not shape-aware (an island declares FLOPs, not GEMM shapes): this is the one compute cost
    that is not validated against SCALE-Sim.
    """
    return issue_time(target, die) + compute_time(target, die, flops, precision)


def slice_activation(gated: bool) -> str:
    """The activation charged for a micro-slice whose program does not name it: silu (SwiGLU)
    for gated experts, gelu otherwise (the two families of the shipped models)."""
    return "silu" if gated else "gelu"


def slice_compute_time(
    target: Target, die: int, tokens: int, hidden: int, width: int, gated: bool = True,
    precision: str = "fp16", activation: str | None = None,
) -> float:  # fmt: skip
    """Seconds of one micro-slice's whole compute for ``tokens``: its ``gemm`` (gate and up as
    one ``[T, d] x [d, w]`` GEMM, ``[d, 2w]`` when gated), ``act`` and ``accum``, as the
    interpreter charges them (all on the die's compute unit, one after the other).
    ``activation`` None: silu for gated experts, gelu otherwise (a program does not name it).

    Ideal: the three ops' FLOPs at peak in one sum, ``2 T d w (2 if gated) + 2 T w + 2 T w d``
    (the first-wave estimate of the FSE-DP scheduler, kept bit for bit)."""
    if target.ideal:
        n, d, w = tokens, hidden, width
        flops = 2.0 * n * d * w * (2 if gated else 1) + 2.0 * n * w + 2.0 * n * w * d
        return compute_time(target, die, flops, precision)
    act = activation or slice_activation(gated)
    return (
        gemm_time(target, die, tokens, hidden, width * (2 if gated else 1), precision)
        + act_time(target, die, tokens, width, precision, act, gated)
        + accum_time(target, die, tokens, width, hidden, precision)
    )
