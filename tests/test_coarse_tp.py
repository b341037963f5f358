"""TP's coarsest chunked cut (``moec/coarse_tp.py``): one slice per die, two slots, one chunk in
flight and the largest chunk that fits, a candidate of ``--strategy auto``."""

from __future__ import annotations

from pathlib import Path

import pytest
from numerics_check import check_strategy
from strategy_cases import moe_module

from moec.auto import explain, search
from moec.coarse_tp import coarsest_chunked_tp
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
    return ref, coarsest_chunked_tp(MODULE, ref, target, TRACE)


def _lowers(ref: TargetRef, opts: dict[str, str]) -> bool:
    try:
        lower(MODULE, ref, "tp", opts, TRACE)
    except ScheduleError:
        return False
    return True


@pytest.mark.parametrize("sram", [80_000, 120_000, 200_000])
def test_the_chunk_is_the_largest_that_fits(sram: int) -> None:
    ref, spec = _at(sram)
    assert spec is not None
    name, opts = parse_strategy(spec)
    assert name == "tp" and opts["slices"] == "4" and opts["slots"] == "2"
    assert opts["window"] == "1"
    assert _lowers(ref, opts)
    chunk = int(opts["chunk"])
    assert not _lowers(ref, {**opts, "chunk": str(chunk + 1)})


def test_more_sram_never_gives_a_smaller_chunk_and_enough_needs_none() -> None:
    chunks = [int(parse_strategy(s)[1]["chunk"]) for s in (_at(b)[1] for b in (80_000, 120_000))
              if s is not None]  # fmt: skip
    assert len(chunks) == 2 and chunks[0] < chunks[1]
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
    assert f"{spec}" in explain(found) and "[coarsest chunked TP cut]" in explain(found)


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
