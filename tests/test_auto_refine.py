"""``--strategy auto``'s refinement (:mod:`moec.auto_refine`) and its floor explanation."""

from __future__ import annotations

from functools import cache

from moec.auto import AutoResult, Trial, default_routing, explain, search
from moec.auto_refine import neighbours
from moec.compiler.bench.spec import load_bench_model, truncate
from moec.compiler.lower import lower
from moec.ir.graph import Module
from moec.ir.stream import TargetRef
from moec.ir.target import load_target
from moec.slice_variants import cheapest_counts


@cache
def _yuan() -> Module:
    return truncate(load_bench_model("yuan2-m32").module, 1)


@cache
def _yuan_search() -> AutoResult:
    """Yuan2.0-M32, 256 tokens on fsedp-2x2 (the bench's Zipf 1.0 batch), from TP at 32 slices
    of 128 columns (every MAC-array fold full) alone: eight slots stall its channels less on
    hot experts, and the balanced slice order less still. (Since session 9's activation
    reserve TP's own measured cut is 16 slices, which leaves no room for more slots.)"""
    ref = TargetRef("fsedp-2x2", ())
    routing = default_routing(_yuan(), ref, tokens=256)
    return search(_yuan(), ref, routing, specs=["tp{slices=32}"], variants=True, tokens=256)


def test_neighbours_change_one_option_and_pin_the_cut() -> None:
    ref = TargetRef("fsedp-2x2", ())
    routing = default_routing(_yuan(), ref, tokens=256)
    target = load_target("fsedp-2x2", {})
    tp = Trial("tp", program=lower(_yuan(), ref, "tp", {}, routing, tokens=256))
    assert tp.program is not None
    count = tp.program.layouts[0].count
    specs = [s for s, _ in neighbours(tp, target, routing)]
    # slot changes keep the lowered cut; a slot count back to the default drops the option
    assert specs[:3] == [f"tp{{slices={count},slots={s}}}" for s in (5, 6, 8)]
    # slice changes keep the other options, and TP's counts are multiples of the die count
    rest = [s for s in specs[3:-1]]
    assert rest and all(s.startswith("tp{slices=") for s in rest)
    assert all(int(s.split("=")[1].rstrip("}")) % target.num_dies == 0 for s in rest)
    # and TP's balanced slice order (moec/backends/interp/expand/tp_order.py), the cut pinned
    assert specs[-1] == f"tp{{order=balanced,slices={count}}}"
    hydra = Trial("hydra{slices=32,slots=6}", program=tp.program)
    changes = [c for _, c in neighbours(hydra, target, routing)]
    assert changes[:3] == ["slots=4", "slots=5", "slots=8"] and changes[-1] == "cap=none"
    assert neighbours(Trial("tp"), target, routing) == []  # not lowered


def test_cheapest_counts_fill_the_folds_and_respect_the_multiple() -> None:
    ref = TargetRef("fsedp-2x2", ())
    routing = default_routing(_yuan(), ref, tokens=256)
    target = load_target("fsedp-2x2", {})
    layer = lower(_yuan(), ref, "tp", {}, routing, tokens=256).layers[0]
    # 4096 columns: 32 slices of 128 fill every fold of the 32x64 array, 28 or 36 do not
    assert 32 in cheapest_counts(target, layer, routing, 28)
    assert all(k % 3 == 0 for k in cheapest_counts(target, layer, routing, 30, multiple=3))


