"""Lowering: the common part (slices, slots, islands, barriers) and the EP strategy."""

from __future__ import annotations

from pathlib import Path

import pytest

from moec.compiler.frontend import load_module
from moec.compiler.lower import STRATEGIES, StrategyError, lower, parse_strategy
from moec.compiler.lower.common import op_cost, value_sizes
from moec.compiler.lower.ep import placement
from moec.ir.errors import ScheduleError
from moec.ir.graph import Builder, Module, TensorType
from moec.ir.stream import Dense, MoE, Signal, TargetRef, Wait, parse_program, print_program
from moec.ir.stream.verify import peak_sram
from moec.ir.target import load_target

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "models" / "tiny_moe.onnx"


@pytest.fixture(scope="module")
def tiny() -> Module:
    return load_module(TINY)[0]


def test_placement_options() -> None:
    assert placement("round_robin", 8, 4) == [0, 1, 2, 3, 0, 1, 2, 3]
    assert placement("blocks", 8, 4) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert placement("3/3/2/2/1/1/0/0", 8, 4) == [3, 3, 2, 2, 1, 1, 0, 0]
    with pytest.raises(StrategyError, match="2 dies listed, the model has 8 experts"):
        placement("0/1", 8, 4)
    with pytest.raises(StrategyError, match="die 9 out of range"):
        placement("9/0/0/0/0/0/0/0", 8, 4)
    with pytest.raises(StrategyError, match="expected round_robin or blocks"):
        placement("hot", 8, 4)


def test_parse_strategy() -> None:
    assert parse_strategy("ep") == ("ep", {})
    assert parse_strategy("ep{placement=blocks, slots=2}") == (
        "ep",
        {"placement": "blocks", "slots": "2"},
    )
    with pytest.raises(StrategyError, match="expected key=value"):
        parse_strategy("ep{blocks}")


def test_ep_program_on_tiny_moe(tiny: Module) -> None:
    p = lower(tiny, TargetRef("fsedp-2x2"), "ep", {"placement": "blocks"})
    t = load_target("fsedp-2x2")
    assert [m.name for m in p.layers] == ["moe0", "moe1"]
    assert all(m.tokens == 8 and m.dtype == "fp32" for m in p.layers)
    pol = p.policy("moe0")
    assert pol is not None and pol.strategy == "ep"
    assert pol.params["placement"] == [0, 0, 1, 1, 2, 2, 3, 3]
    # balanced channels: with even loads each expert stays on its own die's channel (2x2)
    for e, die in enumerate(pol.params["placement"]):
        tensor = p.tensor(f"moe0.e{e}")
        assert tensor is not None and tensor.channel == t.nearest_channel(die).id
        # gate, up, down: 3 x 32 x 64 fp32
        assert tensor.nbytes == 3 * 32 * 64 * 4
    # one moe placeholder per layer on every die, wrapped in package-wide barriers
    for s in p.streams:
        kinds = [type(i) for i in s.instrs]
        assert [i.layer for i in s.instrs if isinstance(i, MoE)] == ["moe0", "moe1"]
        k = kinds.index(MoE)
        assert kinds[k - 2 : k] == [Signal, Wait] and kinds[k + 1 : k + 3] == [Signal, Wait]
        assert all(i.count == 4 for i in s.instrs if isinstance(i, Wait))
    # the text round-trips
    text = print_program(p)
    assert print_program(parse_program(text)) == text


def test_dense_islands_split_evenly(tiny: Module) -> None:
    p = lower(tiny, TargetRef("fsedp-2x2"), "ep")
    for isl in p.islands:
        shares = [
            i for s in p.streams for i in s.instrs if isinstance(i, Dense) and i.island == isl.name
        ]
        assert len(shares) == 4
        assert sum(i.flops for i in shares) == isl.flops
        assert sum(i.nbytes for i in shares) == isl.nbytes
        assert max(i.flops for i in shares) - min(i.flops for i in shares) <= 1
    # island2: residual Add and final LayerNorm (8 x 32 outputs each) + lm_head 2*8*32*128 FLOPs;
    # bytes: the norm's scale and the lm_head weight
    last = p.island("island2")
    assert last is not None
    assert last.flops == 2 * 8 * 32 + 2 * 8 * 32 * 128
    assert last.nbytes == 32 * 4 + 32 * 128 * 4


def test_op_cost_matmul_and_embedding() -> None:
    m = Module("m")
    b = Builder(m)
    ids = b.input("ids", TensorType("i64", ("T",)))
    table = b.weight("embed", TensorType("f32", (100, 16)))
    w = b.weight("w", TensorType("f32", (16, 24)))
    g = b.op("Gather", [table, ids], ["x"], types=[TensorType("f32", ("T", 16))])
    mm = b.op("MatMul", [g.outputs[0], w], ["y"], types=[TensorType("f32", ("T", 24))])
    sizes = value_sizes(m, {"T": 5})
    assert op_cost(g, sizes, "fp32") == (0, 5 * 16 * 4)  # 5 rows of the table read
    assert op_cost(mm, sizes, "fp32") == (2 * 5 * 16 * 24, 16 * 24 * 4)
    assert op_cost(mm, sizes, "fp16") == (2 * 5 * 16 * 24, 16 * 24 * 2)


