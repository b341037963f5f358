"""SRAM holds activations as well as weight slots (moec.ir.activations, docs/isa.md "SRAM").

Hand-built static programs on fsedp-2x2 (hidden 64, FFN 128 in one fp16 slice of
S = 3 x 64 x 128 x 2 bytes, 16 tokens; dies 0 and 1 are home to tokens 0..7 and 8..15): a
token's x row is 64 x fp16 = 128 bytes, its y (fp32 accumulator) row 256 bytes, and a slice's
gate/up outputs h for n tokens are n x 128 x 2 x 4 bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sram_cases import under_reserve, uniform_estimate
from strategy_cases import moe_module

from moec.backends.interp import simulate
from moec.backends.interp.report import render
from moec.backends.interp.timing import run_timing
from moec.compiler.cli.main import main
from moec.compiler.frontend import load_module
from moec.compiler.lower import lower
from moec.compiler.lower.common import predicted_activations
from moec.ir.errors import ScheduleError
from moec.ir.routing import LayerRouting, RoutingTrace, save_trace
from moec.ir.routing_synth import synth_zipf
from moec.ir.stream import (
    Accum,
    Act,
    Block,
    DieStream,
    Free,
    Gemm,
    Instr,
    Load,
    MoEDecl,
    Program,
    Recv,
    Send,
    SliceLayout,
    SliceRef,
    SlotPool,
    TargetRef,
    TokenSet,
    parse_program,
    print_program,
    verify_program,
)
from moec.ir.target import load_target

T2 = load_target("fsedp-2x2")
HIDDEN, FFN, TOKENS = 64, 128, 16
S = 3 * HIDDEN * FFN * 2
XB, YB = HIDDEN * 2, HIDDEN * 4
TINY = str(Path(__file__).resolve().parents[1] / "models" / "tiny_moe.onnx")


def h(n: int) -> int:
    return n * FFN * 2 * 4


def _program(streams: dict[int, list[Instr]]) -> Program:
    return Program(
        "t", TargetRef("fsedp-2x2"), layers=[MoEDecl("moe0", 4, 1, HIDDEN, FFN, TOKENS, "x", "y")],
        layouts=[SliceLayout.even("moe0", FFN, 1)],
        slots=[SlotPool(d, 2, S) for d in range(4)],
        streams=[DieStream(d, streams.get(d, [])) for d in range(4)],
    )  # fmt: skip


def _slice(slot: int, ch: int, expert: int, ts: TokenSet) -> list[Instr]:
    load = Load(slot, ch, SliceRef("moe0", expert, 0), S)
    return [load, Gemm(slot, ts), Act(slot, ts), Accum(slot, ts)]


def test_ep_peak_counts_home_received_partial_and_h() -> None:
    # die 0 sends tokens 0..3 to die 1's expert, computes 4..7 itself, gets y of 0..3 back
    sent = TokenSet.span(0, 4)
    x_block, y_block = Block("moe0", "x", sent), Block("moe0", "y", sent)
    p = _program({
        0: [Send(peer=1, nbytes=4 * XB, block=x_block), *_slice(0, 0, 0, TokenSet.span(4, 8)),
            Free(0), Recv(peer=1, nbytes=4 * XB, block=y_block)],
        1: [Recv(peer=0, nbytes=4 * XB, block=x_block),
            *_slice(0, 1, 1, TokenSet.normalize([(0, 3), (8, 15)])), Free(0),
            Send(peer=0, nbytes=4 * XB, block=y_block)],
    })  # fmt: skip
    verify_program(p, T2)
    tl = run_timing(p, T2)
    # die 0: its slot, 8 home tokens' x and y, h of its 4-token slice (y lands after its free)
    # die 1: its slot, 8 home tokens, partial y of 0..3 (their x is released after the gemm,
    # before the accum that allocates it) and h of 12 tokens
    assert tl.peak_sram_activations[:2] == [8 * (XB + YB) + h(4), 8 * (XB + YB) + 4 * YB + h(12)]
    assert tl.peak_sram == [S + 8 * (XB + YB) + h(4), S + 8 * (XB + YB) + 4 * YB + h(12), 0, 0]
    assert tl.peak_slot_bytes == [S, S, 0, 0]
    # the x of 0..3 on die 1 is live from its recv to the gemm: at the gemm it held
    # S + home + 4 x XB + h(12), less than at the accum
    assert S + 8 * (XB + YB) + 4 * XB + h(12) < tl.peak_sram[1]


def test_fsedp_peak_is_slot_home_and_h() -> None:
    # one slice starts on die 0 and travels to die 1; each die computes its own 8 tokens
    home0, home1 = TokenSet.span(0, 8), TokenSet.span(8, 16)
    p = _program({
        0: [*_slice(0, 0, 0, home0), Send(peer=1, nbytes=S, slot=0), Free(0)],
        1: [Recv(peer=0, nbytes=S, slot=0, content=SliceRef("moe0", 0, 0)), Gemm(0, home1),
            Act(0, home1), Accum(0, home1), Free(0)],
    })  # fmt: skip
    verify_program(p, T2)
    tl = run_timing(p, T2)
    want = S + 8 * (XB + YB) + h(8)
    assert tl.peak_sram == [want, want, 0, 0]
    assert tl.peak_sram_activations[:2] == [want - S, want - S]
    assert "sram_over_bytes" not in tl.extra


def test_prediction_matches_the_formula() -> None:
    # routed: every token of the batch can be on one die (x + y each), and y blocks land:
    # min(64 tokens x min(top_k, D - 1) sources, 2 per link x 2 links in x 16 home rows) = 64
    est = predicted_activations(
        "routed", tokens=64, home=16, dies=4, top_k=2, hidden=32, dtype="fp16", shared=False,
        links_in=2,
    )  # fmt: skip
    assert est.fixed == 64 * (64 + 128) + 64 * 64
    assert est.h_tokens == 64
    # without a link bound, every token's partial outputs from its top_k expert dies
    loose = predicted_activations(
        "routed", tokens=64, home=16, dies=4, top_k=2, hidden=32, dtype="fp16", shared=False
    )
    assert loose.fixed == 64 * (64 + 128) + 64 * 2 * 64
    home = predicted_activations(
        "home", tokens=64, home=16, dies=4, top_k=2, hidden=32, dtype="int8", shared=True
    )
    assert home.fixed == 16 * (64 + 128) and home.h_tokens == 16  # int8 weights: fp16 tokens
    tp = predicted_activations(
        "all", tokens=64, home=16, dies=4, top_k=2, hidden=32, dtype="fp32", shared=False,
        links_in=4,
    )  # fmt: skip
    assert tp.fixed == 64 * (128 + 128) + min(64 * 3, 2 * 4 * 16) * 128


def test_activations_alone_do_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # tiny_moe (hidden 32, fp32 weights, 8 tokens): FSE-DP keeps each die's 2 home tokens, x and
    # y 32 x 4 bytes each: 512 bytes, before any slot (h of one column: 2 x 2 x 4 = 16)
    module = load_module(TINY)[0]
    msg = (
        r"does not fit SRAM: die 0 needs 2064 bytes \(activations 528 \+ slots 1536: 4 of one FFN "
        r"column of moe0\), has 511"
    )
    with pytest.raises(ScheduleError, match=msg):
        lower(module, TargetRef("fsedp-2x2", (("sram_bytes_per_die", 511),)), "fsedp")
    out = tmp_path / "prog.msp"
    code = main(["compile", TINY, "-o", str(out), "--strategy", "fsedp",
                 "--set", "sram_bytes_per_die=511"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "activations 528 + slots 1536" in err[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _concentrated() -> RoutingTrace:
    """8 tokens, 2 home per die, all routed to experts 1 and 5 (round robin: both on die 1)."""
    ids = np.tile(np.array([[1, 5]]), (8, 1))
    lr = LayerRouting(
        "moe0", 8, 2, ids, np.full((8, 2), 0.5, np.float32), np.repeat(np.arange(4), 2)
    )
    return RoutingTrace("m", 4, [lr])


def test_concentrated_routing_fits_by_construction() -> None:
    # die 1 gets all 6 other tokens, not the 2.625 uniform routing expects; where the any-routing
    # reserve leaves room for the cut the lowering takes anyway (here the cost model's count, one
    # slice of the 16 columns), the slots are sized for it and the run fits
    module = moe_module(8, 2, 8, hidden=32, ffn=16)
    trace = _concentrated()
    old = uniform_estimate(
        "routed", tokens=8, home=2, dies=4, top_k=2, hidden=32, dtype="fp16", shared=False
    )
    col, slots = 3 * 32 * 2, 2
    worst = predicted_activations(
        "routed", tokens=8, home=2, dies=4, top_k=2, hidden=32, dtype="fp16", shared=False,
        links_in=2,
    )  # fmt: skip
    # all 8 tokens' x and y, and min(8 x 2, 2 x 2 x 2) = 8 landing y rows of 64 bytes
    assert worst.fixed == 8 * (64 + 128) + 8 * 64
    whole = slots * col * 16 + h_col(8) * 16  # two slots of a whole expert and its h
    for sram in (worst.fixed + whole, worst.fixed + whole + 1000):
        p = lower(module, TargetRef("fsedp-2x2", (("sram_bytes_per_die", sram),)), "ep",
                  {"slots": str(slots)}, trace)  # fmt: skip
        assert p.layout("moe0") is not None and p.layout("moe0").count == 1
        r = simulate(p, routings=trace)  # no overflow: the hard limit holds
        assert max(r.report.peak_sram_bytes) <= sram
        assert "sram_over_bytes" not in r.report.extra
    # an explicit count likewise: 2 slices need the worst case plus two slots of 8 columns
    half = worst.fixed + slots * col * 8 + h_col(8) * 8
    p = lower(module, TargetRef("fsedp-2x2", (("sram_bytes_per_die", half),)), "ep",
              {"slots": str(slots), "slices": "2"}, trace)  # fmt: skip
    assert max(simulate(p, routings=trace).report.peak_sram_bytes) <= half
    # below that the slots keep the room that cut needs and the reserve shrinks towards the
    # uniform expectation (more SRAM never gives the slots less room: docs/isa.md "SRAM"); the
    # program compiles, and the hard limit refuses the concentrated run that holds more
    band = old.fixed + whole + 64
    assert band < worst.fixed + whole
    p = lower(module, TargetRef("fsedp-2x2", (("sram_bytes_per_die", band),)), "ep",
              {"slots": str(slots)}, trace)  # fmt: skip
    assert p.layout("moe0") is not None and p.layout("moe0").count == 1
    with pytest.raises(ScheduleError, match=r"does not fit SRAM: die 1 holds \d+ bytes"):
        simulate(p, routings=trace)
    # where the expectation leaves no room for it, the slices are the fewest that fit beside it
    one = worst.fixed + h_col(8) + slots * col
    tight = TargetRef("fsedp-2x2", (("sram_bytes_per_die", one - 1),))
    p = lower(module, tight, "ep", {"slots": str(slots)}, trace)
    width = (one - 1 - old.fixed) // (slots * col + h_col(8))
    assert p.layout("moe0") is not None and p.layout("moe0").count == -(-16 // width) > 1
    # nor the expected reserve with one column per slot: the located error, its figures
    least = old.fixed + h_col(8) + slots * col
    with pytest.raises(
        ScheduleError,
        match=rf"does not fit SRAM: die 0 needs {least} bytes \(activations "
        rf"{old.fixed + h_col(8)} \+ slots {slots * col}: {slots} of one FFN column of moe0\), "
        rf"has {least - 1}",
    ):
        lower(module, TargetRef("fsedp-2x2", (("sram_bytes_per_die", least - 1),)), "ep",
              {"slots": str(slots)}, trace)  # fmt: skip
    lower(module, TargetRef("fsedp-2x2", (("sram_bytes_per_die", least),)), "ep",
          {"slots": str(slots)}, trace)  # fmt: skip


def test_concentrated_routing_over_sram_fails_unless_allowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # slots sized by the uniform-routing estimate (2.625 tokens from other dies on a die): die 1
    # gets all 6, and the run-time check refuses it
    under_reserve(monkeypatch)
    module = moe_module(8, 2, 8, hidden=32, ffn=16)
    trace = _concentrated()
    xb, yb = 32 * 2, 32 * 4  # fp16 tokens, fp32 accumulators
    pred = uniform_estimate(
        "routed", tokens=8, home=2, dies=4, top_k=2, hidden=32, dtype="fp16", shared=False
    )
    col, slots = 3 * 32 * 2, 2
    sram = pred.fixed + h_col(8) * 16 + slots * col * 16 + 64  # the whole expert fits one slot
    p = lower(module, TargetRef("fsedp-2x2", (("sram_bytes_per_die", sram),)), "ep",
              {"slots": str(slots)}, trace)  # fmt: skip
    assert p.layout("moe0") is not None and p.layout("moe0").count == 1
    with pytest.raises(
        ScheduleError, match=r"does not fit SRAM: die 1 holds \d+ bytes at its peak"
    ):
        simulate(p, routings=trace)  # SRAM is a hard limit
    r = simulate(p, routings=trace, allow_overflow=True)
    # die 1 at its first expert's accum: both slots (the second expert's load is under way),
    # its 2 home tokens, the other 6 tokens' x (e5's gemm still needs it) and partial y (the
    # accum starts it), and h of 8 tokens x 16 columns
    held = slots * col * 16 + 2 * (xb + yb) + 6 * (xb + yb) + h_col(8) * 16
    assert r.report.peak_sram_bytes[1] == held
    assert r.report.extra["sram_over_bytes"] == held - sram > 0
    assert r.report.to_dict()["sram_over_bytes"] == held - sram
    assert "warning: SRAM overflow allowed (--allow-overflow)" in render(r.report)
    with pytest.raises(ScheduleError, match=f"holds {held} bytes at its peak"):
        simulate(p, routings=trace)
    # the CLI: exit 2 with one line, or with --allow-overflow a report that says so
    prog, tr = tmp_path / "p.msp", tmp_path / "t.json"
    prog.write_text(print_program(p))
    save_trace(trace, str(tr))
    assert main(["run", str(prog), "--routing", str(tr)]) == 2
    assert main(["run", str(prog), "--routing", str(tr), "--allow-overflow", "--json"]) == 0


def h_col(n: int) -> int:
    """h of one FFN column for n tokens (gate and up, fp32)."""
    return n * 2 * 4


def test_printed_expansion_gives_the_same_peaks() -> None:
    # home tokens are read off the static program, so the printed expansion needs no routing
    module = moe_module(8, 2, 16, hidden=32, ffn=16)
    trace = synth_zipf(num_layers=1, num_experts=8, top_k=2, tokens=16, zipf=1.2, seed=3).rehome(4)
    for strategy in ("ep", "tp", "fsedp-paired", "eplb"):
        p = lower(module, TargetRef("fsedp-2x2"), strategy, {"slices": "2"}, trace)
        first = simulate(p, routings=trace)
        again = simulate(parse_program(print_program(first.expanded)))
        assert again.report.peak_sram_bytes == first.report.peak_sram_bytes, strategy
        assert again.report.peak_sram_activation_bytes == first.report.peak_sram_activation_bytes
        assert max(first.report.peak_sram_activation_bytes) > 0


def test_token_buffering_reserves_the_carried_tokens() -> None:
    # fsedp with slack=0.2 at 16 tokens: each die is home to 4 and keeps up to
    # min(4, floor(0.2 x 16)) = 3 deferred tokens into the next iteration, whose gemms compute
    # them too: 7 tokens' x and y (7 x 192) and h of one column for 7 tokens (7 x 2 x 4)
    module = moe_module(8, 2, 16, hidden=32, ffn=16)
    col = 3 * 32 * 2  # one fp16 FFN column of gate, up, down
    need = 7 * (64 + 128) + h_col(7) + 4 * col

    def at(sram: int, strategy: str) -> Program:
        return lower(module, TargetRef("fsedp-2x2", (("sram_bytes_per_die", sram),)), strategy)

    at(need - 1, "fsedp-paired")  # without buffering 4 home tokens fit
    with pytest.raises(
        ScheduleError,
        match=rf"does not fit SRAM: die 0 needs {need} bytes \(activations {need - 4 * col} \+ "
        rf"slots {4 * col}: 4 of one FFN column of moe0\), has {need - 1}",
    ):
        at(need - 1, "fsedp-buf")
    p = at(need, "fsedp-buf")
    pool = p.slot_pool(0)
    assert pool is not None and pool.count * pool.nbytes + need - 4 * col <= need