def test_refined_winner_is_never_slower_than_what_it_contains_and_is_named() -> None:
    found = _yuan_search()
    measured = [t for t in found.trials if t.status == "measured"]
    assert found.winner.measured_s == min(t.measured_s for t in measured if t.measured_s)
    by = {t.strategy: t for t in found.trials}
    tp = by["tp{slices=32}"]
    assert tp.measured_s is not None
    # eight slots stall its channels less on hot experts' compute, and the balanced slice order
    # (hot slices spread among cold ones) less still
    eight = by["tp{slices=32,slots=8}"]
    assert eight.origin == "slots=8 on tp{slices=32}"
    assert eight.measured_s is not None and eight.measured_s < tp.measured_s
    assert found.winner.strategy == "tp{order=balanced,slices=32}"
    assert found.winner.origin == "order=balanced on tp{slices=32}"
    assert found.winner.measured_s is not None and found.winner.measured_s < eight.measured_s
    text = explain(found)
    row = next(ln for ln in text.splitlines() if ln.startswith("* "))
    assert row.endswith("measured [refined: order=balanced on tp{slices=32}]")
    assert "found by refining (order=balanced on tp{slices=32})" in text
    assert sum(t.status == "measured" for t in found.trials) <= found.budget


def test_explain_says_why_the_winner_is_above_the_floor() -> None:
    found = _yuan_search()
    text = explain(found).splitlines()
    at = next(i for i, ln in enumerate(text) if ln.startswith("above the any-schedule floor"))
    assert [ln.split(":")[0].strip() for ln in text[at + 1 :]] == ["compute", "DRAM", "overlap"]
    assert "partial sums on the busiest die's vector unit" in text[at + 1]
    assert found.winner.measured_s is not None
    assert f"(measured {found.winner.measured_s * 1e3:.3f} ms" in text[at]


def test_fsedp_order_neighbours_are_spelled_as_the_named_strategy() -> None:
    """``fsedp-paired`` with the natural order is ``fsedp`` (one schedule, one name)."""
    from moec.auto_refine import _fsedp

    pinned = {"slices": "22", "slots": "8"}
    assert _fsedp("fsedp-paired", pinned, "order", "natural") == "fsedp{slices=22,slots=8}"
    assert _fsedp("fsedp", pinned, "order", "paired") == "fsedp-paired{slices=22,slots=8}"
    assert (
        _fsedp("fsedp-paired", pinned, "order", "balanced")
        == "fsedp-paired{order=balanced,slices=22,slots=8}"
    )
    assert (
        _fsedp("fsedp-r5", pinned, "order", "natural")
        == "fsedp-r5{order=natural,slices=22,slots=8}"
    )


def test_a_chunked_winner_gets_the_neighbouring_token_chunks_unpinned() -> None:
    """The listed ``chunk=256`` was found on one batch; on another draw of the same distribution
    the finer chunk can win by a third (Phi-3.5-MoE, 1024 tokens, Zipf 1.0 seed 1, fsedp-2x2), so
    a chunked winner's neighbours include the chunks next to its own, with the cut re-chosen."""
    from moec.auto_refine import chunk_neighbours

    ref = TargetRef("fsedp-2x2", ())
    routing = default_routing(_yuan(), ref, tokens=256)
    target = load_target("fsedp-2x2", {})
    most = int(routing.layers[0].expert_load().max())
    assert 64 < most < 256  # the hottest of Yuan2.0-M32's 32 experts at 256 tokens, top-2
    program = lower(_yuan(), ref, "tp", {"window": "1", "chunk": "256"}, routing, tokens=256)
    found = dict(neighbours(Trial("tp{chunk=256,window=1}", program=program), target, routing))
    assert found["tp{chunk=128,window=1}"] == "chunk=128"  # no slices=: the cut is chosen again
    assert not any("chunk=512" in s or "chunk=64" in s for s in found)
    # without a chunk, one chunk is the hottest expert's tokens: the next finer chunk is below it
    finer = max(c for c in (64, 128) if c < most)
    assert chunk_neighbours("tp", {"window": "2"}, routing) == [
        (f"tp{{chunk={finer},window=2}}", f"chunk={finer}")
    ]
    # with shared experts a chunk of every token is cut too: 256 tokens allow no coarser chunk
    assert [c for _, c in chunk_neighbours("tp", {"window": "1"}, routing, shared=True)] == [
        "chunk=128"
    ]
    # without chunked dispatch (no window) there is no chunk to change
    plain = neighbours(Trial("tp", program=program), target, routing)
    assert not any(c.startswith("chunk=") for _, c in plain)
