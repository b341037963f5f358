"""Fair baselines: EP spreads its DRAM bytes over the channels and loads shared experts once.

Two effects used to inflate FSE-DP's speedups without being streaming: EP stored every expert on
the channel nearest its die (on ``fsedp-3x3`` one corner channel serves 4 of the 9 dies), and
EP ran shared experts data parallel (every die loading all of them, D copies per iteration).
These tests pin the fair behaviour and show that the old one is still measurably different.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from strategy_cases import run

from moec.compiler.lower import lower
from moec.ir.graph import Builder, Module, TensorType
from moec.ir.moe import MoELayer, declared
from moec.ir.routing import LayerRouting, RoutingTrace
from moec.ir.routing_synth import synth_zipf
from moec.ir.stream import Load, Program, SliceRef, TargetRef

HIDDEN, FFN, SHARED_FFN = 64, 256, 512


def moe_module(experts: int, top_k: int, tokens: int, shared_ffn: int = 0) -> Module:
    """One shape-only MoE layer (fp16 at lowering), with ``shared_ffn`` shared columns."""
    m = Module("fair")
    b = Builder(m)
    x = b.input("x", TensorType("f16", (tokens, HIDDEN)))
    weights = {
        "router_w": declared("router_w", "f16", (experts, HIDDEN)),
        "w_gate": declared("w_gate", "f16", (experts, HIDDEN, FFN)),
        "w_up": declared("w_up", "f16", (experts, HIDDEN, FFN)),
        "w_down": declared("w_down", "f16", (experts, FFN, HIDDEN)),
    }
    if shared_ffn:
        weights |= {
            "sh_gate": declared("sh_gate", "f16", (HIDDEN, shared_ffn)),
            "sh_up": declared("sh_up", "f16", (HIDDEN, shared_ffn)),
            "sh_down": declared("sh_down", "f16", (shared_ffn, HIDDEN)),
        }
    layer = MoELayer(
        "moe0", experts, top_k, HIDDEN, FFN, weights,
        num_shared=2 if shared_ffn else 0, shared_ffn=shared_ffn,
    )  # fmt: skip
    op = b.op("moe", [x], ["y"], {"layer": layer}, types=[TensorType("f16", (tokens, HIDDEN))])
    m.outputs.append(op.outputs[0])
    return m


def every_expert(experts: int, top_k: int, tokens: int, num_dies: int) -> RoutingTrace:
    """Token t routed to experts t*k .. t*k+k-1 (mod E): every expert activated equally often."""
    ids = (np.arange(tokens * top_k).reshape(tokens, top_k) % experts).astype(np.int64)
    gates = np.full(ids.shape, 1.0 / top_k, dtype=np.float32)
    home = (np.arange(tokens) * num_dies // tokens).astype(np.int64)
    return RoutingTrace("fair", num_dies, [LayerRouting("moe0", experts, top_k, ids, gates, home)])


def load_bytes(expanded: Program, shared: bool | None = None) -> Counter[int]:
    """Bytes loaded from DRAM per channel by the MoE layer's micro-slices (``shared``: only the
    shared experts' slices, or only the routed experts', or both when None)."""
    out: Counter[int] = Counter()
    for st in expanded.streams:
        for i in st.instrs:
            if isinstance(i, Load) and isinstance(i.content, SliceRef):
                if shared is None or (i.content.expert is None) == shared:
                    out[i.channel] += i.nbytes
    return out


#: The most bytes any channel of ``fsedp-3x3`` may carry, relative to an even split over its
#: four equal channels: experts are lumpy (whole experts go to one channel each), so exact
#: balance is not always possible (here it is exact; the nearest rule gives 2.0).
BALANCE = 1.10


@pytest.mark.parametrize("strategy", ["ep", "hydra"])
def test_dram_bytes_spread_over_all_channels_on_3x3(strategy: str) -> None:
    module = moe_module(16, 2, 64)
    trace = every_expert(16, 2, 64, 9)
    _, r = run(module, "fsedp-3x3", strategy, trace)
    per = load_bytes(r.expanded)
    assert sorted(per) == [0, 1, 2, 3]  # every one of the four corner channels is used
    mean = sum(per.values()) / 4
    assert max(per.values()) <= BALANCE * mean, per


def test_nearest_channel_rule_piles_up_on_3x3() -> None:
    """The old rule (``channels=nearest``) is still available and fails the balance above:
    channel 0 is the nearest to dies 0, 1, 3 and 4 (ties to the lower id)."""
    module = moe_module(16, 2, 64)
    trace = every_expert(16, 2, 64, 9)
    p, r = run(module, "fsedp-3x3", "ep", trace, {"channels": "nearest"})
    per = load_bytes(r.expanded)
    mean = sum(per.values()) / 4
    assert per[0] > 1.5 * mean
    _, fair = run(module, "fsedp-3x3", "ep", trace)
    assert r.report.latency_s > 1.3 * fair.report.latency_s


def test_ep_balanced_channels_keep_2x2_local() -> None:
    """Where every die has its own channel and loads are even, balancing keeps each expert on
    its die's own channel (nothing crosses a link that the nearest rule would not)."""
    p = lower(moe_module(8, 2, 16), TargetRef("fsedp-2x2"), "ep", {})
    pol = p.policy("moe0")
    assert pol is not None
    assert pol.params["channels"] == pol.params["placement"] == [e % 4 for e in range(8)]


