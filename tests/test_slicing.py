"""The whole-expert slice count's span estimate (``compiler/lower/slicing.py``): the array form
:func:`slice_spans` gives :func:`slice_span`'s floats, bit for bit, and the memoized count is
the count the reference loop picks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moec.compiler.lower import slicing
from moec.ir.target import load_target

CASES = [
    # target, overrides, hidden, ffn, gated, precision, experts, top-k, tokens, shared
    ("fsedp-2x2", {}, 2048, 1408, True, "fp16", 64, 6, 256, (256, 2816, 3 * 2048 * 2.0)),
    ("fsedp-4x4", {}, 2048, 768, True, "bf16", 128, 8, 1024, None),
    ("npu8-hbm", {}, 7168, 2048, True, "fp16", 256, 8, 1024, (1024, 2048, 3 * 7168 * 2.0)),
    ("fsedp-3x3", {"ideal": "true"}, 4096, 3200, True, "int8", 16, 2, 16, None),
    ("fsedp-2x2", {}, 2048, 4096, False, "int4", 32, 2, 64, None),
]


def _loads(experts: int, top_k: int, tokens: int, seed: int) -> list[int]:
    """Zipf-skewed routed tokens per expert, some experts idle (and one negative count, which
    the loop skips like an idle expert)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, experts + 1)
    ids = rng.choice(experts, size=tokens * top_k, p=p / p.sum())
    loads = np.bincount(ids, minlength=experts).tolist()
    loads[-1] = -1
    return loads


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]}-{c[5]}" for c in CASES])
def test_slice_spans_are_the_reference_loop_bit_for_bit(case: tuple) -> None:
    name, overrides, hidden, ffn, gated, precision, experts, top_k, tokens, shared = case
    target = load_target(name, overrides)
    col = (3 if gated else 2) * hidden * slicing_bytes(precision)
    for seed in range(3):
        loads = _loads(experts, top_k, tokens, seed)
        for sh in (None, shared):
            kw = dict(
                hidden=hidden, ffn=ffn, gated=gated, precision=precision, col_bytes=col,
                expert_tokens=loads, shared=sh,
            )  # fmt: skip
            counts = list(range(1, slicing.MAX_SLICES + 1))
            got = slicing.slice_spans(target, counts, **kw)
            want = [slicing.slice_span(target, c, **kw) for c in counts]
            assert [x.hex() for x in got] == [x.hex() for x in want]
            assert slicing.preferred_slices(target, **kw) == _reference_count(target, kw)


def slicing_bytes(precision: str) -> float:
    return {"fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}[precision]


def _reference_count(target, kw: dict) -> int:  # type: ignore[no-untyped-def]
    """preferred_slices written with the reference loop (the code before the array form)."""
    finest = max(1, min(slicing.MAX_SLICES, kw["ffn"] // target.die(0).array.cols))
    best, best_span = 1, math.inf
    for c in range(1, finest + 1):
        span = slicing.slice_span(target, c, **kw)
        if span < best_span * (1.0 - 1e-9):
            best, best_span = c, span
    return best


def test_idle_layer_and_the_memo_across_targets() -> None:
    """No routed token at all: every span is zero; an equal target shares the memo, another
    target does not."""
    a, b = load_target("fsedp-2x2", {}), load_target("fsedp-2x2", {})
    c = load_target("fsedp-2x2", {"ideal": "true"})
    kw = dict(
        hidden=2048, ffn=1408, gated=True, precision="fp16", col_bytes=12288.0,
        expert_tokens=[0] * 64, shared=None,
    )  # fmt: skip
    assert slicing.slice_spans(a, [1, 2], **kw) == [0.0, 0.0]
    assert slicing.preferred_slices(a, **kw) == slicing.preferred_slices(b, **kw) == 1
    assert slicing._memo(a) is slicing._memo(b) and slicing._memo(c) is not slicing._memo(a)
