"""TP's coarse chunked cuts (``moec/coarse_tp.py``): two slots, one chunk in flight, for each cut
of a multiple of the die count the largest chunk that fits, the cut with the lowest bound a
candidate of ``--strategy auto``."""

from __future__ import annotations

from pathlib import Path

import pytest
from numerics_check import check_strategy
from strategy_cases import moe_module

from moec.auto import explain, search
from moec.auto_bound import predicted_layers
from moec.coarse_tp import coarse_chunked_tp, coarse_cuts
from moec.compiler.lower import lower, parse_strategy
from moec.ir.errors import ScheduleError
from moec.ir.routing_synth import synth_zipf
from moec.ir.stream import TargetRef
from moec.ir.target import load_target

TINY = str(Path(__file__).resolve().parents[1] / "models" / "tiny_moe.onnx")
# one shape-only layer, 16 experts top-2, 512 tokens over fsedp-2x2's 4 dies, Zipf 1.0: the
# hottest expert takes 256 tokens
TRACE = synth_zipf(1, 16, 2, 512, 1.0, 0, 4, layer_names=["moe0"])
MODULE = moe_module(16, 2, 512, hidden=64, ffn=128)


def _at(sram: int) -> tuple[TargetRef, str | None]:
    ref = TargetRef("fsedp-2x2", (("sram_bytes_per_die", sram),))
    target = load_target("fsedp-2x2", {"sram_bytes_per_die": sram})
    return ref, coarse_chunked_tp(MODULE, ref, target, TRACE)


def _lowers(ref: TargetRef, opts: dict[str, str]) -> bool:
    try:
        lower(MODULE, ref, "tp", opts, TRACE)
    except ScheduleError:
        return False
    return True


@pytest.mark.parametrize("sram", [80_000, 120_000, 200_000])
def test_each_cut_takes_the_largest_chunk_that_fits(sram: int) -> None:
    ref, spec = _at(sram)
    target = load_target("fsedp-2x2", {"sram_bytes_per_die": sram})
    cuts = coarse_cuts(MODULE, ref, target, TRACE)
    assert spec is not None and spec in [c for c, _ in cuts]
    counts = []
    for i, (cut, _) in enumerate(cuts):
        name, opts = parse_strategy(cut)
        assert name == "tp" and opts["slots"] == "2" and opts["window"] == "1"
        counts.append(int(opts["slices"]))
        assert _lowers(ref, opts)
        if "chunk" in opts:
            assert not _lowers(ref, {**opts, "chunk": str(int(opts["chunk"]) + 1)})
        else:
            assert i == len(cuts) - 1  # the first cut with every expert whole ends the list
    assert counts == sorted(counts) and all(c % 4 == 0 for c in counts) and counts[0] == 4
    bounds = [sum(predicted_layers(p, target, TRACE)) for _, p in cuts]
    assert spec == cuts[bounds.index(min(bounds))][0]


def test_enough_sram_needs_no_chunk_and_too_little_gives_none() -> None:
    _, roomy = _at(1 << 20)
    assert roomy == "tp{slices=4,slots=2,window=1}"  # every expert's tokens fit whole
    _, none = _at(40_000)
    assert none is None  # not even one-token chunks fit beside two slots


def test_auto_tries_it_and_explain_names_it() -> None:
    ref, spec = _at(120_000)
    found = search(MODULE, ref, TRACE, specs=["tp"], variants=True, budget=4)
    (coarse,) = [t for t in found.trials if t.origin == "coarse"]
    assert coarse.strategy == spec
    assert coarse.predicted_s is not None and coarse.status != "not run"
    assert f"{spec}" in explain(found) and "[coarse chunked TP cut]" in explain(found)


def test_the_coarse_cut_matches_onnx_runtime(tmp_path: Path) -> None:
    # the shape of the candidate (one slice per die, two slots, chunks of two tokens)
    assert (
        check_strategy(TINY, "tp{chunk=2,slices=4,slots=2,window=1}", "fsedp-2x2", tmp_path) < 1e-4
    )


@pytest.mark.slow
def test_qwen3_2x2_1024_tokens_is_3_percent_faster_than_tp() -> None:
    """The issue's twelfth point: TP's 12 slices per expert pay 1.97 ms of partial sums."""
    from moec.bench import run_bench
    from moec.compiler.bench.spec import load_bench_model, truncate
    from moec.ir.routing_synth import parse_routing_spec

    bm = load_bench_model("qwen3-30b-a3b")
    spec = parse_routing_spec("synth:zipf=1,seed=0")
    trace = spec.make(bm.layer_shapes()[:1], 1024, 4, model=bm.name)  # type: ignore[union-attr]
    found = search(truncate(bm.module, 1), TargetRef("fsedp-2x2"), trace)
    tp = run_bench("qwen3-30b-a3b", "fsedp-2x2", [1024], ["tp"])[0]["latency_s"]
    assert found.winner.measured_s is not None
    assert found.winner.measured_s <= 0.97 * float(tp)
