"""``moec compile --strategy auto --explain``: candidates, predictions, measurements, the winner."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from moec.auto import candidates, explain
from moec.compiler.lower.options import StrategyError
from moec.ir.errors import ScheduleError


def _compile(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "moec", "compile", "tiny_deepseek", "-o", str(tmp_path / "p.msp"),
           "--tokens", "16", "--strategy", "auto", *extra]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def test_auto_explain_lists_candidates_and_the_measured_winner(tmp_path: Path) -> None:
    r = _compile(tmp_path, "--explain", "--search-budget", "4")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    head = re.match(r"strategy auto: (\d+) candidates on routing synth:zipf=1.0,seed=0", lines[0])
    assert head is not None and int(head.group(1)) >= len(candidates())  # + slice variants
    rows = [ln for ln in lines if ln[:1] in " *" and ("measured" in ln or "pruned" in ln)]
    assert sum(ln.startswith("*") for ln in rows) == 1
    winner = next(ln for ln in rows if ln.startswith("*")).split()[1]
    measured = [ln for ln in rows if re.search(r"  measured( \[[^]]*\])?$", ln.rstrip())]
    assert 1 <= len(measured) <= 4  # the budget
    col = lambda ln: float(ln.lstrip("* ").split()[2])  # noqa: E731 - the measured ms
    best = min(col(ln) for ln in measured)
    assert col(next(ln for ln in rows if ln.startswith("*"))) == best
    assert any(ln.startswith(f"winner {winner}: ") for ln in lines)
    written = (tmp_path / "p.msp").read_text()
    assert f"strategy {winner.split('{')[0]}" in written
    again = _compile(tmp_path, "--explain", "--search-budget", "4")
    assert again.stdout == r.stdout  # deterministic


def test_auto_rejects_options(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "moec", "compile", "qwen3-30b-a3b", "-o", str(tmp_path / "p.msp"),
         "--tokens", "16", "--strategy", "auto{slots=2}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert "strategy auto takes no options" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "p.msp").exists()


def _one_layer_search(**kw):  # type: ignore[no-untyped-def]
    from moec.auto import default_routing, search
    from moec.compiler.bench.spec import load_bench_model, truncate
    from moec.ir.stream import TargetRef

    module = truncate(load_bench_model("qwen3-30b-a3b").module, 1)
    ref = TargetRef("fsedp-2x2", ())
    routing = default_routing(module, ref, tokens=64)
    specs = ["tp", "fsedp-paired", "tp{slices=fit}", "ep{slots=8}"]
    return search(module, ref, routing, specs=specs, tokens=64, budget=4, **kw)


def test_objective_chooses_what_it_minimizes() -> None:
    by = {o: _one_layer_search(objective=o) for o in ("latency", "energy", "edp", "sram")}
    # only latency prunes on its DRAM bound: the other objectives measure every candidate
    assert all(t.status == "measured" for t in by["energy"].trials)
    for objective, result in by.items():
        scores = [t.score(objective) for t in result.trials if t.status == "measured"]
        assert result.winner.score(objective) == min(scores)
    # here TP is fastest, while TP cut into the fewest slices that fit spends less energy
    # (fewer per-slice fixed costs) for more SRAM: the objective changes the winner
    assert by["latency"].winner.strategy == "tp"
    assert by["energy"].winner.strategy == "tp{slices=fit}"
    assert by["sram"].winner.peak_sram_bytes < by["energy"].winner.peak_sram_bytes  # type: ignore[operator]
    text = explain(by["energy"])
    assert "objective energy" in text.splitlines()[0]
    assert any(ln.startswith("winner tp{slices=fit}: energy ") for ln in text.splitlines())


def test_max_sram_mib_is_never_exceeded_by_the_winner() -> None:
    free = _one_layer_search()
    peaks = sorted({t.peak_sram_bytes for t in free.trials if t.peak_sram_bytes is not None})
    limit = (peaks[0] + peaks[1]) / 2 / (1 << 20)  # only the smallest-SRAM candidates fit
    bound = _one_layer_search(max_sram_mib=limit)
    assert bound.winner.peak_sram_bytes == peaks[0]
    over = [t for t in bound.trials if "over --max-sram-mib" in t.status]
    assert over and all(t.peak_sram_bytes > limit * (1 << 20) for t in over)  # type: ignore[operator]
    assert "at most" in explain(bound).splitlines()[0]
    with pytest.raises(ScheduleError, match="within --max-sram-mib"):
        _one_layer_search(max_sram_mib=peaks[0] / 2 / (1 << 20))
    with pytest.raises(StrategyError, match="--objective: expected one of"):
        _one_layer_search(objective="area")


def test_objective_needs_auto(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "moec", "compile", "tiny_moe", "-o", str(tmp_path / "p.msp"),
         "--strategy", "ep", "--max-sram-mib", "4"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert r.returncode == 2 and "need --strategy auto" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "p.msp").exists()


def test_resample_keeps_the_batch_shape_and_is_seeded() -> None:
    from moec.auto import resample
    from moec.ir.routing_synth import synth_zipf

    trace = synth_zipf(2, 64, 4, 16, num_dies=4, model="m", seed=3)
    a, b, c = resample(trace, 1), resample(trace, 1), resample(trace, 2)
    for lr, la, lc in zip(trace.layers, a.layers, c.layers, strict=True):
        assert la.ids.shape == lr.ids.shape and (la.home_die == lr.home_die).all()
        assert not (la.ids == lc.ids).all()  # another draw
        # every resampled token's routing is one of the batch's, gates with it
        rows = set(zip(map(tuple, lr.ids.tolist()), map(tuple, lr.gates.tolist()), strict=True))
        drawn = zip(map(tuple, la.ids.tolist()), map(tuple, la.gates.tolist()), strict=True)
        assert all(row in rows for row in drawn)
    assert all((x.ids == y.ids).all() for x, y in zip(a.layers, b.layers, strict=True))


def test_resamples_score_each_candidate_by_its_worst_draw() -> None:
    alone = _one_layer_search(objective="energy")  # energy: every candidate is measured
    robust = _one_layer_search(objective="energy", resamples=2)
    for t, r in zip(alone.trials, robust.trials, strict=True):
        assert r.measured_s is not None and t.measured_s is not None
        assert r.measured_s >= t.measured_s  # the batch itself is one of the draws
    assert "worst of the batch and 2 resamples" in explain(robust).splitlines()[0]
    with pytest.raises(StrategyError, match="--search-resamples"):
        _one_layer_search(resamples=-1)


def test_prediction_bounds_the_measurement_and_counts_compute(tmp_path: Path) -> None:
    from strategy_cases import hand_target, moe_module, routing

    from moec.auto import predicted_latency, search
    from moec.ir.stream import TargetRef
    from moec.ir.target import load_target

    path = Path(hand_target(tmp_path))  # 1 MAC per die: the layer is compute-bound
    path.write_text(path.read_text().replace("macs = 500", "macs = 1"))
    trace = routing([[2], [2], [0], [2], [1], [2], [3], [2]], [0, 0, 0, 0, 1, 1, 1, 1], 4)
    module = moe_module(experts=4, top_k=1, tokens=8)
    found = search(module, TargetRef(str(path)), trace, specs=["ep", "tp"], objective="energy")
    target = load_target(str(path), {})
    for t in found.trials:
        assert t.predicted_s is not None and t.measured_s is not None
        assert t.predicted_s <= t.measured_s * (1 + 1e-9)
    # EP: expert 2's five tokens on one die, 600 ns per token of compute, beyond any channel
    ep = next(t for t in found.trials if t.strategy == "ep")
    assert ep.predicted_s is not None and ep.predicted_s >= 5 * 600e-9
    assert found.winner.program is not None
    assert predicted_latency(found.winner.program, target, trace) == found.winner.predicted_s


def test_slice_variants_offer_counts_that_fill_the_mac_array() -> None:
    """Phi-3.5-MoE, 256 tokens on fsedp-2x2: TP cut into 80 slices of 80 columns (what SRAM
    forced until session 9's activation reserve; gate/up 160 columns in 3 folds of 64, down 80
    rows in 3 folds of 32); 100 slices of 64 columns fill every fold, and so do 40 of 160."""
    from moec.auto import Trial, default_routing, slice_variants
    from moec.compiler.bench.spec import load_bench_model, truncate
    from moec.compiler.lower import lower
    from moec.ir.stream import TargetRef
    from moec.ir.target import load_target

    module = truncate(load_bench_model("phi3.5-moe").module, 1)
    ref = TargetRef("fsedp-2x2", ())
    routing = default_routing(module, ref, tokens=256)
    tp = Trial("tp", program=lower(module, ref, "tp", {"slices": "80"}, routing))
    assert tp.program is not None and tp.program.layouts[0].count == 80
    fixed = Trial("tp{slices=fit}", program=tp.program)  # an option other than calibration
    target = load_target("fsedp-2x2", {})
    assert slice_variants([tp, fixed], target, routing) == ["tp{slices=40}", "tp{slices=100}"]
