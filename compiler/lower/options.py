"""The options every lowering strategy shares, and the error for a malformed or impossible one.

:class:`LoweringOptions` parses ``slots``, ``slices``, ``dtype`` and ``resident`` (see
:data:`COMMON_OPTIONS`); :func:`parse_int` is the integer-option parser strategies use for their own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from moec.ir.errors import ScheduleError
from moec.ir.target import PRECISION_BYTES


class StrategyError(ScheduleError):
    """An unknown strategy, or a strategy option that is malformed or impossible."""


#: Options every strategy accepts, with their meaning.
COMMON_OPTIONS: dict[str, str] = {
    "slots": "SRAM buffer slots per die (integer >= 1, default 4)",
    "slices": "micro-slices per expert: auto (EP, Hydra, EPLB, TP: the cost model's count, at "
    "least the fewest that fit a slot; FSE-DP: its own rule; compiled for a routing, the "
    "fastest measured count that fits), fit (the fewest that fit a slot) or an integer",
    "shared_slices": "micro-slices of the shared experts: an integer (default: EP, Hydra, EPLB, "
    "TP the cost model's count, at least the fewest that fit, also beside slices=N; slices=fit "
    "and FSE-DP the fewest that fit; online alternatives set it so their layouts agree)",
    "dtype": "weight precision: fp32, fp16, bf16, int8, int4 (default: the weights' own)",
    "resident": "fraction of each layer's experts in device memory, the others offloaded to the "
    "target's host tier (default 1: all resident; see compiler/lower/residency.py)",
}


@dataclass(frozen=True)
class LoweringOptions:
    """The options every strategy shares (see :data:`COMMON_OPTIONS`)."""

    slots: int = 4
    slices: int | None = None
    dtype: str | None = None
    resident: float | None = None
    #: ``slices=fit``: the fewest slices that fit a slot, no cost-model refinement
    fit_slices: bool = False
    #: ``shared_slices=N``: exactly N micro-slices of the shared experts
    shared_slices: int | None = None
    #: ``window=K`` (TP): chunked token dispatch, at most K chunks' tokens on a die at once
    window: int | None = None
    #: ``chunk=N`` (TP, with ``window``): at most N tokens per chunk (an expert with more is
    #: computed in several chunks, its slices streamed once per chunk)
    chunk: int | None = None

    @staticmethod
    def parse(opts: Mapping[str, str]) -> LoweringOptions:
        slots = parse_int(opts, "slots", 4, minimum=1)
        raw = opts.get("slices", "auto")
        fit = raw == "fit"
        slices = None if raw in ("auto", "fit") else parse_int(opts, "slices", 1, minimum=1)
        dtype = opts.get("dtype")
        if dtype is not None and dtype not in PRECISION_BYTES:
            raise StrategyError(
                f"option dtype: expected one of {', '.join(PRECISION_BYTES)}, found {dtype!r}",
                "--strategy",
            )
        resident = None
        if "resident" in opts:
            try:
                resident = float(opts["resident"])
            except ValueError:
                resident = -1.0
            if not 0.0 <= resident <= 1.0:
                raise StrategyError(
                    f"option resident: expected a fraction in [0, 1], found {opts['resident']!r}",
                    "--strategy",
                )
        shared = parse_int(opts, "shared_slices", 1, minimum=1) if "shared_slices" in opts else None
        window = parse_int(opts, "window", 1, minimum=1) if "window" in opts else None
        chunk = parse_int(opts, "chunk", 1, minimum=1) if "chunk" in opts else None
        if chunk is not None and window is None:
            raise StrategyError(
                f"option chunk={opts['chunk']}: needs window (chunked dispatch), e.g. "
                f"window=1,chunk={opts['chunk']}",
                "--strategy",
            )
        return LoweringOptions(slots, slices, dtype, resident, fit, shared, window, chunk)


def parse_int(opts: Mapping[str, str], key: str, default: int, *, minimum: int = 0) -> int:
    """Option ``key`` as an integer >= ``minimum`` (``default`` when absent)."""
    raw = opts.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise StrategyError(
            f"option {key}: expected an integer >= {minimum}, found {raw!r}", "--strategy"
        )
    return value