def test_slices_shrink_with_sram(tiny: Module) -> None:
    # one tiny_moe column is 3 x 32 fp32 = 384 bytes; 64 columns = 24576 bytes per expert
    big = lower(tiny, TargetRef("fsedp-2x2"), "ep")
    assert big.layout("moe0").count == 1
    small = lower(tiny, TargetRef("fsedp-2x2", (("sram_bytes_per_die", 20000),)), "ep")
    lay = small.layout("moe0")
    # the most activations any routing puts on a die (docs/isa.md, "SRAM"): all 8 tokens' x and
    # y, 32 x fp32 each: 8 x 256 = 2048, plus y blocks landing: min(8 tokens x 2 expert dies, 2
    # per link x 2 links in x 2 home tokens) = 8 rows of 128 bytes: 1024; a column in flight
    # adds h = 8 tokens x 2 x fp32 = 64 bytes. The cost model's count is one slice (the whole
    # expert: 4 x 24576 + 64 x 64 bytes), more than 20000 leaves beside any reserve, so SRAM
    # forces a finer cut, and the slots keep the room the uniform-routing reserve leaves (1184:
    # 2.625 other dies' tokens expected, not all 6): (20000 - 1184) // (4 x 384 + 64) = 11
    # columns per slice, 6 slices (the any-routing reserve would force 7, and switching to it
    # where it first leaves room made more SRAM give finer, slower cuts)
    assert lay is not None and lay.count == 6
    pool = small.slot_pool(0)
    assert pool is not None and pool.count == 4
    assert pool.count * pool.nbytes + 1184 + 11 * 64 <= 20000
    assert small.policy("moe0").params["slice_bytes"] == [
        lay.width(j) * 384 for j in range(lay.count)
    ]
    assert max(peak_sram(small).values()) <= 20000
    # a cut the any-routing reserve leaves room for is sized beside it: 7 slices of 10 columns,
    # (20000 - 3072) // (4 x 384 + 64) = 10
    seven = lower(tiny, TargetRef("fsedp-2x2", (("sram_bytes_per_die", 20000),)), "ep",
                  {"slices": "7"})  # fmt: skip
    assert seven.layout("moe0").count == 7
    with pytest.raises(ScheduleError, match="option slices=5 makes slices of moe0 too large"):
        lower(tiny, TargetRef("fsedp-2x2", (("sram_bytes_per_die", 20000),)), "ep",
              {"slices": "5"})  # fmt: skip


def test_does_not_fit_sram(tiny: Module) -> None:
    # 4 slots of one 384-byte column (1536) + the any-routing activations 3072 + h of one column
    # 64 (see above) need 4672 bytes: with 4000 the lowering falls back to the uniform-routing
    # reserve (1184 + 64: 2.625 other dies' tokens expected, not all 6) and the run-time limit
    # decides; 4000 - 1248 leaves 4 slots of one column
    p = lower(tiny, TargetRef("fsedp-2x2", (("sram_bytes_per_die", 4000),)), "ep")
    assert p.layout("moe0").count == 64
    # nor that reserve with one column per slot: the located error, with its figures
    with pytest.raises(
        ScheduleError,
        match=r"does not fit SRAM: die 0 needs 2784 bytes \(activations 1248 \+ slots 1536: 4 of "
        r"one FFN column of moe0\), has 2500",
    ):
        lower(tiny, TargetRef("fsedp-2x2", (("sram_bytes_per_die", 2500),)), "ep")
    # fewer slots: 2 of 3 columns beside the uniform-routing reserve, (4000 - 1184) // (2 x 384
    # + 64) (the any-routing reserve, 3072, would leave room for one-column slots only)
    p = lower(tiny, TargetRef("fsedp-2x2", (("sram_bytes_per_die", 4000),)), "ep", {"slots": "2"})
    assert p.layout("moe0").count == 22


def test_strategy_errors(tiny: Module) -> None:
    with pytest.raises(StrategyError, match="unknown strategy 'nope'"):
        lower(tiny, TargetRef("fsedp-2x2"), "nope")
    with pytest.raises(StrategyError, match="unknown option 'colour'"):
        lower(tiny, TargetRef("fsedp-2x2"), "ep", {"colour": "red"})
    with pytest.raises(StrategyError, match="option slots: expected an integer >= 1"):
        lower(tiny, TargetRef("fsedp-2x2"), "ep", {"slots": "0"})
    assert "ep" in STRATEGIES


def test_shape_only_preset_tokens_and_precision() -> None:
    from moec.compiler.frontend import lift_model
    from moec.models.catalog import catalog

    module, _ = lift_model(catalog()["qwen3-30b-a3b"].build(0), where="qwen3")
    p = lower(module, TargetRef("fsedp-2x2"), "ep", tokens=256)
    assert len(p.layers) == 48
    m = p.layers[0]
    assert (m.experts, m.top_k, m.hidden, m.ffn, m.tokens, m.dtype) == (
        128, 8, 2048, 768, 256, "fp16",
    )  # fmt: skip
    # an expert is 3 x 2048 x 768 x 2 bytes = 9 MiB; 4 slots in 16 MiB need >= 3 slices, and
    # the cost model (compiler/lower/slicing.py) prefers the finest cut with slices as wide as
    # the 64-column array, 12, at 256 tokens: slices of 768 KiB
    assert p.layout("moe0").count == 12
    assert p.slot_pool(0).nbytes == 3 * 2048 * 64 * 2
    # the cut does not depend on SRAM once it fits: 64 MiB changes nothing
    big = lower(module, TargetRef("fsedp-2x2", (("sram_mib_per_die", 64),)), "ep", tokens=256)
    assert big.layout("moe0") == p.layout("moe0")
    # slices=fit keeps the SRAM rule alone: 3 slices (whole experts do not fit, so the slots keep
    # the room the uniform-routing reserve leaves), 1 (whole experts) with 64 MiB
    fit = lower(module, TargetRef("fsedp-2x2"), "ep", {"slices": "fit"}, tokens=256)
    assert fit.layout("moe0").count == 3
    big = lower(
        module, TargetRef("fsedp-2x2", (("sram_mib_per_die", 64),)), "ep", {"slices": "fit"},
        tokens=256,
    )  # fmt: skip
    assert big.layout("moe0").count == 1