def _shared_bytes() -> int:
    return 3 * HIDDEN * SHARED_FFN * 2  # gate, up, down at fp16


@pytest.mark.parametrize("target", ["fsedp-2x2", "fsedp-3x3", "fsedp-4x4"])
@pytest.mark.parametrize("strategy", ["ep", "hydra", "eplb", "tp", "fsedp"])
def test_shared_experts_loaded_once_per_iteration(strategy: str, target: str) -> None:
    dies = {"fsedp-2x2": 4, "fsedp-3x3": 9, "fsedp-4x4": 16}[target]
    module = moe_module(16, 2, 64, shared_ffn=SHARED_FFN)
    trace = synth_zipf(1, 16, 2, 64, zipf=1.0, seed=0, num_dies=dies, layer_names=["moe0"])
    _, r = run(module, target, strategy, trace)
    assert sum(load_bytes(r.expanded, shared=True).values()) == _shared_bytes()


def test_ep_shared_experts_split_over_every_die() -> None:
    module = moe_module(16, 2, 64, shared_ffn=SHARED_FFN)
    p = lower(module, TargetRef("fsedp-3x3"), "ep", {})
    pol = p.policy("moe0")
    assert pol is not None
    owner = pol.params["shared_owner"]
    assert sorted(set(owner)) == list(range(9))  # re-cut into a multiple of the 9 dies
    assert len(owner) % 9 == 0
    declared_bytes = sum(t.nbytes for t in p.tensors if t.name.startswith("moe0.shared."))
    assert declared_bytes == _shared_bytes()


def test_replicated_shared_experts_load_once_per_die() -> None:
    """``shared=replicated`` is the data-parallel form: D copies per iteration."""
    module = moe_module(16, 2, 64, shared_ffn=SHARED_FFN)
    trace = synth_zipf(1, 16, 2, 64, zipf=1.0, seed=0, num_dies=4, layer_names=["moe0"])
    _, r = run(module, "fsedp-2x2", "ep", trace, {"shared": "replicated"})
    assert sum(load_bytes(r.expanded, shared=True).values()) == 4 * _shared_bytes()


def test_ep_option_errors() -> None:
    from moec.compiler.lower import StrategyError

    module = moe_module(8, 2, 16)
    with pytest.raises(StrategyError, match="option channels: expected balanced or nearest"):
        lower(module, TargetRef("fsedp-2x2"), "ep", {"channels": "far"})
    with pytest.raises(StrategyError, match="option shared: expected split or replicated"):
        lower(module, TargetRef("fsedp-2x2"), "ep", {"shared": "all"})


@pytest.mark.parametrize("target", ["fsedp-3x3", "fsedp-4x4"])
@pytest.mark.parametrize("options", [{}, {"shared": "replicated", "channels": "nearest"}])
def test_ep_numerics_with_shared_experts(
    target: str, options: dict[str, str], tmp_path: Path
) -> None:
    from numerics_check import check_strategy

    spelling = "ep" + (
        "{" + ",".join(f"{k}={v}" for k, v in options.items()) + "}" if options else ""
    )
    assert check_strategy("tiny_deepseek", spelling, target, tmp_path) < 1e-4
